package x86

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

// physMem is a flat fake physical memory.
type physMem []byte

func (m physMem) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(m)) {
		return 0, errors.New("outside fake memory")
	}
	return copy(p, m[off:]), nil
}

func (m physMem) set(table uint64, idx int, v uint64) {
	binary.LittleEndian.PutUint64(m[table+uint64(idx)*8:], v)
}

// builder lays out page tables in a fake memory, one 4 KiB table per call.
type builder struct {
	mem  physMem
	next uint64
}

func (b *builder) table() uint64 { t := b.next; b.next += PageSize4K; return t }

func idx(va uint64, level int) int { return int(va>>(12+9*uint(level-1))) & 511 }

// mapPage maps va to pa with a page of the given size in a 4- or 5-level tree.
func (b *builder) mapPage(root uint64, levels int, va, pa, size uint64, flags uint64) {
	t := root
	stop := 1
	switch size {
	case PageSize2M:
		stop = 2
	case PageSize1G:
		stop = 3
	}
	for level := levels; level > stop; level-- {
		e := binary.LittleEndian.Uint64(b.mem[t+uint64(idx(va, level))*8:])
		if e&ptePresent == 0 {
			nt := b.table()
			e = nt | ptePresent | pteRW | pteUser
			b.mem.set(t, idx(va, level), e)
		}
		t = e & pteAddrMask
	}
	ps := uint64(0)
	if stop > 1 {
		ps = ptePS
	}
	b.mem.set(t, idx(va, stop), pa|ptePresent|ps|flags)
}

func TestTranslate(t *testing.T) {
	for _, levels := range []int{4, 5} {
		mem := make(physMem, 64<<20)
		b := &builder{mem: mem, next: 32 << 20}
		root := b.table()
		kernel := uint64(0xffffffff81000000)
		b.mapPage(root, levels, kernel, 0x200000, PageSize2M, pteRW)
		b.mapPage(root, levels, 0x400000, 0x3000, PageSize4K, pteUser|pteNX)
		b.mapPage(root, levels, 0xffff888000000000, 0, PageSize1G, pteRW)
		copy(mem[0x200000+0x1234:], "kernel text")
		copy(mem[0x3000+0x10:], "user data")
		as, err := NewAddressSpace(mem, root, levels)
		if err != nil {
			t.Fatal(err)
		}
		m, err := as.Translate(kernel + 0x1234)
		if err != nil || m.Phys != 0x201234 || m.PageSize != PageSize2M {
			t.Fatalf("%d levels, 2M page: %+v %v", levels, m, err)
		}
		m, err = as.Translate(0x400010)
		if err != nil || m.Phys != 0x3010 || !m.User || !m.NX {
			t.Fatalf("%d levels, 4K page: %+v %v", levels, m, err)
		}
		m, err = as.Translate(0xffff888000000000 + 0x3010)
		if err != nil || m.Phys != 0x3010 || m.PageSize != PageSize1G {
			t.Fatalf("%d levels, 1G page: %+v %v", levels, m, err)
		}
		got, err := as.Read(kernel+0x1234, 11)
		if err != nil || string(got) != "kernel text" {
			t.Fatalf("read: %q %v", got, err)
		}
		// not present: an error, never zeros
		if _, err := as.Translate(0x800000); !errors.Is(err, ErrNotPresent) {
			t.Fatalf("unmapped address: %v", err)
		}
		// a read that runs off a mapped page stops with an error
		n, err := as.ReadAt(make([]byte, 8192), 0x400000+4096-8)
		if err == nil || n != 8 {
			t.Fatalf("read across into an unmapped page: n=%d err=%v", n, err)
		}
		if _, err := as.Translate(0x0000900000000000); levels == 4 && !errors.Is(err, ErrNonCanonical) {
			t.Fatalf("non-canonical address: %v", err)
		}
	}
}

func TestKernelRoot(t *testing.T) {
	if r := KernelRoot(0x8000000012345801, false); r != 0x12345000 {
		t.Fatalf("%#x", r)
	}
	if r := KernelRoot(0x12345801|0x1000, true); r != 0x12344000 {
		t.Fatalf("%#x", r)
	}
}

// FuzzTranslate: arbitrary page-table contents never panic or loop, and a
// successful translation lies inside the page it names.
func FuzzTranslate(f *testing.F) {
	mem := make(physMem, 1<<20)
	b := &builder{mem: mem, next: 0x10000}
	root := b.table()
	b.mapPage(root, 4, 0xffffffff81000000, 0x200000, PageSize2M, 0)
	f.Add(bytes.Clone(mem[0x10000:0x20000]), uint64(0xffffffff81000123), uint8(4))
	f.Add(make([]byte, 4096), uint64(0), uint8(5))
	f.Fuzz(func(t *testing.T, tables []byte, va uint64, lv uint8) {
		mem := make(physMem, 1<<20)
		copy(mem[0x10000:], tables)
		levels := 4
		if lv%2 == 1 {
			levels = 5
		}
		as, err := NewAddressSpace(mem, 0x10000, levels)
		if err != nil {
			t.Fatal(err)
		}
		m, err := as.Translate(va)
		if err != nil {
			return
		}
		if m.PageSize != PageSize4K && m.PageSize != PageSize2M && m.PageSize != PageSize1G {
			t.Fatalf("page size %d", m.PageSize)
		}
		if m.Phys&(m.PageSize-1) != va&(m.PageSize-1) {
			t.Fatalf("offset in page lost: va %#x phys %#x", va, m.Phys)
		}
		as.ReadAt(make([]byte, 100), int64(va))
	})
}

func TestMapped(t *testing.T) {
	mem := make(physMem, 64<<20)
	b := &builder{mem: mem, next: 32 << 20}
	root := b.table()
	b.mapPage(root, 4, 0xffffffffc0001000, 0x5000, PageSize4K, 0)
	b.mapPage(root, 4, 0xffffffffc0200000, 0x200000, PageSize2M, 0)
	b.mapPage(root, 4, 0x400000, 0x6000, PageSize4K, 0)
	as, _ := NewAddressSpace(mem, root, 4)
	var got []uint64
	if err := as.Mapped(0xffffffffc0000000, 0xffffffffff000000, func(va uint64, m Mapping) bool {
		got = append(got, va, m.Phys)
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 || got[0] != 0xffffffffc0001000 || got[1] != 0x5000 || got[2] != 0xffffffffc0200000 {
		t.Fatalf("%#x", got)
	}
}
