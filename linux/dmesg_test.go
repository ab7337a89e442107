package linux

import (
	"encoding/binary"
	"testing"
)

func TestRingText(t *testing.T) {
	const bits = 12
	ring := make([]byte, 1<<bits)
	// a regular block at 64: id, then text
	binary.LittleEndian.PutUint64(ring[64:], 7)
	copy(ring[72:], "hello")
	if s, ok := ringText(ring, bits, 64, 64+16, 5); !ok || s != "hello" {
		t.Fatalf("%q %v", s, ok)
	}
	// a block that wrapped: stored at the start of the ring
	binary.LittleEndian.PutUint64(ring[0:], 8)
	copy(ring[8:], "wrapped")
	begin := uint64(1<<bits) - 8
	if s, ok := ringText(ring, bits, begin, (1<<bits)+16, 7); !ok || s != "wrapped" {
		t.Fatalf("%q %v", s, ok)
	}
	// data-less records and nonsense positions are skipped
	if _, ok := ringText(ring, bits, 1, 3, 0); ok {
		t.Fatal("data-less record")
	}
	if _, ok := ringText(ring, bits, 100, 90, 5); ok {
		t.Fatal("inverted block")
	}
}

// FuzzRingText: any positions from a hostile printk ring stay inside it.
func FuzzRingText(f *testing.F) {
	f.Add(uint64(64), uint64(80), uint64(5))
	f.Add(uint64(4088), uint64(4112), uint64(7))
	f.Fuzz(func(t *testing.T, begin, next, n uint64) {
		ring := make([]byte, 1<<12)
		s, ok := ringText(ring, 12, begin, next, n)
		if ok && len(s) > len(ring) {
			t.Fatalf("text of %d bytes from a %d-byte ring", len(s), len(ring))
		}
	})
}
