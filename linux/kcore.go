package linux

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// The kernel's memory as an ELF core, laid out as a kdump vmcore is: a
// VMCOREINFO note (the kernel's own description of itself for crash and
// makedumpfile: release, page size, symbol addresses, structure offsets,
// KERNELOFFSET), a PT_LOAD for the kernel image at its virtual addresses,
// and one PT_LOAD per range of guest RAM at the direct map's addresses,
// each with its physical address. Pages of zeros are left as holes.

// KernelCoreInfo says what a kernel core holds.
type KernelCoreInfo struct {
	Release    string `json:"release"`
	Segments   int    `json:"segments"`
	Size       uint64 `json:"size"`  // bytes of the file, holes included
	Pages      uint64 `json:"pages"` // 4 KiB pages of RAM and image
	Zero       uint64 `json:"zero_pages"`
	VMCoreInfo int    `json:"vmcoreinfo_bytes"` // 0: the kernel keeps none
}

// maxVMCoreInfo bounds the note (the kernel's is one page).
const maxVMCoreInfo = 1 << 16

// pageOffsetBase is the direct map's base: page_offset_base, or its
// default without RANDOMIZE_MEMORY (4 and 5 levels).
func (k *Kernel) pageOffsetBase() uint64 {
	pob := uint64(0xffff888000000000)
	if k.Loc.Levels == 5 {
		pob = 0xff11000000000000
	}
	if a, ok := k.Syms.Lookup("page_offset_base"); ok {
		if v, e := k.Uint64(a); e == nil && v != 0 {
			pob = v
		}
	}
	return pob
}

// vmcoreinfo reads the text the kernel keeps at vmcoreinfo_data.
func (k *Kernel) vmcoreinfo() ([]byte, error) {
	dp, err := k.Symbol("vmcoreinfo_data")
	if err != nil {
		return nil, err
	}
	sp, err := k.Symbol("vmcoreinfo_size")
	if err != nil {
		return nil, err
	}
	data, err := k.Uint64(dp)
	if err != nil {
		return nil, err
	}
	size, err := k.Uint64(sp)
	if err != nil {
		return nil, err
	}
	if data == 0 || size == 0 || size > maxVMCoreInfo {
		return nil, fmt.Errorf("vmcoreinfo_data %#x of %d bytes", data, size)
	}
	b := make([]byte, size)
	if _, err := k.AS.ReadAt(b, int64(data)); err != nil {
		return nil, fmt.Errorf("vmcoreinfo_data %#x: %w", data, err)
	}
	return b, nil
}

// WriteKernelCore writes the kernel core to w.
func (k *Kernel) WriteKernelCore(w CoreFile) (KernelCoreInfo, error) {
	info := KernelCoreInfo{Release: k.Release}
	var notes bytes.Buffer
	if vi, err := k.vmcoreinfo(); err == nil {
		writeNamedNote(&notes, "VMCOREINFO", 0, vi)
		info.VMCoreInfo = len(vi)
	}
	type seg struct{ va, pa, size uint64 }
	var segs []seg
	text, ok1 := k.Syms.Lookup("_text")
	end, ok2 := k.Syms.Lookup("_end")
	if ok1 && ok2 && end > text && end-text < 1<<30 {
		segs = append(segs, seg{text, k.Loc.PhysStart, (end - text + 4095) &^ 4095})
	}
	pob := k.pageOffsetBase()
	for _, r := range k.Mem.Ranges() {
		if r.End > r.Start {
			segs = append(segs, seg{pob + r.Start, r.Start, r.End - r.Start})
		}
	}
	hdr, noteOff := elfCoreHeader(1+len(segs), notes.Len())
	off := (noteOff + uint64(notes.Len()) + 4095) &^ 4095
	offs := make([]uint64, len(segs))
	for i, s := range segs {
		putLoad(hdr, i+1, 7, off, s.va, s.pa, s.size, s.size) // rwx, as vmcores have it
		offs[i] = off
		off += s.size
	}
	info.Segments, info.Size = len(segs), off
	if _, err := w.WriteAt(hdr, 0); err != nil {
		return info, err
	}
	if _, err := w.WriteAt(notes.Bytes(), int64(noteOff)); err != nil {
		return info, err
	}
	buf := make([]byte, 1<<20)
	zero := make([]byte, 4096)
	for i, s := range segs {
		for o := uint64(0); o < s.size; o += uint64(len(buf)) {
			n := min(uint64(len(buf)), s.size-o)
			b := buf[:n]
			if _, err := k.Mem.ReadAt(b, int64(s.pa+o)); err != nil {
				return info, fmt.Errorf("guest physical memory at %#x: %w", s.pa+o, err)
			}
			for p := uint64(0); p < n; p += 4096 {
				info.Pages++
				pg := b[p:min(p+4096, n)]
				if bytes.Equal(pg, zero[:len(pg)]) {
					info.Zero++
					continue
				}
				if _, err := w.WriteAt(pg, int64(offs[i]+o+p)); err != nil {
					return info, err
				}
			}
		}
	}
	if err := w.Truncate(int64(off)); err != nil {
		return info, err
	}
	return info, nil
}

// writeNamedNote appends an ELF note with its name padded to 4 bytes.
func writeNamedNote(b *bytes.Buffer, name string, typ uint32, desc []byte) {
	var h [12]byte
	binary.LittleEndian.PutUint32(h[0:], uint32(len(name)+1))
	binary.LittleEndian.PutUint32(h[4:], uint32(len(desc)))
	binary.LittleEndian.PutUint32(h[8:], typ)
	b.Write(h[:])
	b.WriteString(name)
	b.WriteByte(0)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	b.Write(desc)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
}
