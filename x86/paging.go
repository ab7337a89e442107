// Package x86 translates x86-64 virtual addresses to guest physical ones by
// walking the guest's own page tables: 4-level and 5-level (LA57) paging,
// 4 KiB, 2 MiB and 1 GiB pages.
//
// With page-table isolation (PTI) the kernel keeps two top-level tables per
// address space, 8 KiB aligned: the kernel's (all of memory) and, 4 KiB above
// it, the user's (user memory plus a sliver of kernel entry code). Callers pass
// the kernel's; KernelRoot turns a CR3 value into it.
//
// A page that is not present is an error, never zeros.
package x86

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Page sizes.
const (
	PageSize4K = 1 << 12
	PageSize2M = 1 << 21
	PageSize1G = 1 << 30
)

// Page table entry bits (Intel SDM vol. 3, 4.5).
const (
	ptePresent = 1 << 0
	pteRW      = 1 << 1
	pteUser    = 1 << 2
	ptePS      = 1 << 7
	pteNX      = 1 << 63
	// physical address bits 12..51 of an entry
	pteAddrMask = 0x000ffffffffff000
)

// ErrNotPresent is wrapped by errors for addresses whose page is not present.
var ErrNotPresent = errors.New("page not present")

// ErrNonCanonical is wrapped by errors for addresses outside the canonical range.
var ErrNonCanonical = errors.New("non-canonical address")

// TranslationError says where a walk stopped.
type TranslationError struct {
	VA    uint64
	Level int    // paging level of the entry that stopped the walk (5..1)
	Entry uint64 // the entry's value
	Err   error
}

func (e *TranslationError) Error() string {
	if e.Level == 0 {
		return fmt.Sprintf("translate %#x: %v", e.VA, e.Err)
	}
	return fmt.Sprintf("translate %#x: level-%d entry %#x: %v", e.VA, e.Level, e.Entry, e.Err)
}

func (e *TranslationError) Unwrap() error { return e.Err }

// Mapping describes where one virtual page lives.
type Mapping struct {
	Phys     uint64 // physical address of the translated byte
	PageSize uint64
	Writable bool
	User     bool
	NX       bool
}

// AddressSpace is one set of page tables over guest physical memory. It keeps
// a small cache of page-table pages; Flush drops it (the guest keeps running
// and may change its tables).
type AddressSpace struct {
	mem    io.ReaderAt
	root   uint64
	levels int

	cache map[uint64]*[512]uint64
}

// maxCachedTables bounds the page-table cache (4 KiB each).
const maxCachedTables = 4096

// NewAddressSpace returns the address space whose top-level table is at the
// physical address root, with 4 or 5 levels of paging.
func NewAddressSpace(mem io.ReaderAt, root uint64, levels int) (*AddressSpace, error) {
	if levels != 4 && levels != 5 {
		return nil, fmt.Errorf("x86: %d paging levels unsupported (want 4 or 5)", levels)
	}
	if root&(PageSize4K-1) != 0 || root&^pteAddrMask != 0 {
		return nil, fmt.Errorf("x86: page table root %#x is not a page-aligned physical address", root)
	}
	return &AddressSpace{mem: mem, root: root, levels: levels, cache: map[uint64]*[512]uint64{}}, nil
}

// Root is the physical address of the top-level table.
func (a *AddressSpace) Root() uint64 { return a.root }

// Levels is 4 or 5.
func (a *AddressSpace) Levels() int { return a.levels }

// Memory is the physical memory under the address space.
func (a *AddressSpace) Memory() io.ReaderAt { return a.mem }

// WithRoot returns an address space over the same memory with another root
// (another process's page tables) and its own cache.
func (a *AddressSpace) WithRoot(root uint64) (*AddressSpace, error) {
	return NewAddressSpace(a.mem, root, a.levels)
}

// Flush empties the page-table cache.
func (a *AddressSpace) Flush() { clear(a.cache) }

// KernelRoot turns a CR3 value into the physical address of a top-level
// table: it drops the PCID (bits 0-11) and the no-flush bit 63. With PTI the
// user copy sits at kernel root + 4 KiB; pti says to clear bit 12 as well.
func KernelRoot(cr3 uint64, pti bool) uint64 {
	r := cr3 & pteAddrMask
	if pti {
		r &^= PageSize4K
	}
	return r
}

// Canonical reports whether va is canonical for the given number of levels.
func Canonical(va uint64, levels int) bool {
	bits := uint(48)
	if levels == 5 {
		bits = 57
	}
	top := int64(va) >> (bits - 1)
	return top == 0 || top == -1
}

func (a *AddressSpace) table(phys uint64) (*[512]uint64, error) {
	if t, ok := a.cache[phys]; ok {
		return t, nil
	}
	var buf [PageSize4K]byte
	if _, err := a.mem.ReadAt(buf[:], int64(phys)); err != nil {
		return nil, err
	}
	t := new([512]uint64)
	for i := range t {
		t[i] = binary.LittleEndian.Uint64(buf[i*8:])
	}
	if len(a.cache) >= maxCachedTables {
		clear(a.cache)
	}
	a.cache[phys] = t
	return t, nil
}

