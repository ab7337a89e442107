package linux

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"

	"github.com/vmwatch/vmwatch/guestmem"
	"github.com/vmwatch/vmwatch/x86"
)

// x86-64 places the kernel image in the 1 GiB from __START_KERNEL_map
// (top-level entry 511, third-level entry 510); the module area follows it.
// KASLR moves the image inside that window in 2 MiB steps, and moves it
// physically too. These are properties of the architecture's memory layout
// (Documentation/arch/x86/x86_64/mm.rst), stable since Linux 2.6.
const (
	startKernelMap    = 0xffffffff80000000
	defaultKernelText = 0xffffffff81000000 // __START_KERNEL with the default CONFIG_PHYSICAL_START
	defaultPhysStart  = 0x1000000
)

// Location is where the kernel is, in virtual and physical memory.
type Location struct {
	Root      uint64 `json:"page_table_root"` // physical address of the kernel's top-level page table
	Levels    int    `json:"paging_levels"`
	TextStart uint64 `json:"text_start"` // virtual address of _text
	ImageEnd  uint64 `json:"image_end"`  // end of the image's mapping (2 MiB granularity)
	PhysStart uint64 `json:"phys_start"` // physical address of _text
	Source    string `json:"found_by"`   // "CPU registers" or "page table scan"
	Present   int    `json:"-"`          // 2 MiB slots of the image that are mapped
}

// VirtShift is the KASLR virtual displacement relative to the default link address.
func (l *Location) VirtShift() int64 { return int64(l.TextStart - defaultKernelText) }

// PhysShift is the physical displacement relative to the default load address.
func (l *Location) PhysShift() int64 { return int64(l.PhysStart) - defaultPhysStart }

// PhysBase is the kernel's phys_base: __pa(x) = x - __START_KERNEL_map + phys_base
// for addresses in the kernel image.
func (l *Location) PhysBase() uint64 { return l.PhysStart - (l.TextStart - startKernelMap) }

// ImagePhys converts a virtual address inside the kernel image to physical.
func (l *Location) ImagePhys(va uint64) (uint64, bool) {
	if va < l.TextStart || va >= l.ImageEnd {
		return 0, false
	}
	return l.PhysStart + (va - l.TextStart), true
}

// imageMapping finds the kernel image's slots in the page tables at root:
// the first and last present 2 MiB entries under __START_KERNEL_map.
func imageMapping(mem guestmem.Memory, root uint64, levels int) (*Location, error) {
	as, err := x86.NewAddressSpace(mem, root, levels)
	if err != nil {
		return nil, err
	}
	table := root
	path := []int{511, 510} // PGD (or P4D), PUD
	if levels == 5 {
		path = []int{511, 511, 510}
	}
	for _, idx := range path {
		e, err := as.Entry(table, idx)
		if err != nil {
			return nil, err
		}
		if e&1 == 0 || e&(1<<7) != 0 || e&0x7ff0000000000000 != 0 {
			return nil, fmt.Errorf("no kernel image mapping under root %#x (entry %d = %#x)", root, idx, e)
		}
		table = e & 0x000ffffffffff000
	}
	first, last, present := -1, -1, 0
	for i := 0; i < 512; i++ {
		e, err := as.Entry(table, i)
		if err != nil {
			return nil, err
		}
		if e&1 == 0 {
			continue
		}
		if first < 0 {
			first = i
		}
		last = i
		present++
	}
	if first < 0 {
		return nil, fmt.Errorf("kernel image area under root %#x is empty", root)
	}
	text := uint64(startKernelMap) + uint64(first)*x86.PageSize2M
	m, err := as.Translate(text)
	if err != nil {
		return nil, fmt.Errorf("kernel image start %#x: %w", text, err)
	}
	return &Location{
		Root: root, Levels: levels,
		TextStart: text, ImageEnd: uint64(startKernelMap) + uint64(last+1)*x86.PageSize2M,
		PhysStart: m.Phys, Present: present,
	}, nil
}

