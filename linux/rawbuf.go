package linux

import (
	"encoding/binary"
	"fmt"
)

// Checked reads from raw byte buffers. Offsets into buffers read from the
// guest come from its type layouts (hostile, see Type.Check) and from
// guest memory itself; slicing with them directly would turn a bad layout
// into a panic. These helpers turn it into ok=false, which callers report
// as an error for the object they were reading.

// bytesAt returns b[off:off+n], or false if that is not inside b.
func bytesAt(b []byte, off, n uint64) ([]byte, bool) {
	if off > uint64(len(b)) || n > uint64(len(b))-off {
		return nil, false
	}
	return b[off : off+n : off+n], true
}

// u16At reads a little-endian uint16 at off.
func u16At(b []byte, off uint64) (uint16, bool) {
	s, ok := bytesAt(b, off, 2)
	if !ok {
		return 0, false
	}
	return binary.LittleEndian.Uint16(s), true
}

// u32At reads a little-endian uint32 at off.
func u32At(b []byte, off uint64) (uint32, bool) {
	s, ok := bytesAt(b, off, 4)
	if !ok {
		return 0, false
	}
	return binary.LittleEndian.Uint32(s), true
}

// u64At reads a little-endian uint64 at off.
func u64At(b []byte, off uint64) (uint64, bool) {
	s, ok := bytesAt(b, off, 8)
	if !ok {
		return 0, false
	}
	return binary.LittleEndian.Uint64(s), true
}

// readTable reads n bytes of guest virtual memory at addr for a table
// whose length the guest chose (a ring, a descriptor array). The length
// is bounded by limit, and the table's last byte is read before the
// buffer is allocated, so a hostile length pointing at unmapped memory
// costs one page walk rather than a buffer of up to limit bytes.
func (k *Kernel) readTable(what string, addr, n, limit uint64) ([]byte, error) {
	if n > limit {
		return nil, fmt.Errorf("%s at %#x: %d bytes is over the limit of %d", what, addr, n, limit)
	}
	if n == 0 {
		return nil, nil
	}
	if addr+n < addr {
		return nil, fmt.Errorf("%s at %#x: %d bytes wrap around the address space", what, addr, n)
	}
	var last [1]byte
	if _, err := k.AS.ReadAt(last[:], int64(addr+n-1)); err != nil {
		return nil, fmt.Errorf("%s at %#x (%d bytes): %w", what, addr, n, err)
	}
	b := make([]byte, n)
	if _, err := k.AS.ReadAt(b, int64(addr)); err != nil {
		return nil, fmt.Errorf("%s at %#x (%d bytes): %w", what, addr, n, err)
	}
	return b, nil
}
