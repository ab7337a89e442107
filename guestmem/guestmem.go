// Package guestmem gives one interface to the physical memory of a virtual
// machine, whatever holds it: a live QEMU process, a shared memory-backend file
// or memfd, or a dump file (raw, ELF core, LiME).
//
// Guest physical memory is sparse: RAM lies in ranges (on q35 it is split around
// the PCI hole below 4 GiB). A read that touches an address outside every range
// fails with ErrNotMapped; it never returns zeros in place of missing memory.
package guestmem

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"

	"golang.org/x/sys/unix"
)

// ErrNotMapped is returned (wrapped) for reads of guest physical addresses that
// no source range covers.
var ErrNotMapped = errors.New("guest physical address not backed by RAM")

// Memory is guest physical memory. ReadAt follows io.ReaderAt: off is a guest
// physical address, and a short read always comes with an error.
type Memory interface {
	io.ReaderAt
	// Ranges lists the guest physical ranges that hold RAM, sorted by start.
	Ranges() []Range
	// Describe says in a few words where the memory comes from (for `info`).
	Describe() string
	Close() error
}

// Direct is implemented by sources that can hand out their memory without a
// copy (memory-mapped files). The returned slice is valid until Close and must
// not be written.
type Direct interface {
	Slice(phys uint64, n int) ([]byte, bool)
}

// Range is a half-open range [Start, End) of guest physical addresses.
type Range struct {
	Start uint64 `json:"start"`
	End   uint64 `json:"end"`
}

// Size is the number of bytes in the range.
func (r Range) Size() uint64 { return r.End - r.Start }

func (r Range) String() string { return fmt.Sprintf("%#x-%#x", r.Start, r.End) }

// TotalSize adds up the sizes of ranges.
func TotalSize(rs []Range) uint64 {
	var n uint64
	for _, r := range rs {
		n += r.Size()
	}
	return n
}

// Segment maps a range of guest physical memory onto a backing store.
type Segment struct {
	Range
	// Backing holds the bytes; Offset is the position of Range.Start in it.
	Backing io.ReaderAt
	Offset  uint64
	// Data, when set, is the backing as a byte slice (a mapped file); it takes
	// precedence over Backing for reads and enables Direct.
	Data []byte
	// File, when set, is the file behind Data (file offset = Offset), used
	// to find holes (SEEK_DATA/SEEK_HOLE): a scan must not fault in the holes
	// of a sparse file, which on tmpfs would allocate them. The source's
	// closer closes it.
	File *os.File
}

// SegmentMap is a Memory made of segments. Every source in this package
// builds one; it does the splitting of reads across segments and the checks.
type SegmentMap struct {
	segs   []Segment
	desc   string
	closer func() error
}

// MaxPhysAddr bounds guest physical addresses: x86-64 page tables hold at
// most 52 address bits, so memory above it is a malformed source.
const MaxPhysAddr = 1 << 52

// NewSegmentMap sorts segs and checks that they do not overlap.
func NewSegmentMap(desc string, segs []Segment, closer func() error) (*SegmentMap, error) {
	s := append([]Segment(nil), segs...)
	sort.Slice(s, func(i, j int) bool { return s[i].Start < s[j].Start })
	for i := range s {
		if s[i].End <= s[i].Start {
			return nil, fmt.Errorf("guestmem: empty or inverted segment %v", s[i].Range)
		}
		if s[i].End > MaxPhysAddr {
			return nil, fmt.Errorf("guestmem: segment %v lies beyond the largest x86 physical address %#x", s[i].Range, uint64(MaxPhysAddr))
		}
		if i > 0 && s[i].Start < s[i-1].End {
			return nil, fmt.Errorf("guestmem: segments %v and %v overlap", s[i-1].Range, s[i].Range)
		}
		if s[i].Data != nil && uint64(len(s[i].Data)) < s[i].Offset+s[i].Size() {
			return nil, fmt.Errorf("guestmem: segment %v extends past its %d-byte mapping", s[i].Range, len(s[i].Data))
		}
	}
	if len(s) == 0 {
		return nil, errors.New("guestmem: no memory ranges")
	}
	return &SegmentMap{segs: s, desc: desc, closer: closer}, nil
}

// find returns the index of the segment that holds addr, or -1.
func (m *SegmentMap) find(addr uint64) int {
	i := sort.Search(len(m.segs), func(i int) bool { return m.segs[i].End > addr })
	if i < len(m.segs) && m.segs[i].Start <= addr {
		return i
	}
	return -1
}

