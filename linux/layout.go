package linux

import (
	"fmt"
)

// Limits on type layouts. The guest's BTF (or an ISF file) is hostile
// input: it can claim a struct of any size with members anywhere. Real
// kernels stay far below these (task_struct is about 10 KiB; the largest
// structs in a distribution kernel's BTF are a few hundred KiB).
const (
	maxTypeSize  = 16 << 20 // bytes of one struct, union or array
	maxArrayLen  = 1 << 24  // elements of one array, whatever their size
	maxNestDepth = 64       // members by value inside members by value
)

// LayoutError says which member of which type has an impossible layout.
type LayoutError struct {
	Type   string // the type at fault (which may be nested in the one asked for)
	Member string // empty when the type itself is at fault
	Reason string
}

func (e *LayoutError) Error() string {
	if e.Member == "" {
		return fmt.Sprintf("type %s: %s", e.Type, e.Reason)
	}
	return fmt.Sprintf("type %s: member %s %s", e.Type, e.Member, e.Reason)
}

// Check validates the layout of t and of every type it holds by value
// (members, array elements; not pointer targets, which are checked when
// they are read): every member lies inside its struct, bitfields are
// integers of at most 64 bits inside the struct, sizes and array lengths
// are bounded and nothing contains itself. The result is computed once.
// A type that fails Check is unusable: Field finds nothing in it,
// FieldOffset and ReadValue return this error.
func (t *Type) Check() error {
	if t == nil {
		return nil
	}
	t.checkOnce.Do(func() {
		t.checkErr = validate(t, map[*Type]bool{}, 0)
	})
	return t.checkErr
}

// layoutName names a type for errors without resolving pointer targets
// (Type.String would, taking the lock of the Types that is converting t).
func layoutName(t *Type) string {
	switch {
	case t.Name != "":
		return t.Name
	case t.Kind == KindArray && t.elem != nil && t.elem != t:
		e := t.elem.Name // one level only: a hostile array may hold itself
		if e == "" {
			e = t.elem.Kind.String()
		}
		return fmt.Sprintf("%s[%d]", e, t.Len)
	case t.Kind == KindStruct || t.Kind == KindUnion:
		return "anonymous " + t.Kind.String()
	}
	return t.Kind.String()
}

// validate checks t; state maps types being checked (true: on the current
// path, so meeting one again is a cycle) or checked already (false).
func validate(t *Type, state map[*Type]bool, depth int) error {
	if onPath, seen := state[t]; seen {
		if onPath {
			return &LayoutError{Type: layoutName(t), Reason: "contains itself by value"}
		}
		return nil
	}
	if depth > maxNestDepth {
		return &LayoutError{Type: layoutName(t), Reason: fmt.Sprintf("nested more than %d deep", maxNestDepth)}
	}
	state[t] = true
	defer func() { state[t] = false }()
	if t.Size > maxTypeSize {
		return &LayoutError{Type: layoutName(t), Reason: fmt.Sprintf("size of %d bytes is over the limit of %d", t.Size, maxTypeSize)}
	}
	switch t.Kind {
	case KindPointer:
		if t.Size != 8 {
			return &LayoutError{Type: layoutName(t), Reason: fmt.Sprintf("pointer of %d bytes", t.Size)}
		}
	case KindArray:
		e := t.elem // arrays hold their element directly; never lazily
		if e == nil {
			return nil
		}
		if t.Len > maxArrayLen {
			return &LayoutError{Type: layoutName(t), Reason: fmt.Sprintf("%d elements is over the limit of %d", t.Len, maxArrayLen)}
		}
		// Len*Size was computed when the type was built; it must not have
		// wrapped around (Len and Size are both bounded, so this product
		// fits in 64 bits)
		if e.Size > maxTypeSize || t.Len*e.Size != t.Size {
			return &LayoutError{Type: layoutName(t), Reason: fmt.Sprintf("%d elements of %d bytes do not make %d bytes", t.Len, e.Size, t.Size)}
		}
		if err := validate(e, state, depth+1); err != nil {
			return err
		}
	case KindStruct, KindUnion:
		bits := t.Size * 8
		for _, m := range t.Members {
			name := m.Name
			if name == "" {
				name = "(anonymous)"
			}
			bad := func(format string, args ...any) error {
				return &LayoutError{Type: layoutName(t), Member: name, Reason: fmt.Sprintf(format, args...)}
			}
			if m.Type == nil {
				return bad("has no type")
			}
			if m.BitSize != 0 {
				// Value.Uint reads bitfields of integers and enums only
				if m.Type.Kind != KindInt && m.Type.Kind != KindEnum {
					return bad("is a bitfield of %s, not an integer", layoutName(m.Type))
				}
				if m.BitSize > 64 || uint64(m.BitSize) > m.Type.Size*8 {
					return bad("is a bitfield of %d bits in a %d-byte %s", m.BitSize, m.Type.Size, layoutName(m.Type))
				}
				if m.Offset > bits || m.Offset+uint64(m.BitSize) > bits {
					return bad("at bit %d (%d bits) outside the struct's %d bytes", m.Offset, m.BitSize, t.Size)
				}
			} else {
				// bound the member's size first so the sum below cannot wrap
				if m.Type.Size > maxTypeSize {
					return bad("of %d bytes is over the limit of %d", m.Type.Size, maxTypeSize)
				}
				if m.Offset > bits || m.Offset/8+m.Type.Size > t.Size {
					return bad("at byte %d (size %d) outside the struct's %d bytes", m.Offset/8, m.Type.Size, t.Size)
				}
			}
			if err := validate(m.Type, state, depth+1); err != nil {
				// name the path from the type asked for to the fault
				return fmt.Errorf("type %s: member %s: %w", layoutName(t), name, err)
			}
		}
	}
	return nil
}