// Entry returns entry idx of the page table at physical address table.
func (a *AddressSpace) Entry(table uint64, idx int) (uint64, error) {
	t, err := a.table(table)
	if err != nil {
		return 0, err
	}
	return t[idx&511], nil
}

// Translate walks the page tables for va.
func (a *AddressSpace) Translate(va uint64) (Mapping, error) {
	if !Canonical(va, a.levels) {
		return Mapping{}, &TranslationError{VA: va, Err: ErrNonCanonical}
	}
	table := a.root
	writable, user, nx := true, true, false
	for level := a.levels; level >= 1; level-- {
		shift := 12 + 9*uint(level-1)
		idx := int(va>>shift) & 511
		t, err := a.table(table)
		if err != nil {
			return Mapping{}, &TranslationError{VA: va, Level: level, Err: fmt.Errorf("read page table at %#x: %w", table, err)}
		}
		e := t[idx]
		if e&ptePresent == 0 {
			return Mapping{}, &TranslationError{VA: va, Level: level, Entry: e, Err: ErrNotPresent}
		}
		writable = writable && e&pteRW != 0
		user = user && e&pteUser != 0
		nx = nx || e&pteNX != 0
		if level == 1 || (e&ptePS != 0 && (level == 2 || level == 3)) {
			size := uint64(1) << shift
			base := e & pteAddrMask &^ (size - 1)
			return Mapping{Phys: base | va&(size-1), PageSize: size, Writable: writable, User: user, NX: nx}, nil
		}
		if e&ptePS != 0 {
			return Mapping{}, &TranslationError{VA: va, Level: level, Entry: e, Err: errors.New("large-page bit set at a level that has none (not a page table)")}
		}
		table = e & pteAddrMask
	}
	panic("unreachable")
}

// ReadAt reads virtual memory. It stops at the first page that does not
// translate or read, returning the bytes read before it and the error.
func (a *AddressSpace) ReadAt(p []byte, off int64) (int, error) {
	va := uint64(off)
	n := 0
	for n < len(p) {
		m, err := a.Translate(va)
		if err != nil {
			return n, err
		}
		chunk := p[n:]
		if left := m.PageSize - (m.Phys & (m.PageSize - 1)); uint64(len(chunk)) > left {
			chunk = chunk[:left]
		}
		k, err := a.mem.ReadAt(chunk, int64(m.Phys))
		n += k
		if err != nil {
			return n, fmt.Errorf("read virtual %#x (physical %#x): %w", va, m.Phys, err)
		}
		va += uint64(len(chunk))
	}
	return n, nil
}

// Read reads n bytes at va.
func (a *AddressSpace) Read(va uint64, n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := a.ReadAt(b, int64(va)); err != nil {
		return nil, err
	}
	return b, nil
}

// Uint64 reads a little-endian 64-bit value at va.
func (a *AddressSpace) Uint64(va uint64) (uint64, error) {
	var b [8]byte
	if _, err := a.ReadAt(b[:], int64(va)); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// maxWalkPages bounds Mapped.
const maxWalkPages = 1 << 22

// Mapped calls fn for every present page in [start, end), walking the
// tables once instead of translating address by address. Pages come in
// address order; fn returning false stops the walk.
func (a *AddressSpace) Mapped(start, end uint64, fn func(va uint64, m Mapping) bool) error {
	count := 0
	var walk func(table uint64, level int, base uint64) (bool, error)
	walk = func(table uint64, level int, base uint64) (bool, error) {
		t, err := a.table(table)
		if err != nil {
			return false, err
		}
		shift := 12 + 9*uint(level-1)
		size := uint64(1) << shift
		for i := 0; i < 512; i++ {
			va := base + uint64(i)*size
			if level == a.levels && i >= 256 {
				va |= ^uint64(0) << (shift + 9) // sign-extend the upper half
			}
			if last := va + size - 1; last < start || va >= end {
				continue
			}
			e := t[i]
			if e&ptePresent == 0 {
				continue
			}
			if level == 1 || (e&ptePS != 0 && (level == 2 || level == 3)) {
				base := e & pteAddrMask &^ (size - 1)
				count++
				if count > maxWalkPages {
					return false, errors.New("x86: too many mapped pages in range")
				}
				if !fn(va, Mapping{Phys: base, PageSize: size, Writable: e&pteRW != 0, User: e&pteUser != 0, NX: e&pteNX != 0}) {
					return false, nil
				}
				continue
			}
			if e&ptePS != 0 {
				continue
			}
			more, err := walk(e&pteAddrMask, level-1, va)
			if err != nil || !more {
				return more, err
			}
		}
		return true, nil
	}
	_, err := walk(a.root, a.levels, 0)
	return err
}
