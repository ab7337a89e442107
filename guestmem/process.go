package guestmem

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ProcessOptions tune OpenQEMUProcess.
type ProcessOptions struct {
	// NoDirect disables the fast path (mapping a file- or memfd-backed RAM
	// block read-only into this process) and reads with process_vm_readv.
	NoDirect bool
}

// OpenQEMUProcess reads the guest RAM of a running QEMU process. flat is QEMU's
// flat view of guest physical memory (ParseMtree) and blocks its RAM blocks
// (ParseRAMBlocks). The host mapping of the main RAM block is found in
// /proc/PID/maps. When that mapping is a shared file or memfd, it is mapped
// read-only into this process (zero-copy); otherwise reads go through
// process_vm_readv (or /proc/PID/mem where that is refused).
func OpenQEMUProcess(pid int, flat []FlatRange, blocks []RAMBlock, opt ProcessOptions) (*SegmentMap, error) {
	main, err := mainRAMBlock(flat, blocks)
	if err != nil {
		return nil, fmt.Errorf("QEMU process %d: %w", pid, err)
	}
	maps, err := ReadMaps(pid)
	if err != nil {
		return nil, err
	}
	mp, err := findRAMMapping(maps, main.Name, main.Used)
	if err != nil {
		return nil, fmt.Errorf("QEMU process %d: %w", pid, err)
	}
	var ranges []FlatRange
	for _, fr := range flat {
		if (fr.Kind == "ram" || fr.Kind == "rom") && blockMatches(main.Name, fr.Name) {
			if fr.Offset+fr.Size() > mp.Size() {
				return nil, fmt.Errorf("QEMU process %d: range %v of %s lies beyond its %d-byte mapping", pid, fr.Range, fr.Name, mp.Size())
			}
			ranges = append(ranges, fr)
		}
	}
	parts := make([]LayoutPart, 0, len(ranges))
	for _, fr := range ranges {
		parts = append(parts, LayoutPart{Phys: fr.Start, FileOffset: fr.Offset, Size: fr.Size()})
	}
	return openProcessParts(pid, mp, parts, opt)
}

// OpenQEMUProcessLayout reads guest RAM from the QEMU process pid when QMP is
// not available: the RAM block is the mapping of ramSize bytes, placed by
// QEMU's rules for the machine type (see QEMULayout).
func OpenQEMUProcessLayout(pid int, machine string, ramSize uint64, opt ProcessOptions) (*SegmentMap, error) {
	layout, err := QEMULayout(machine, ramSize)
	if err != nil {
		return nil, err
	}
	maps, err := ReadMaps(pid)
	if err != nil {
		return nil, err
	}
	mp, err := findRAMMapping(maps, "ram", ramSize)
	if err != nil {
		return nil, fmt.Errorf("QEMU process %d: %w", pid, err)
	}
	return openProcessParts(pid, mp, layout, opt)
}

func openProcessParts(pid int, mp Mapping, parts []LayoutPart, opt ProcessOptions) (*SegmentMap, error) {
	var data []byte
	var file *os.File
	var closer func() error
	desc := fmt.Sprintf("QEMU process %d (process_vm_readv, RAM at %#x)", pid, mp.Start)
	var pr *processReader
	if !opt.NoDirect && mp.IsFileBacked() {
		d, f, err := mapProcessFile(pid, mp)
		if err == nil {
			data, file = d, f
			closer = func() error { f.Close(); return unix.Munmap(d) }
			desc = fmt.Sprintf("QEMU process %d (shared memory %s, mapped read-only)", pid, strings.TrimSuffix(mp.Path, " (deleted)"))
		}
	}
	if data == nil {
		pr = &processReader{pid: pid, base: mp.Start, size: mp.Size()}
		closer = pr.Close
	}
	segs := make([]Segment, 0, len(parts))
	for _, p := range parts {
		if p.FileOffset+p.Size > mp.Size() {
			return nil, fmt.Errorf("QEMU process %d: RAM part at physical %#x lies beyond the %d-byte mapping", pid, p.Phys, mp.Size())
		}
		s := Segment{Range: Range{p.Phys, p.Phys + p.Size}, Offset: p.FileOffset}
		if data != nil {
			s.Data = data
			if mp.Offset == 0 {
				s.File = file // file offsets equal mapping offsets: holes can be found
			}
		} else {
			s.Backing = pr
		}
		segs = append(segs, s)
	}
	return NewSegmentMap(desc, segs, closer)
}

// mainRAMBlock is the RAM block that holds guest physical address 0.
func mainRAMBlock(flat []FlatRange, blocks []RAMBlock) (RAMBlock, error) {
	for _, fr := range flat {
		if fr.Start == 0 && fr.Kind == "ram" {
			for _, b := range blocks {
				if blockMatches(b.Name, fr.Name) {
					return b, nil
				}
			}
			return RAMBlock{}, fmt.Errorf("memory region %q at physical 0 has no RAM block", fr.Name)
		}
	}
	return RAMBlock{}, errors.New("no RAM at guest physical address 0 in QEMU's memory map")
}

// blockMatches compares a RAM block id ("pc.ram", "0000:00:02.0/vga.vram")
// with a memory region name ("pc.ram", "vga.vram").
func blockMatches(block, region string) bool {
	return block == region || strings.HasSuffix(block, "/"+region)
}

