package guestmem

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"math/rand"
	"testing"
)

// fakeRAM is 2 MiB of patterned memory: byte i is i*7+3.
func fakeRAM(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + 3)
	}
	return b
}

func TestSegmentMapSplitsReads(t *testing.T) {
	ram := fakeRAM(3 << 20)
	// low 1 MiB at 0, the rest at 4 GiB (like q35's split around the PCI hole)
	m, err := NewSegmentMap("test", []Segment{
		{Range: Range{0, 1 << 20}, Data: ram, Offset: 0},
		{Range: Range{4 << 30, 4<<30 + 2<<20}, Backing: bytes.NewReader(ram), Offset: 1 << 20},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	if _, err := m.ReadAt(buf, 1<<20-32); !errors.Is(err, ErrNotMapped) {
		t.Fatalf("read across the hole: %v, want ErrNotMapped", err)
	}
	if _, err := m.ReadAt(buf, 4<<30+100); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, ram[1<<20+100:1<<20+164]) {
		t.Fatal("wrong bytes from the high segment")
	}
	if got := m.Ranges(); len(got) != 2 || got[1].Start != 4<<30 {
		t.Fatalf("ranges %v", got)
	}
	if s, ok := m.Slice(10, 10); !ok || s[0] != ram[10] {
		t.Fatal("Slice of a mapped segment")
	}
	if _, ok := m.Slice(4<<30, 10); ok {
		t.Fatal("Slice of a reader-backed segment must fail")
	}
}

func TestSegmentMapRejectsOverlap(t *testing.T) {
	_, err := NewSegmentMap("x", []Segment{{Range: Range{0, 100}, Data: make([]byte, 100)}, {Range: Range{50, 150}, Data: make([]byte, 100)}}, nil)
	if err == nil {
		t.Fatal("overlapping segments accepted")
	}
}

// buildELFCore writes a minimal core like QEMU's dump-guest-memory: a note
// segment with a QEMU CPU state, then PT_LOAD segments with physical addresses.
func buildELFCore(segs []Range, data [][]byte, cr3 uint64) []byte {
	var note bytes.Buffer
	desc := make([]byte, qemuNoteMinSize+8)
	binary.LittleEndian.PutUint64(desc[qemuNoteCROffset+24:], cr3)
	binary.Write(&note, binary.LittleEndian, []uint32{5, uint32(len(desc)), 0})
	note.WriteString("QEMU\x00\x00\x00\x00")
	note.Write(desc)
	phnum := 1 + len(segs)
	hdrSize := 64 + 56*phnum
	off := uint64(hdrSize)
	var out bytes.Buffer
	h := elf.Header64{Type: uint16(elf.ET_CORE), Machine: uint16(elf.EM_X86_64), Version: 1, Phoff: 64, Ehsize: 64, Phentsize: 56, Phnum: uint16(phnum)}
	copy(h.Ident[:], elf.ELFMAG)
	h.Ident[elf.EI_CLASS], h.Ident[elf.EI_DATA], h.Ident[elf.EI_VERSION] = byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), 1
	binary.Write(&out, binary.LittleEndian, h)
	ph := []elf.Prog64{{Type: uint32(elf.PT_NOTE), Off: off, Filesz: uint64(note.Len())}}
	off += uint64(note.Len())
	for i, s := range segs {
		ph = append(ph, elf.Prog64{Type: uint32(elf.PT_LOAD), Off: off, Paddr: s.Start, Filesz: s.Size(), Memsz: s.Size()})
		off += uint64(len(data[i]))
	}
	binary.Write(&out, binary.LittleEndian, ph)
	out.Write(note.Bytes())
	for _, d := range data {
		out.Write(d)
	}
	return out.Bytes()
}

func TestELFCore(t *testing.T) {
	lo, hi := fakeRAM(1<<20), fakeRAM(1<<20)
	hi[0] = 0xAA
	core := buildELFCore([]Range{{0, 1 << 20}, {4 << 30, 4<<30 + 1<<20}}, [][]byte{lo, hi}, 0x1234000)
	d, err := ParseDump("core", core, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d.Format != FormatELF || len(d.CPUs()) != 1 || d.CPUs()[0].CR3 != 0x1234000 {
		t.Fatalf("format %v cpus %+v", d.Format, d.CPUs())
	}
	b := make([]byte, 4)
	if _, err := d.ReadAt(b, 4<<30); err != nil || b[0] != 0xAA {
		t.Fatalf("read high memory: %v %x", err, b)
	}
	// truncated: the last segment runs past the end
	if _, err := ParseDump("core", core[:len(core)-100], nil); err == nil {
		t.Fatal("truncated core accepted")
	}
}

func TestLiME(t *testing.T) {
	ram := fakeRAM(1 << 20)
	var f bytes.Buffer
	f.Write(WriteLiMEHeader(0x1000, 0x1000+1<<19))
	f.Write(ram[:1<<19])
	f.Write(WriteLiMEHeader(1<<32, 1<<32+1<<19))
	f.Write(ram[1<<19:])
	d, err := ParseDump("lime", f.Bytes(), nil)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 8)
	if _, err := d.ReadAt(b, 1<<32+8); err != nil || !bytes.Equal(b, ram[1<<19+8:1<<19+16]) {
		t.Fatalf("%v %x", err, b)
	}
	if _, err := ParseDump("lime", f.Bytes()[:f.Len()-1], nil); err == nil {
		t.Fatal("truncated LiME accepted")
	}
}

