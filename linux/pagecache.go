package linux

import (
	"encoding/binary"
	"fmt"
)

// The page cache: the pages of a file the kernel holds in memory, in the
// xarray of its address_space (inode->i_mapping->i_pages), indexed by page
// number in the file. A process's mapping of a file shows only the pages
// it touched (a forked child has none until it touches them); the page
// cache has every page any process or read(2) brought in.

// pageCachePage returns the physical address of page index of the file
// (a struct file), or false when the page is not in memory.
func (k *Kernel) pageCachePage(file uint64, index uint64) (uint64, bool, error) {
	mv, err := k.ReadField("file", file, "f_mapping")
	if err != nil {
		return 0, false, err
	}
	mapping, _ := mv.Ptr()
	if mapping == 0 {
		return 0, false, fmt.Errorf("file %#x has no address_space", file)
	}
	hv, err := k.ReadField("address_space", mapping, "i_pages.xa_head")
	if err != nil {
		return 0, false, err
	}
	head, _ := hv.Ptr()
	entry, err := k.xaLoad(head, index)
	if err != nil || entry == 0 || entry&3 != 0 {
		return 0, false, err // absent, or a shadow (value) entry of an evicted page
	}
	// a large folio sits at its first index; the pages follow it in the
	// memory map
	first := index
	if iv, err := k.ReadField("page", entry, "index"); err == nil {
		first, _ = iv.Uint()
	}
	if first > index || index-first > 1<<9 {
		return 0, false, fmt.Errorf("page cache entry %#x has index %d for page %d", entry, first, index)
	}
	pageT, err := k.Types.Struct("page")
	if err != nil {
		return 0, false, err
	}
	page := entry + (index-first)*pageT.Size
	vmemmap, err := k.Symbol("vmemmap_base")
	if err != nil {
		return 0, false, err
	}
	var b [8]byte
	if _, err := k.AS.ReadAt(b[:], int64(vmemmap)); err != nil {
		return 0, false, fmt.Errorf("vmemmap_base: %w", err)
	}
	base := binary.LittleEndian.Uint64(b[:])
	if page < base || (page-base)%pageT.Size != 0 {
		return 0, false, fmt.Errorf("struct page %#x is not in the memory map at %#x", page, base)
	}
	return (page - base) / pageT.Size << 12, true, nil
}

// xaLoad looks up one index of an xarray whose xa_head is head (xa_load),
// following sibling entries of multi-index entries.
func (k *Kernel) xaLoad(head, index uint64) (uint64, error) {
	nodeT, err := k.Types.Struct("xa_node")
	if err != nil {
		return 0, err
	}
	entry := head
	for depth := 0; ; depth++ {
		if entry&3 != 2 || entry <= 4096 { // not a node
			if index != 0 && depth == 0 {
				return 0, nil // a single entry holds index 0 only
			}
			return entry, nil
		}
		if depth > maxXADepth {
			return 0, fmt.Errorf("xarray deeper than %d levels: %w", maxXADepth, ErrListCorrupt)
		}
		n, err := k.ReadValue(nodeT, entry-2)
		if err != nil {
			return 0, fmt.Errorf("xarray node: %w", err)
		}
		f := &fields{v: n}
		shift := f.uint("shift")
		if len(f.errs) > 0 || shift > 63 {
			return 0, fmt.Errorf("xarray node %#x: shift %d", entry-2, shift)
		}
		slots, err := n.Field("slots")
		if err != nil {
			return 0, err
		}
		nslots := uint64(slots.Type.Len)
		if nslots == 0 {
			return 0, fmt.Errorf("xarray node %#x has no slots", entry-2)
		}
		if depth == 0 && index>>shift >= nslots {
			return 0, nil // beyond the tree's range
		}
		off := index >> shift % nslots
		s, err := slots.Index(int(off))
		if err != nil {
			return 0, err
		}
		next, _ := s.Ptr()
		// a sibling: an internal entry smaller than the slot count, naming
		// the slot that holds the entry
		if next&3 == 2 && next>>2 < nslots {
			s, err = slots.Index(int(next >> 2))
			if err != nil {
				return 0, err
			}
			next, _ = s.Ptr()
		}
		if shift == 0 {
			if next&3 == 2 && next > 4096 {
				return 0, fmt.Errorf("xarray node %#x: a node below the last level: %w", entry-2, ErrListCorrupt)
			}
			return next, nil
		}
		entry = next
	}
}

// readFilePage reads n bytes at offset off of a file from the page cache
// (within one page).
func (k *Kernel) readFilePage(file, off uint64, b []byte) error {
	if off%4096+uint64(len(b)) > 4096 {
		return fmt.Errorf("page cache read of %d bytes at %#x crosses a page", len(b), off)
	}
	phys, ok, err := k.pageCachePage(file, off>>12)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("page %d of the file is not in the page cache", off>>12)
	}
	_, err = k.Mem.ReadAt(b, int64(phys+off%4096))
	return err
}