// locateFromRegisters tries the CR3 values of the vCPUs.
func locateFromRegisters(mem guestmem.Memory, cpus []guestmem.CPUState) (*Location, error) {
	var best *Location
	var lastErr error
	for _, c := range cpus {
		if c.CR3 == 0 || (c.CR0 != 0 && c.CR0&(1<<31) == 0) { // paging off
			continue
		}
		levels := 4
		if c.CR4&(1<<12) != 0 {
			levels = 5
		}
		for _, pti := range []bool{false, true} {
			l, err := imageMapping(mem, x86.KernelRoot(c.CR3, pti), levels)
			if err != nil {
				lastErr = err
				continue
			}
			if best == nil || l.Present > best.Present {
				best = l
			}
		}
	}
	if best == nil {
		if lastErr == nil {
			lastErr = errors.New("no vCPU has paging enabled")
		}
		return nil, lastErr
	}
	best.Source = "CPU registers"
	return best, nil
}

// maxRootCandidates bounds the page-table scan.
const maxRootCandidates = 1 << 16

// enoughRoots ends the scan early: that many tables sharing one kernel
// entry are the kernel's (and, with PTI, their user copies grow alongside).
const enoughRoots = 16

// initTopPgtWindow is how far into a 2 MiB block the fast scan looks for
// init_top_pgt.
const initTopPgtWindow = 256 << 10

// locateInitTopPgt looks for the kernel's own top-level table, init_top_pgt,
// where the x86-64 linker script puts it: the kernel's data section starts
// on a 2 MiB boundary (the image is mapped with 2 MiB pages), and the page
// tables of head_64.S come within its first few hundred KiB, one after the
// other: init_top_pgt's entry 511 points a few pages further on
// (level3_kernel_pgt, or level4_kernel_pgt with 5-level paging). Checking
// one word in the first pages of each 2 MiB block finds it without reading
// all of memory.
func locateInitTopPgt(mem guestmem.Memory, scan []guestmem.Range) *Location {
	var word [8]byte
	read := func(b []byte, phys uint64) error { _, err := mem.ReadAt(b, int64(phys)); return err }
	if st, ok := mem.(guestmem.Streamer); ok {
		read = st.StreamAt // a mapping would keep every page it touched resident
	}
	for _, r := range scan {
		for block := (r.Start + x86.PageSize2M - 1) &^ (x86.PageSize2M - 1); block < r.End; block += x86.PageSize2M {
			for p := block; p < block+initTopPgtWindow && p+x86.PageSize4K <= r.End; p += x86.PageSize4K {
				if err := read(word[:], p+0xff8); err != nil {
					break
				}
				e := binary.LittleEndian.Uint64(word[:])
				t := e & 0x000ffffffffff000
				if e&0x21 != 0x21 || e&0x98 != 0 || t <= p || t-p > 16*x86.PageSize4K {
					continue
				}
				var best *Location
				for _, levels := range []int{4, 5} {
					if l, err := imageMapping(mem, p, levels); err == nil && l.Present >= 2 && (best == nil || l.Present > best.Present) {
						best = l
					}
				}
				if best != nil {
					best.Source = "page table scan (init_top_pgt)"
					return best
				}
			}
		}
	}
	return nil
}