// ReadAt reads guest physical memory at off.
func (m *SegmentMap) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("guestmem: negative physical address %d", off)
	}
	addr := uint64(off)
	n := 0
	for n < len(p) {
		i := m.find(addr)
		if i < 0 {
			return n, fmt.Errorf("read %d bytes at physical %#x: %w", len(p)-n, addr, ErrNotMapped)
		}
		s := &m.segs[i]
		chunk := p[n:]
		if max := s.End - addr; uint64(len(chunk)) > max {
			chunk = chunk[:max]
		}
		pos := s.Offset + (addr - s.Start)
		if s.Data != nil {
			copy(chunk, s.Data[pos:])
		} else {
			k, err := s.Backing.ReadAt(chunk, int64(pos))
			if k < len(chunk) {
				if err == nil || err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return n + k, fmt.Errorf("read physical %#x (+%d bytes) from %s: %w", addr, len(chunk), m.desc, err)
			}
		}
		n += len(chunk)
		addr += uint64(len(chunk))
	}
	return n, nil
}

// Slice implements Direct for segments backed by mapped data.
func (m *SegmentMap) Slice(phys uint64, n int) ([]byte, bool) {
	i := m.find(phys)
	if i < 0 {
		return nil, false
	}
	s := &m.segs[i]
	if s.Data == nil || phys+uint64(n) > s.End || phys+uint64(n) < phys {
		return nil, false
	}
	pos := s.Offset + (phys - s.Start)
	return s.Data[pos : pos+uint64(n) : pos+uint64(n)], true
}

// Streamer is implemented by sources that can read a large range without
// mapping it into this process (pread on the file behind a mapping): a scan
// over all of guest memory then costs a copy, not a page fault per page,
// and does not grow the resident set.
type Streamer interface {
	StreamAt(p []byte, phys uint64) error
}

// StreamAt reads like ReadAt, through the file behind mapped segments.
func (m *SegmentMap) StreamAt(p []byte, phys uint64) error {
	i := m.find(phys)
	if i >= 0 {
		s := &m.segs[i]
		if s.File != nil && phys+uint64(len(p)) <= s.End {
			n, err := s.File.ReadAt(p, int64(s.Offset+phys-s.Start))
			if n == len(p) {
				return nil
			}
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("read physical %#x from %s: %w", phys, m.desc, err)
		}
	}
	_, err := m.ReadAt(p, int64(phys))
	return err
}

// Extents is implemented by sources that know which parts of guest memory
// were never written (holes of a sparse file): scans skip them.
type Extents interface {
	DataExtents(r Range) []Range
}

// maxExtents bounds the extent list of one range.
const maxExtents = 1 << 20

// DataExtents returns the parts of r that may hold data: all of it, except
// holes of file-backed segments.
func (m *SegmentMap) DataExtents(r Range) []Range {
	var out []Range
	for _, s := range m.segs {
		lo, hi := max(s.Start, r.Start), min(s.End, r.End)
		if lo >= hi {
			continue
		}
		if s.File == nil {
			out = append(out, Range{lo, hi})
			continue
		}
		fd := int(s.File.Fd())
		base := int64(s.Offset) - int64(s.Start) // file offset = phys + base
		pos, end := int64(lo)+base, int64(hi)+base
		for pos < end && len(out) < maxExtents {
			d, err := unix.Seek(fd, pos, unix.SEEK_DATA)
			if err != nil || d >= end {
				break // ENXIO: no data after pos
			}
			h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
			if err != nil || h > end {
				h = end
			}
			out = append(out, Range{uint64(d - base), uint64(h - base)})
			pos = h
		}
		if len(out) >= maxExtents {
			return []Range{r}
		}
	}
	return out
}

// Ranges returns the ranges of all segments, adjacent ones merged.
func (m *SegmentMap) Ranges() []Range {
	var out []Range
	for _, s := range m.segs {
		if len(out) > 0 && out[len(out)-1].End == s.Start {
			out[len(out)-1].End = s.End
			continue
		}
		out = append(out, s.Range)
	}
	return out
}

// Segments returns a copy of the segment list.
func (m *SegmentMap) Segments() []Segment { return append([]Segment(nil), m.segs...) }

// Describe says where the memory comes from.
func (m *SegmentMap) Describe() string { return m.desc }

// Close releases the source.
func (m *SegmentMap) Close() error {
	var err error
	if m.closer != nil {
		err = m.closer()
		m.closer = nil
	}
	return err
}