// mapProcessFile maps the file behind another process's mapping through
// /proc/PID/map_files, read-only.
func mapProcessFile(pid int, m Mapping) ([]byte, *os.File, error) {
	p := fmt.Sprintf("/proc/%d/map_files/%x-%x", pid, m.Start, m.End)
	f, err := os.Open(p)
	if err != nil {
		return nil, nil, err
	}
	d, err := unix.Mmap(int(f.Fd()), int64(m.Offset), int(m.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return d, f, nil
}

// processReader reads another process's memory at base+off.
type processReader struct {
	pid        int
	base, size uint64
	mem        *os.File // /proc/PID/mem, opened when process_vm_readv is refused
}

func (r *processReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || uint64(off) > r.size || uint64(len(p)) > r.size-uint64(off) {
		return 0, fmt.Errorf("read %d bytes at offset %#x outside the %d-byte RAM mapping", len(p), off, r.size)
	}
	if r.mem != nil {
		return r.mem.ReadAt(p, int64(r.base)+off)
	}
	n := 0
	for n < len(p) {
		local := []unix.Iovec{{Base: &p[n]}}
		local[0].SetLen(len(p) - n)
		remote := []unix.RemoteIovec{{Base: uintptr(r.base + uint64(off) + uint64(n)), Len: len(p) - n}}
		k, err := unix.ProcessVMReadv(r.pid, local, remote, 0)
		if err != nil {
			if err == syscall.EINTR {
				continue
			}
			if n == 0 && (err == syscall.EPERM || err == syscall.ENOSYS) {
				f, ferr := os.Open(fmt.Sprintf("/proc/%d/mem", r.pid))
				if ferr != nil {
					return 0, fmt.Errorf("process_vm_readv of process %d: %v; /proc/%d/mem: %w", r.pid, err, r.pid, ferr)
				}
				r.mem = f
				return r.ReadAt(p, off)
			}
			if err == syscall.ESRCH {
				return n, fmt.Errorf("QEMU process %d is gone: %w", r.pid, err)
			}
			return n, fmt.Errorf("process_vm_readv of process %d: %w", r.pid, err)
		}
		if k == 0 {
			return n, fmt.Errorf("process_vm_readv of process %d at %#x read nothing", r.pid, r.base+uint64(off)+uint64(n))
		}
		n += k
	}
	return n, nil
}

func (r *processReader) Close() error {
	if r.mem != nil {
		return r.mem.Close()
	}
	return nil
}

// LayoutPart places a part of a RAM file at a guest physical address.
type LayoutPart struct {
	Phys, FileOffset, Size uint64
}

// QEMULayout returns how QEMU's x86 machines place a RAM block of ramSize
// bytes in guest physical memory: below the PCI hole up to a limit, and the
// rest from 4 GiB. machine is "q35" (also "pc-q35-*") or "pc" ("pc-i440fx-*").
// These are QEMU's rules (hw/i386/pc_q35.c, pc_piix.c), not the guest's.
func QEMULayout(machine string, ramSize uint64) ([]LayoutPart, error) {
	const gib = 1 << 30
	var lowmem uint64
	switch {
	case machine == "" || machine == "q35" || strings.HasPrefix(machine, "pc-q35"):
		lowmem = 0xb0000000
		if ramSize >= 0xb0000000 {
			lowmem = 0x80000000
		}
	case machine == "pc" || strings.HasPrefix(machine, "pc-i440fx") || strings.HasPrefix(machine, "pc-"):
		lowmem = 0xe0000000
		if ramSize >= 0xe0000000 {
			lowmem = 0xc0000000
		}
	default:
		return nil, fmt.Errorf("unknown machine type %q (want q35 or pc)", machine)
	}
	if ramSize <= lowmem {
		return []LayoutPart{{0, 0, ramSize}}, nil
	}
	return []LayoutPart{{0, 0, lowmem}, {4 * gib, lowmem, ramSize - lowmem}}, nil
}

// OpenMemFile maps a file that holds guest RAM (a QEMU memory-backend-file
// or a copy of one) read-only, placed in guest physical memory by layout.
func OpenMemFile(path string, layout []LayoutPart) (*SegmentMap, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open memory file: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	size := uint64(st.Size())
	if size == 0 {
		f.Close()
		return nil, fmt.Errorf("memory file %s is empty", path)
	}
	var need uint64
	for _, p := range layout {
		if p.FileOffset+p.Size > need {
			need = p.FileOffset + p.Size
		}
	}
	if need > size {
		f.Close()
		return nil, fmt.Errorf("memory file %s has %d bytes; the layout needs %d (wrong --machine?)", path, size, need)
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("map memory file %s: %w", path, err)
	}
	segs := make([]Segment, 0, len(layout))
	sort.Slice(layout, func(i, j int) bool { return layout[i].Phys < layout[j].Phys })
	for _, p := range layout {
		segs = append(segs, Segment{Range: Range{p.Phys, p.Phys + p.Size}, Data: data, Offset: p.FileOffset, File: f})
	}
	return NewSegmentMap("memory file "+path+" (mapped read-only)", segs, func() error { f.Close(); return unix.Munmap(data) })
}
