package linux

import (
	"encoding/binary"
	"fmt"
	"testing"
)

// elfWithBuildID builds a minimal 64-bit ELF header, one PT_NOTE program
// header and a GNU build-id note, as a linker lays them out.
func elfWithBuildID(id []byte) []byte {
	le := binary.LittleEndian
	b := make([]byte, 64+56+16+len(id))
	copy(b, "\x7fELF\x02\x01\x01")
	le.PutUint16(b[16:], 3)  // ET_DYN
	le.PutUint64(b[32:], 64) // e_phoff
	le.PutUint16(b[54:], 56) // e_phentsize
	le.PutUint16(b[56:], 1)  // e_phnum
	ph := b[64:]
	le.PutUint32(ph, 4)                       // PT_NOTE
	le.PutUint64(ph[8:], 120)                 // p_offset
	le.PutUint64(ph[32:], uint64(16+len(id))) // p_filesz
	n := b[120:]
	le.PutUint32(n, 4)
	le.PutUint32(n[4:], uint32(len(id)))
	le.PutUint32(n[8:], 3)
	copy(n[12:], "GNU\x00")
	copy(n[16:], id)
	return b
}

func readFrom(b []byte) func(off uint64, n int) ([]byte, error) {
	return func(off uint64, n int) ([]byte, error) {
		if off > uint64(len(b)) || uint64(n) > uint64(len(b))-off {
			return nil, fmt.Errorf("offset %#x+%d outside %d bytes", off, n, len(b))
		}
		return b[off : off+uint64(n)], nil
	}
}

func TestELFIdentity(t *testing.T) {
	typ, id, err := elfIdentity(readFrom(elfWithBuildID([]byte{0xde, 0xad, 0xbe, 0xef, 1})))
	if err != nil || typ != "DYN" || id != "deadbeef01" {
		t.Errorf("got %q %q %v", typ, id, err)
	}
	if _, _, err := elfIdentity(readFrom([]byte("#!/bin/sh\n" + string(make([]byte, 64))))); err != errNotELF {
		t.Errorf("a script: %v", err)
	}
}

// FuzzELFIdentity: any bytes where an ELF header should be never panic.
func FuzzELFIdentity(f *testing.F) {
	f.Add(elfWithBuildID([]byte("0123456789abcdef0123")))
	f.Add([]byte("\x7fELF\x02\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		elfIdentity(readFrom(b))
	})
}