// locateByScan finds the kernel's page tables from physical memory alone.
// Every top-level table of the kernel and of each process shares the
// kernel's upper entries, so the entry that maps the kernel image (511)
// is the same physical address in all of them: scan all pages for a
// plausible entry 511, group pages by it, and try the largest groups.
func locateByScan(mem guestmem.Memory) (*Location, error) {
	ranges := mem.Ranges()
	inRAM := func(p uint64) bool {
		for _, r := range ranges {
			if p >= r.Start && p < r.End {
				return true
			}
		}
		return false
	}
	groups := map[uint64][]uint64{}
	n := 0
	enough := false // some group has enoughRoots members: stop scanning
	const chunk = 1 << 20
	buf := make([]byte, chunk)
	scan := ranges
	if ex, ok := mem.(guestmem.Extents); ok {
		// skip never-written holes of sparse files (and do not fault them in)
		scan = nil
		for _, r := range ranges {
			scan = append(scan, ex.DataExtents(r)...)
		}
	}
	if l := locateInitTopPgt(mem, scan); l != nil {
		return l, nil
	}
	read := func(b []byte, phys uint64) error { _, err := mem.ReadAt(b, int64(phys)); return err }
	if st, ok := mem.(guestmem.Streamer); ok {
		read = st.StreamAt
	}
	for _, r := range scan {
		for base := r.Start &^ (x86.PageSize4K - 1); base < r.End && n < maxRootCandidates && !enough; base += chunk {
			size := uint64(chunk)
			if base+size > r.End {
				size = (r.End - base) &^ (x86.PageSize4K - 1)
			}
			if size == 0 || base < r.Start {
				continue
			}
			b := buf[:size]
			if err := read(b, base); err != nil {
				continue
			}
			for off := uint64(0); off+x86.PageSize4K <= size; off += x86.PageSize4K {
				e := binary.LittleEndian.Uint64(b[off+0xff8:])
				// a kernel table entry: present and accessed, no large
				// page, no cache-control bits, no high flag bits
				if e&0x21 != 0x21 || e&0x98 != 0 || e&0x7ff0000000000000 != 0 {
					continue
				}
				t := e & 0x000ffffffffff000
				// the first MiB holds the real-mode trampoline's tables,
				// which map a part of the kernel in their own way
				if t == base+off || !inRAM(t) || base+off < 1<<20 {
					continue
				}
				groups[t] = append(groups[t], base+off)
				n++
				if len(groups[t]) == enoughRoots {
					// many tables share this entry; stop if it maps a kernel
					for _, levels := range []int{4, 5} {
						if l, err := imageMapping(mem, base+off, levels); err == nil && l.Present >= 2 {
							enough = true
						}
					}
				}
			}
		}
	}
	type group struct {
		pud   uint64
		roots []uint64
	}
	gs := make([]group, 0, len(groups))
	for k, v := range groups {
		gs = append(gs, group{k, v})
	}
	sort.Slice(gs, func(i, j int) bool {
		if len(gs[i].roots) != len(gs[j].roots) {
			return len(gs[i].roots) > len(gs[j].roots)
		}
		return gs[i].pud < gs[j].pud
	})
	// Under PTI the user copies of the top-level tables share an entry 511
	// too, but map only the kernel's entry text: of the groups that map an
	// image, take the one that maps the most of it.
	var best *Location
	var lastErr error = errors.New("no page table maps a kernel image")
	for i, g := range gs {
		if i >= 64 || (enough && len(g.roots) < 2) {
			break
		}
		// the guest runs on: a table seen in the scan may be gone already,
		// so try a few members of the group, in both paging modes, and keep
		// the reading that maps the most of an image (a 4-level table can
		// share its kernel entry with a 5-level one)
		for j, root := range g.roots {
			if j >= 4 {
				break
			}
			for _, levels := range []int{4, 5} {
				l, err := imageMapping(mem, root, levels)
				if err != nil {
					lastErr = err
					continue
				}
				if l.Present >= 2 && (best == nil || l.Present > best.Present) {
					best = l
				}
			}
		}
	}
	if best != nil {
		best.Source = "page table scan"
		return best, nil
	}
	return nil, fmt.Errorf("no Linux kernel found in %s of guest memory (%v): is this the memory of an x86-64 Linux guest? (for a memory file, --machine must match the VM's machine type)", humanBytes(guestmem.TotalSize(ranges)), lastErr)
}

func humanBytes(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d bytes", n)
}