func TestRawAndGarbage(t *testing.T) {
	if _, err := ParseDump("tiny", make([]byte, 100), nil); err == nil {
		t.Fatal("100-byte dump accepted")
	}
	rnd := make([]byte, 2<<20)
	rand.New(rand.NewSource(1)).Read(rnd)
	d, err := ParseDump("random", rnd, nil)
	if err != nil || d.Format != FormatRaw {
		t.Fatalf("random bytes should open as raw memory (and fail later, in the kernel search): %v", err)
	}
	if _, err := ParseDump("kdump", append([]byte("KDUMP   "), make([]byte, 2<<20)...), nil); err == nil {
		t.Fatal("kdump-compressed accepted")
	}
}

func TestQEMULayout(t *testing.T) {
	for _, c := range []struct {
		machine string
		size    uint64
		parts   int
		low     uint64
	}{
		{"q35", 512 << 20, 1, 512 << 20},
		{"pc-q35-7.2", 4 << 30, 2, 2 << 30},
		{"q35", 0xb0000000, 2, 2 << 30},
		{"pc", 3 << 30, 1, 3 << 30},
		{"pc-i440fx-7.2", 4 << 30, 2, 3 << 30},
	} {
		l, err := QEMULayout(c.machine, c.size)
		if err != nil || len(l) != c.parts || l[0].Size != c.low {
			t.Errorf("%s %d: %+v %v", c.machine, c.size, l, err)
		}
	}
	if _, err := QEMULayout("virt", 1<<30); err == nil {
		t.Error("unknown machine accepted")
	}
}

const mtreeSample = `FlatView #0
 AS "I/O", root: io
 Root memory region: io
  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan

FlatView #3
 AS "memory", root: system
 AS "cpu-memory-0", root: system
 Root memory region: system
  0000000000000000-00000000000bffff (prio 0, ram): pc.ram
  00000000000c0000-00000000000dffff (prio 1, rom): pc.ram @00000000000c0000
  0000000000100000-000000007fffffff (prio 0, ram): pc.ram @0000000000100000
  00000000b0000000-00000000bfffffff (prio 0, i/o): pcie-mmcfg-mmio
  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios
  0000000100000000-000000017fffffff (prio 0, ram): pc.ram @0000000080000000

FlatView #4
 AS "ich9-ahci", root: bus master container
`

func TestParseMtree(t *testing.T) {
	fr, err := ParseMtree(mtreeSample)
	if err != nil {
		t.Fatal(err)
	}
	if len(fr) != 6 {
		t.Fatalf("%d ranges: %+v", len(fr), fr)
	}
	last := fr[5]
	if last.Start != 0x100000000 || last.End != 0x180000000 || last.Name != "pc.ram" || last.Offset != 0x80000000 || last.Kind != "ram" {
		t.Fatalf("%+v", last)
	}
	b, err := mainRAMBlock(fr, []RAMBlock{{Name: "pc.bios", Used: 0x40000}, {Name: "pc.ram", Used: 4 << 30}})
	if err != nil || b.Name != "pc.ram" {
		t.Fatalf("%v %v", b, err)
	}
}

func TestParseRAMBlocks(t *testing.T) {
	const s = `              Block Name    PSize              Offset               Used              Total
                  pc.ram    4 KiB  0x0000000000000000 0x0000000020000000 0x0000000020000000
                 pc.bios    4 KiB  0x0000000020000000 0x0000000000040000 0x0000000000040000
`
	bs, err := ParseRAMBlocks(s)
	if err != nil || len(bs) != 2 || bs[0].Used != 0x20000000 {
		t.Fatalf("%+v %v", bs, err)
	}
}

func TestFindRAMMapping(t *testing.T) {
	maps := []Mapping{
		{Start: 0x1000, End: 0x1000 + 512<<20, Perms: "rw-p"},
		{Start: 0x7f0000000000, End: 0x7f0000000000 + 512<<20, Perms: "rw-s", Inode: 5, Path: "/memfd:pc.ram (deleted)"},
	}
	m, err := findRAMMapping(maps, "pc.ram", 512<<20)
	if err != nil || m.Path == "" {
		t.Fatalf("want the memfd mapping, got %+v %v", m, err)
	}
	if _, err := findRAMMapping(maps, "pc.ram", 1<<30); err == nil {
		t.Fatal("no mapping of that size, but no error")
	}
}
