package detect

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmwatch/vmwatch/guestmem"
	"github.com/vmwatch/vmwatch/linux"
)

func TestDiffRegion(t *testing.T) {
	base := make([]byte, 4096)
	for i := range base {
		base[i] = byte(i * 13)
	}
	const start = 0xffffffff81000000
	const delta = 0x2400000 // a different KASLR offset
	cur := bytes.Clone(base)
	// relocated addresses: a 64-bit absolute and a 32-bit sign-extended one
	binary.LittleEndian.PutUint64(cur[100:], binary.LittleEndian.Uint64(base[100:])+delta)
	binary.LittleEndian.PutUint32(cur[200:], binary.LittleEndian.Uint32(base[200:])+delta)
	// an inverse one: a %rip-relative offset to a per-CPU variable
	binary.LittleEndian.PutUint32(cur[240:], binary.LittleEndian.Uint32(base[240:])-delta)
	// a change the kernel made at one of its patch sites
	copy(cur[300:], []byte{0xe9, 1, 2, 3, 4})
	sites := func(a, n uint64) bool { return a >= start+300 && a+n <= start+305 }
	if ch := diffRegion(base, cur, start, delta, sites); len(ch) != 0 {
		t.Fatalf("legitimate differences reported: %+v", ch)
	}
	// an attacker's patch
	copy(cur[1000:], []byte{0xcc, 0xcc})
	ch := diffRegion(base, cur, start, delta, sites)
	if len(ch) != 1 || ch[0].addr != start+1000 || !bytes.Equal(ch[0].seen, []byte{0xcc, 0xcc}) {
		t.Fatalf("%+v", ch)
	}
	// without the relocation delta, the moved addresses are changes too
	if ch := diffRegion(base, cur, start, 0, sites); len(ch) != 4 {
		t.Fatalf("no delta: %d changes", len(ch))
	}
}

func TestBaselineSaveLoad(t *testing.T) {
	b := &Baseline{Release: "6.1.0-56-amd64", Banner: "Linux version x", TextStart: 0xffffffff81000000,
		Regions: []BaselineRegion{{Name: "text", Start: 0x1000, Data: []byte("code"), Size: 4}, {Name: "rodata", Start: 0x9000, Data: []byte("data!"), Size: 5}}}
	p := filepath.Join(t.TempDir(), "b")
	if err := b.Save(p); err != nil {
		t.Fatal(err)
	}
	got, err := LoadBaseline(p)
	if err != nil {
		t.Fatal(err)
	}
	if got.Release != b.Release || string(got.Regions[1].Data) != "data!" || got.Regions[0].Start != 0x1000 {
		t.Fatalf("%+v", got)
	}
}

// FuzzDiffRegion: the comparison never reads out of bounds, whatever the
// two images and the KASLR difference.
func FuzzDiffRegion(f *testing.F) {
	f.Add([]byte("abcdefghijklmnop"), []byte("abcdefghXjklmnop"), int64(0x200000))
	f.Fuzz(func(t *testing.T, base, cur []byte, delta int64) {
		for _, c := range diffRegion(base, cur, 0xffffffff81000000, delta, nil) {
			if len(c.expected) != len(c.seen) || len(c.seen) == 0 {
				t.Fatalf("change %+v", c)
			}
		}
	})
}

func TestCompactBaselineReadsBack(t *testing.T) {
	data := bytes.Repeat([]byte{1, 2, 3, 4}, 4096)
	b := &Baseline{Release: "r", Banner: "b", Regions: []BaselineRegion{{Name: "text", Data: bytes.Clone(data), Size: len(data)}}}
	p := filepath.Join(t.TempDir(), "b")
	if err := b.Save(p); err != nil {
		t.Fatal(err)
	}
	b.Compact(p)
	if b.Regions[0].Data != nil || len(b.Regions[0].Pages) != 4 {
		t.Fatalf("not compacted: %d pages", len(b.Regions[0].Pages))
	}
	full, err := LoadBaseline(b.file)
	if err != nil || !bytes.Equal(full.Regions[0].Data, data) {
		t.Fatal("the recorded bytes are not readable back", err)
	}
}

// A compacted baseline reads its file only when the guest's bytes change:
// a persisting patch, and a kernel at another KASLR offset, are judged
// again from the last comparison (the file is gone by then).
func TestCompactedBaselineMemo(t *testing.T) {
	const recorded = 0xffffffff81000000
	const size = 0x2000
	text := make([]byte, size)
	for i := range text {
		text[i] = byte(i*7 + 1)
	}
	binary.LittleEndian.PutUint64(text[0x40:], recorded+0x100) // an absolute pointer into the image
	// the guest runs the same kernel 2 MiB higher: the pointer moved with it
	const running = recorded + 0x200000
	ram := make([]byte, 0x10000)
	const phys = 0x4000
	copy(ram[phys:], text)
	binary.LittleEndian.PutUint64(ram[phys+0x40:], running+0x100)
	mem, err := guestmem.NewSegmentMap("test", []guestmem.Segment{{Range: guestmem.Range{Start: 0, End: uint64(len(ram))}, Data: ram}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	k := &linux.Kernel{Mem: mem, Release: "r", Banner: "b",
		Loc:  linux.Location{TextStart: running, ImageEnd: running + 0x200000, PhysStart: phys},
		Syms: linux.NewSymbols("test", []linux.Symbol{{Addr: running, Name: "_text", Type: 'T'}, {Addr: running + 0x800, Name: "victim", Type: 'T'}})}
	file := filepath.Join(t.TempDir(), "baseline")
	b := &Baseline{Release: "r", Banner: "b", TextStart: recorded, Regions: []BaselineRegion{{Name: "text", Start: 0, Data: bytes.Clone(text), Size: size}}}
	if err := b.Save(file); err != nil {
		t.Fatal(err)
	}
	b.Compact(file)
	compare := func() []Finding {
		t.Helper()
		fs, err := compareBaseline(&Snapshot{K: k, Time: time.Now()}, b, nil)
		if err != nil {
			t.Fatal(err)
		}
		return fs
	}
	if fs := compare(); len(fs) != 0 {
		t.Fatalf("relocated kernel reported: %+v", fs)
	}
	copy(ram[phys+0x810:], []byte{0xcc, 0xcc}) // an attacker's patch in victim
	fs := compare()
	if len(fs) != 1 || fs[0].Key != "kernel-code-modified:text/victim" {
		t.Fatalf("patch: %+v", fs)
	}
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	again := compare()
	if len(again) != 1 || again[0].Key != fs[0].Key || !again[0].Time.After(fs[0].Time) {
		t.Fatalf("persisting patch, second look: %+v", again)
	}
	copy(ram[phys+0x810:], text[0x810:0x812]) // restored
	if _, err := compareBaseline(&Snapshot{K: k, Time: time.Now()}, b, nil); err == nil {
		t.Fatal("changed bytes compared without the baseline file")
	}
}
