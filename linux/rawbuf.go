package linux

import "encoding/binary"

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
