package linux

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// The ELF objects mapped into a process — its program, the dynamic loader,
// its libraries, the vDSO — found from its mappings as /proc/PID/maps lists
// them: each file mapped from offset 0 whose first bytes are an ELF header.
// The GNU build id comes from the PT_NOTE segments, read where the file's
// mappings put them in the process's memory.

// Library is one ELF object mapped into a process.
type Library struct {
	Path string `json:"path"`
	// Base is where the file's first byte is mapped.
	Base Addr `json:"base"`
	// End is the end of the file's last mapping.
	End Addr `json:"end"`
	// Type is the ELF type: EXEC (a program at a fixed address), DYN (a
	// position-independent program or a shared library).
	Type    string `json:"type"`
	BuildID string `json:"build_id,omitempty"`
	// Main is the process's own program (mm->exe_file).
	Main   bool     `json:"main,omitempty"`
	Errors []string `json:"errors,omitempty"`
}

// limits of the ELF reads
const (
	maxPhnum   = 512
	maxNotes   = 64 << 10
	maxBuildID = 64
)

// Libraries lists the ELF objects mapped into a process, by base address.
func (k *Kernel) Libraries(task Value) ([]Library, error) {
	maps, mapsErr := k.Maps(task)
	if len(maps) == 0 {
		return nil, mapsErr
	}
	f := &fields{v: task}
	mmAddr := f.ptr("mm")
	mm, err := k.Object("mm_struct", mmAddr)
	if err != nil {
		return nil, err
	}
	um, err := k.UserSpace(mm)
	if err != nil {
		return nil, err
	}
	exe := ""
	if fi, err := k.Exe(mmAddr); err == nil {
		exe = fi.Link
	}
	// a file's mappings, in address order: one object per run of mappings
	// of the same file that starts at offset 0
	var out []Library
	var cur []Mapping
	flush := func() {
		if len(cur) == 0 {
			return
		}
		l := Library{Path: cur[0].Path, Base: cur[0].Start, End: cur[len(cur)-1].End, Main: cur[0].Path == exe && exe != ""}
		read := func(off uint64, n int) ([]byte, error) { return k.readFileRange(um, cur, off, n) }
		typ, id, err := elfIdentity(read)
		if err == errNotELF {
			cur = nil
			return
		}
		l.Type, l.BuildID = typ, id
		if err != nil {
			l.Errors = append(l.Errors, err.Error())
		}
		out = append(out, l)
		cur = nil
	}
	for _, m := range maps {
		file := m.Inode != 0 && m.Path != "" || m.Path == "[vdso]"
		switch {
		case !file:
			continue
		case m.Offset == 0 && (len(cur) == 0 || m.Path != cur[0].Path || m.Path == "[vdso]"):
			flush()
			cur = []Mapping{m}
		case len(cur) > 0 && m.Path == cur[0].Path:
			cur = append(cur, m)
		}
	}
	flush()
	return out, mapsErr
}

// readFileRange reads n bytes at a file offset through the mappings that
// map that part of the file; a page the process never touched (not in its
// page tables) is read from the file's page cache.
func (k *Kernel) readFileRange(um *UserMemory, ms []Mapping, off uint64, n int) ([]byte, error) {
	for _, m := range ms {
		size := uint64(m.End - m.Start)
		if off < m.Offset || off-m.Offset >= size {
			continue
		}
		if uint64(n) > size-(off-m.Offset) {
			return nil, fmt.Errorf("file offset %#x+%d runs past the mapping at %v", off, n, m.Start)
		}
		b := make([]byte, n)
		for done := 0; done < n; {
			o := off + uint64(done)
			l := min(n-done, int(4096-o%4096))
			if _, err := um.ReadAt(b[done:done+l], int64(uint64(m.Start)+o-m.Offset)); err != nil {
				if m.File == 0 {
					return nil, err
				}
				if err := k.readFilePage(uint64(m.File), o, b[done:done+l]); err != nil {
					return nil, fmt.Errorf("file offset %#x: not in the process's page tables, and %w", o, err)
				}
			}
			done += l
		}
		return b, nil
	}
	return nil, fmt.Errorf("file offset %#x is not mapped", off)
}

var errNotELF = errors.New("not an ELF file")

// elfIdentity reads an ELF object's type and GNU build id through read
// (file offset, length). Only 64-bit little-endian objects are parsed
// past the header.
func elfIdentity(read func(off uint64, n int) ([]byte, error)) (typ, buildID string, err error) {
	h, err := read(0, 64)
	if err != nil {
		return "", "", fmt.Errorf("ELF header: %w", err)
	}
	if !bytes.HasPrefix(h, []byte("\x7fELF")) {
		return "", "", errNotELF
	}
	if h[4] != 2 || h[5] != 1 {
		return "ELF32/BE", "", nil
	}
	le := binary.LittleEndian
	switch t := le.Uint16(h[16:]); t {
	case 2:
		typ = "EXEC"
	case 3:
		typ = "DYN"
	default:
		typ = fmt.Sprintf("type %d", t)
	}
	phoff, phentsize, phnum := le.Uint64(h[32:]), uint64(le.Uint16(h[54:])), uint64(le.Uint16(h[56:]))
	if phnum == 0 {
		return typ, "", nil
	}
	if phentsize < 56 || phnum > maxPhnum {
		return typ, "", fmt.Errorf("program headers: %d of %d bytes", phnum, phentsize)
	}
	ph, err := read(phoff, int(phnum*phentsize))
	if err != nil {
		return typ, "", fmt.Errorf("program headers: %w", err)
	}
	for i := uint64(0); i < phnum; i++ {
		p := ph[i*phentsize:]
		if le.Uint32(p) != 4 { // PT_NOTE
			continue
		}
		off, size := le.Uint64(p[8:]), le.Uint64(p[32:])
		if size == 0 || size > maxNotes {
			continue
		}
		notes, err := read(off, int(size))
		if err != nil {
			return typ, "", fmt.Errorf("notes at file offset %#x: %w", off, err)
		}
		if id, ok := gnuBuildID(notes); ok {
			return typ, id, nil
		}
	}
	return typ, "", nil
}

// gnuBuildID finds the NT_GNU_BUILD_ID note ("GNU", type 3) among notes.
func gnuBuildID(b []byte) (string, bool) {
	le := binary.LittleEndian
	for len(b) >= 12 {
		namesz, descsz, typ := uint64(le.Uint32(b)), uint64(le.Uint32(b[4:])), le.Uint32(b[8:])
		nameEnd := 12 + (namesz+3)&^3
		descEnd := nameEnd + (descsz+3)&^3
		// the last note's padding may be left out of the segment
		if 12+namesz > uint64(len(b)) || nameEnd+descsz > uint64(len(b)) || nameEnd > uint64(len(b)) {
			return "", false
		}
		descEnd = min(descEnd, uint64(len(b)))
		name := strings.TrimRight(string(b[12:12+namesz]), "\x00")
		if name == "GNU" && typ == 3 && descsz > 0 && descsz <= maxBuildID {
			return hex.EncodeToString(b[nameEnd : nameEnd+descsz]), true
		}
		b = b[descEnd:]
	}
	return "", false
}
