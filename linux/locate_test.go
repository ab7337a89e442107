package linux

import (
	"encoding/binary"
	"testing"

	"github.com/vmwatch/vmwatch/guestmem"
)

// fakeGuest lays out a kernel the way x86-64 Linux maps it: top-level
// tables whose entry 511 points at a third-level table, whose entry 510
// points at a table of 2 MiB entries mapping the image.
type fakeGuest struct {
	ram []byte
}

func (g *fakeGuest) set(phys uint64, v uint64) { binary.LittleEndian.PutUint64(g.ram[phys:], v) }

const tableFlags = 0x67 // present, rw, user, accessed, dirty

func newFakeGuest(t *testing.T, initTopPgt bool) (*fakeGuest, guestmem.Memory, uint64) {
	g := &fakeGuest{ram: make([]byte, 96<<20)}
	const kernelPhys = 32 << 20
	const textVA = 0xffffffff9a000000
	var pud, pd uint64
	if initTopPgt {
		// inside the image's data: init_top_pgt, then level3 five pages on
		top := uint64(kernelPhys + 8<<20 + 0x10000)
		pud, pd = top+0x5000, top+0x6000
		g.set(top+0xff8, pud|tableFlags)
	} else {
		pud, pd = 70<<20+0x3000, 70<<20+0x4000
	}
	g.set(pud+510*8, pd|tableFlags)
	first := uint64(textVA-startKernelMap) >> 21
	for i := uint64(0); i < 12; i++ {
		g.set(pd+(first+i)*8, (kernelPhys+i<<21)|0xe3) // 2 MiB pages
	}
	// process tables spread over memory, away from 2 MiB boundaries
	for i := uint64(0); i < 40; i++ {
		g.set(60<<20+0x41000+i*0x7000+0xff8, pud|tableFlags)
	}
	// a decoy: repeated data that looks like table entries to nowhere
	for i := uint64(0); i < 40; i++ {
		g.set(50<<20+0x81000+i*0x1000+0xff8, (80<<20)|tableFlags)
	}
	mem, err := guestmem.NewSegmentMap("fake", []guestmem.Segment{{Range: guestmem.Range{Start: 0, End: uint64(len(g.ram))}, Data: g.ram}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return g, mem, textVA
}

func TestLocateByScan(t *testing.T) {
	for _, top := range []bool{true, false} {
		_, mem, text := newFakeGuest(t, top)
		l, err := locateByScan(mem)
		if err != nil {
			t.Fatalf("init_top_pgt %v: %v", top, err)
		}
		if l.TextStart != text || l.PhysStart != 32<<20 || l.Levels != 4 || l.Present != 12 {
			t.Fatalf("init_top_pgt %v: %+v", top, l)
		}
		want := "page table scan"
		if top {
			want = "page table scan (init_top_pgt)"
		}
		if l.Source != want {
			t.Errorf("found by %q, want %q", l.Source, want)
		}
	}
}

func TestLocateFromRegisters(t *testing.T) {
	_, mem, text := newFakeGuest(t, false)
	root := uint64(60<<20 + 0x41000)
	// a user-mode CR3 with PCID bits set still leads to the kernel
	l, err := locateFromRegisters(mem, []guestmem.CPUState{{CR0: 1 << 31, CR3: root | 0x801}})
	if err != nil || l.TextStart != text {
		t.Fatalf("%+v %v", l, err)
	}
	if _, err := locateFromRegisters(mem, []guestmem.CPUState{{CR0: 0x11, CR3: root}}); err == nil {
		t.Fatal("a vCPU with paging off gave a location")
	}
}
