package guestmem

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Format names a dump file format.
type Format string

const (
	FormatRaw  Format = "raw"
	FormatELF  Format = "elf"
	FormatLiME Format = "lime"
)

// CPUState is what a dump records of one virtual CPU that matters for
// introspection. Zero values mean "not recorded".
type CPUState struct {
	CR0, CR3, CR4 uint64
}

// RegisterSource is implemented by memory sources that carry CPU state (ELF
// cores written by QEMU's dump-guest-memory).
type RegisterSource interface {
	CPUs() []CPUState
}

// limits on hostile dump files
const (
	maxDumpSegments = 1 << 16
	minDumpSize     = 1 << 20
)

const limeMagic = 0x4C694D45

// DumpFile is guest memory read from a file.
type DumpFile struct {
	*SegmentMap
	Format Format
	cpus   []CPUState
}

// CPUs returns the CPU state stored in the dump, if any.
func (d *DumpFile) CPUs() []CPUState { return d.cpus }

// OpenDump opens a memory dump and detects its format: an ELF core (QEMU
// dump-guest-memory, virsh dump --memory-only), LiME, or else raw (file
// offset = guest physical address). The file is mapped read-only.
func OpenDump(path string) (*DumpFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open dump: %w", err)
	}
	keep := false
	defer func() {
		if !keep {
			f.Close()
		}
	}()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("open dump: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("open dump %s: not a regular file", path)
	}
	size := st.Size()
	if size < minDumpSize {
		return nil, fmt.Errorf("open dump %s: %d bytes is too small to hold guest memory (at least 1 MiB expected)", path, size)
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map dump %s: %w", path, err)
	}
	closer := func() error { f.Close(); return unix.Munmap(data) }
	d, err := ParseDump(path, data, closer)
	if err != nil {
		unix.Munmap(data)
		return nil, err
	}
	keep = true
	for i := range d.segs {
		d.segs[i].File = f // sparse dumps: skip holes when scanning
	}
	return d, nil
}

// ParseDump interprets data (the whole dump file) as guest memory. name is used
// in messages; closer (may be nil) runs on Close.
func ParseDump(name string, data []byte, closer func() error) (*DumpFile, error) {
	switch {
	case bytes.HasPrefix(data, []byte(elf.ELFMAG)):
		segs, cpus, err := parseELFCore(data)
		if err != nil {
			return nil, fmt.Errorf("dump %s (ELF core): %w", name, err)
		}
		m, err := NewSegmentMap("ELF core "+name, segs, closer)
		if err != nil {
			return nil, fmt.Errorf("dump %s (ELF core): %w", name, err)
		}
		return &DumpFile{SegmentMap: m, Format: FormatELF, cpus: cpus}, nil
	case len(data) >= 4 && binary.LittleEndian.Uint32(data) == limeMagic:
		segs, err := parseLiME(data)
		if err != nil {
			return nil, fmt.Errorf("dump %s (LiME): %w", name, err)
		}
		m, err := NewSegmentMap("LiME "+name, segs, closer)
		if err != nil {
			return nil, fmt.Errorf("dump %s (LiME): %w", name, err)
		}
		return &DumpFile{SegmentMap: m, Format: FormatLiME}, nil
	case bytes.HasPrefix(data, []byte("KDUMP   ")) || bytes.HasPrefix(data, []byte("makedumpfile")):
		return nil, fmt.Errorf("dump %s: kdump-compressed and makedumpfile formats are not supported; write the dump as ELF (dump-guest-memory without a format, or virsh dump --memory-only --format elf)", name)
	default:
		if len(data) < minDumpSize {
			return nil, fmt.Errorf("dump %s: %d bytes is too small to hold guest memory", name, len(data))
		}
		m, err := NewSegmentMap("raw "+name, []Segment{{Range: Range{0, uint64(len(data))}, Data: data}}, closer)
		if err != nil {
			return nil, err
		}
		return &DumpFile{SegmentMap: m, Format: FormatRaw}, nil
	}
}

// parseELFCore reads the PT_LOAD segments (p_paddr is the guest physical
// address) and QEMU's per-CPU notes of an ELF core.
func parseELFCore(data []byte) ([]Segment, []CPUState, error) {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, nil, err
	}
	if f.Class != elf.ELFCLASS64 || f.Data != elf.ELFDATA2LSB {
		return nil, nil, fmt.Errorf("not a 64-bit little-endian core (class %v, data %v)", f.Class, f.Data)
	}
	if f.Type != elf.ET_CORE {
		return nil, nil, fmt.Errorf("ELF type is %v, want ET_CORE", f.Type)
	}
	if len(f.Progs) > maxDumpSegments {
		return nil, nil, fmt.Errorf("%d program headers is more than the limit of %d", len(f.Progs), maxDumpSegments)
	}
	var segs []Segment
	var cpus []CPUState
	for i, p := range f.Progs {
		switch p.Type {
		case elf.PT_LOAD:
			if p.Filesz == 0 {
				continue
			}
			end := p.Off + p.Filesz
			if end < p.Off || end > uint64(len(data)) {
				return nil, nil, fmt.Errorf("program header %d: file range %#x+%#x lies outside the %d-byte file (truncated dump?)", i, p.Off, p.Filesz, len(data))
			}
			if p.Paddr+p.Filesz < p.Paddr {
				return nil, nil, fmt.Errorf("program header %d: physical range %#x+%#x overflows", i, p.Paddr, p.Filesz)
			}
			segs = append(segs, Segment{Range: Range{p.Paddr, p.Paddr + p.Filesz}, Data: data, Offset: p.Off})
		case elf.PT_NOTE:
			end := p.Off + p.Filesz
			if end < p.Off || end > uint64(len(data)) {
				return nil, nil, fmt.Errorf("note segment %d lies outside the file", i)
			}
			cpus = append(cpus, parseQEMUNotes(data[p.Off:end])...)
		}
	}
	if len(segs) == 0 {
		return nil, nil, errors.New("no PT_LOAD segments: the core holds no memory")
	}
	return mergeAdjacent(segs), cpus, nil
}

