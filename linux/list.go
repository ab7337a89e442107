package linux

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
)

// Addr is a kernel virtual address; it prints and marshals as hex.
type Addr uint64

func (a Addr) String() string { return "0x" + strconv.FormatUint(uint64(a), 16) }

// MarshalJSON writes the address as a hex string (JSON numbers lose
// precision above 2^53).
func (a Addr) MarshalJSON() ([]byte, error) { return []byte(`"` + a.String() + `"`), nil }

// UnmarshalJSON reads a hex string or a number.
func (a *Addr) UnmarshalJSON(b []byte) error {
	s := string(b)
	if len(s) >= 2 && s[0] == '"' {
		s = s[1 : len(s)-1]
	}
	v, err := strconv.ParseUint(s, 0, 64)
	*a = Addr(v)
	return err
}

// ErrListCorrupt is wrapped by errors of list walks that found a broken or
// inconsistent list (a guest changing it while we read, or tampering).
var ErrListCorrupt = errors.New("list is inconsistent")

// listOffsets are the offsets of next and prev in struct list_head.
func (k *Kernel) listOffsets() (next, prev uint64, err error) {
	lh, err := k.Types.Struct("list_head")
	if err != nil {
		return 0, 0, err
	}
	if next, err = lh.FieldOffset("next"); err != nil {
		return 0, 0, err
	}
	prev, err = lh.FieldOffset("prev")
	return next, prev, err
}

// WalkList follows a circular list_head list from head (the address of the
// list's head) and calls fn with the address of each node after it. The
// walk stops at the head, after limit nodes (an error), at a node seen
// before (a cycle that skips the head: an error), or at a node whose prev
// does not point back (an error that names the node).
func (k *Kernel) WalkList(head uint64, limit int, fn func(node uint64) error) error {
	nextOff, prevOff, err := k.listOffsets()
	if err != nil {
		return err
	}
	var buf [8]byte
	read := func(a uint64) (uint64, error) {
		if _, err := k.AS.ReadAt(buf[:], int64(a)); err != nil {
			return 0, err
		}
		return binary.LittleEndian.Uint64(buf[:]), nil
	}
	seen := make(map[uint64]struct{}, 64)
	prev := head
	cur, err := read(head + nextOff)
	if err != nil {
		return fmt.Errorf("list at %#x: %w", head, err)
	}
	for n := 0; cur != head; n++ {
		if n >= limit {
			return fmt.Errorf("list at %#x: more than %d nodes: %w", head, limit, ErrListCorrupt)
		}
		if cur == 0 {
			return fmt.Errorf("list at %#x: NULL next after node %#x: %w", head, prev, ErrListCorrupt)
		}
		if _, dup := seen[cur]; dup {
			return fmt.Errorf("list at %#x: node %#x seen twice (cycle): %w", head, cur, ErrListCorrupt)
		}
		seen[cur] = struct{}{}
		back, err := read(cur + prevOff)
		if err != nil {
			return fmt.Errorf("list at %#x: node %#x: %w", head, cur, err)
		}
		if back != prev {
			return fmt.Errorf("list at %#x: node %#x has prev %#x, want %#x: %w", head, cur, back, prev, ErrListCorrupt)
		}
		if err := fn(cur); err != nil {
			return err
		}
		next, err := read(cur + nextOff)
		if err != nil {
			return fmt.Errorf("list at %#x: node %#x: %w", head, cur, err)
		}
		prev, cur = cur, next
	}
	return nil
}

// ReadField reads one member of a struct at addr without reading the rest.
func (k *Kernel) ReadField(structName string, addr uint64, path string) (Value, error) {
	t, err := k.Types.Struct(structName)
	if err != nil {
		return Value{}, err
	}
	m, ok := t.Field(path)
	if !ok {
		return Value{}, fmt.Errorf("%v has no member %s", t, path)
	}
	if m.BitSize != 0 {
		v, err := k.ReadValue(t, addr)
		if err != nil {
			return Value{}, err
		}
		return v.Field(path)
	}
	return k.ReadValue(m.Type, addr+m.Offset/8)
}
