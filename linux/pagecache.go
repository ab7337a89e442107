package linux

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
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

// CachedFile is what ReadCachedFile wrote.
type CachedFile struct {
	Path  string `json:"path"`
	Size  int64  `json:"size"`
	Pages int64  `json:"pages"`
	// Cached pages came from the page cache; the others (Missing, the first
	// of them listed) were never read into memory or were evicted, and are
	// written as zeros.
	Cached   int64   `json:"cached"`
	Missing  []int64 `json:"missing,omitempty"`
	Complete bool    `json:"complete"`
}

const maxMissingListed = 64

// ReadCachedFile writes a file's contents from the page cache (the file a
// struct file refers to) to w, up to maxSize bytes (a larger file is an
// error: it cannot all be in memory).
func (k *Kernel) ReadCachedFile(file uint64, maxSize int64, w io.Writer) (CachedFile, error) {
	var out CachedFile
	fi, err := k.FileInfo(file)
	if err != nil {
		return out, err
	}
	out.Path = fi.Link
	iv, err := k.ReadField("file", file, "f_inode")
	if err != nil {
		return out, err
	}
	inode, _ := iv.Ptr()
	sv, err := k.ReadField("inode", inode, "i_size")
	if err != nil {
		return out, err
	}
	out.Size, _ = sv.Int()
	if out.Size < 0 || out.Size > maxSize {
		return out, fmt.Errorf("%s: size %d bytes is over the limit of %d (the guest's memory could not hold it all)", out.Path, out.Size, maxSize)
	}
	out.Pages = (out.Size + 4095) / 4096
	page := make([]byte, 4096)
	for i := int64(0); i < out.Pages; i++ {
		clear(page)
		phys, ok, err := k.pageCachePage(file, uint64(i))
		if err != nil {
			return out, fmt.Errorf("%s page %d: %w", out.Path, i, err)
		}
		if ok {
			if _, err := k.Mem.ReadAt(page, int64(phys)); err != nil {
				return out, fmt.Errorf("%s page %d at physical %#x: %w", out.Path, i, phys, err)
			}
			out.Cached++
		} else if len(out.Missing) < maxMissingListed {
			out.Missing = append(out.Missing, i)
		}
		n := min(int64(4096), out.Size-i*4096)
		if _, err := w.Write(page[:n]); err != nil {
			return out, err
		}
	}
	out.Complete = out.Cached == out.Pages
	return out, nil
}

// FindFile returns a struct file for a path open in, mapped by or run by
// any process (the first one found), so that its page cache can be read.
func (k *Kernel) FindFile(path string) (uint64, error) {
	tasks, err := k.ProcessTasks(nil)
	if len(tasks) == 0 {
		return 0, err
	}
	for _, t := range tasks {
		f := &fields{v: t}
		if mm := f.ptr("mm"); mm != 0 {
			if ef, err := k.ReadField("mm_struct", mm, "exe_file"); err == nil {
				if p, _ := ef.Ptr(); p != 0 {
					if fi, err := k.FileInfo(p); err == nil && (fi.Path == path || fi.Link == path) {
						return p, nil
					}
				}
			}
		}
		if ofs, err := k.Files(t); err == nil {
			for _, of := range ofs {
				if fi, err := k.FileInfo(of.File); err == nil && (fi.Path == path || fi.Link == path) {
					return of.File, nil
				}
			}
		}
		if maps, err := k.Maps(t); err == nil {
			for _, m := range maps {
				if m.File != 0 && m.Path == path {
					return uint64(m.File), nil
				}
			}
		}
	}
	return 0, fmt.Errorf("no process has %s open, mapped or running: only such files are found (give --pid with --fd, or --exe)", path)
}

// ExeFile is a process's mm->exe_file.
func (k *Kernel) ExeFile(task Value) (uint64, error) {
	f := &fields{v: task}
	mm := f.ptr("mm")
	if mm == 0 {
		return 0, errors.New("a kernel thread runs no program")
	}
	ef, err := k.ReadField("mm_struct", mm, "exe_file")
	if err != nil {
		return 0, err
	}
	p, _ := ef.Ptr()
	if p == 0 {
		return 0, errors.New("the process has no executable file")
	}
	return p, nil
}

// FDFile is the struct file of a process's descriptor.
func (k *Kernel) FDFile(task Value, fd int) (uint64, error) {
	ofs, err := k.Files(task)
	for _, of := range ofs {
		if of.FD == fd {
			return of.File, nil
		}
	}
	if err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no descriptor %d", fd)
}