// mergeAdjacent joins segments that are contiguous both physically and in the
// file, which keeps lookups short for dumps with many small segments.
func mergeAdjacent(segs []Segment) []Segment {
	out := segs[:0:0]
	for _, s := range segs {
		if n := len(out); n > 0 {
			l := &out[n-1]
			if l.End == s.Start && l.Offset+l.Size() == s.Offset && l.Data != nil && s.Data != nil && &l.Data[0] == &s.Data[0] {
				l.End = s.End
				continue
			}
		}
		out = append(out, s)
	}
	return out
}

// QEMU's ELF note "QEMU" (type 0) holds a QEMUCPUState: version, size, 16
// general registers, rip, rflags, 10 segment descriptors of 24 bytes, then
// cr[0..4]. This is QEMU's dump format (target/i386/arch_dump.c).
const (
	qemuNoteCROffset = 8 + 18*8 + 10*24
	qemuNoteMinSize  = qemuNoteCROffset + 5*8
)

func parseQEMUNotes(b []byte) []CPUState {
	var out []CPUState
	for len(b) >= 12 {
		namesz := uint64(binary.LittleEndian.Uint32(b[0:]))
		descsz := uint64(binary.LittleEndian.Uint32(b[4:]))
		b = b[12:]
		nameEnd := align4(namesz)
		descEnd := nameEnd + align4(descsz)
		if nameEnd > uint64(len(b)) || descEnd > uint64(len(b)) || descEnd < nameEnd {
			break
		}
		name := string(bytes.TrimRight(b[:namesz], "\x00"))
		desc := b[nameEnd : nameEnd+descsz]
		if name == "QEMU" && len(desc) >= qemuNoteMinSize {
			cr := desc[qemuNoteCROffset:]
			out = append(out, CPUState{
				CR0: binary.LittleEndian.Uint64(cr[0:]),
				CR3: binary.LittleEndian.Uint64(cr[24:]),
				CR4: binary.LittleEndian.Uint64(cr[32:]),
			})
		}
		b = b[descEnd:]
	}
	return out
}

func align4(n uint64) uint64 { return (n + 3) &^ 3 }

// parseLiME reads LiME range headers: magic, version 1, start, end (inclusive),
// 8 reserved bytes, then the range's bytes.
func parseLiME(data []byte) ([]Segment, error) {
	var segs []Segment
	off := uint64(0)
	for off < uint64(len(data)) {
		if len(segs) >= maxDumpSegments {
			return nil, fmt.Errorf("more than %d ranges", maxDumpSegments)
		}
		if uint64(len(data))-off < 32 {
			return nil, fmt.Errorf("truncated range header at offset %#x", off)
		}
		h := data[off:]
		if m := binary.LittleEndian.Uint32(h); m != limeMagic {
			return nil, fmt.Errorf("bad magic %#x in range header at offset %#x", m, off)
		}
		if v := binary.LittleEndian.Uint32(h[4:]); v != 1 {
			return nil, fmt.Errorf("unsupported LiME version %d at offset %#x", v, off)
		}
		start := binary.LittleEndian.Uint64(h[8:])
		last := binary.LittleEndian.Uint64(h[16:])
		if last < start || last == ^uint64(0) {
			return nil, fmt.Errorf("range header at offset %#x: end %#x before start %#x", off, last, start)
		}
		size := last - start + 1
		body := off + 32
		if size > uint64(len(data))-body {
			return nil, fmt.Errorf("range %#x-%#x at offset %#x runs past the end of the file (truncated dump?)", start, last, off)
		}
		segs = append(segs, Segment{Range: Range{start, start + size}, Data: data, Offset: body})
		off = body + size
	}
	if len(segs) == 0 {
		return nil, errors.New("no ranges")
	}
	return segs, nil
}

// WriteLiMEHeader returns the 32-byte LiME header for the range [start, end).
func WriteLiMEHeader(start, end uint64) []byte {
	h := make([]byte, 32)
	binary.LittleEndian.PutUint32(h[0:], limeMagic)
	binary.LittleEndian.PutUint32(h[4:], 1)
	binary.LittleEndian.PutUint64(h[8:], start)
	binary.LittleEndian.PutUint64(h[16:], end-1)
	return h
}
