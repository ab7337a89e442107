package linux

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// A process's memory as an ELF core file, as the kernel's own core dump
// lays it out (fs/binfmt_elf.c): a PT_NOTE segment with the process's
// status (NT_PRPSINFO), each thread's registers (NT_PRSTATUS, read from
// the user registers the kernel saved at the top of the thread's kernel
// stack), the auxiliary vector (NT_AUXV) and the mapped files (NT_FILE),
// then one PT_LOAD segment per mapping. A page that is not in the
// process's page tables is read from the file's page cache for a mapping
// of a file, and left a hole (zeros) otherwise, as never touched anonymous
// memory is. gdb opens the result with the program: gdb PROGRAM CORE.

// CoreInfo says what a core holds.
type CoreInfo struct {
	PID      int64  `json:"pid"`
	Comm     string `json:"comm"`
	Threads  int    `json:"threads"`
	Segments int    `json:"segments"`
	Size     uint64 `json:"size"` // bytes of the file, holes included
	// Pages counts the readable mappings' pages: Present were read from
	// the page tables, Cached from a file's page cache, the rest (never
	// touched, swapped out or evicted) are holes.
	Pages   uint64   `json:"pages"`
	Present uint64   `json:"present"`
	Cached  uint64   `json:"cached"`
	Errors  []string `json:"errors,omitempty"`
}

// ELF constants (include/uapi/linux/elf.h)
const (
	ntPrstatus = 1
	ntPrpsinfo = 3
	ntAuxv     = 6
	ntFile     = 0x46494c45
	ptLoad     = 1
	ptNote     = 4
	emX8664    = 62
	// the user code and stack segment selectors of x86-64 (__USER_CS,
	// __USER_DS): a pt_regs saved on entry from user mode has them
	userCS = 0x33
	userSS = 0x2b
	// maxCoreSegments stays below PN_XNUM
	maxCoreSegments = 0xff00
)

// user_regs_struct's order (arch/x86/include/asm/user_64.h) with the
// pt_regs member each comes from ("" for the thread's segment state)
var coreRegs = []string{"r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx", "dx",
	"si", "di", "orig_ax", "ip", "cs", "flags", "sp", "ss"}

// CoreFile is where a core is written: an *os.File, where the pages not
// written stay holes.
type CoreFile interface {
	io.WriterAt
	Truncate(size int64) error
}

// WriteCore writes the core of the process whose leader is task to w.
// maxBytes bounds the readable memory written (0: no bound).
func (k *Kernel) WriteCore(task Value, w CoreFile, maxBytes uint64) (CoreInfo, error) {
	p := k.process(task, true)
	info := CoreInfo{PID: p.PID, Comm: p.Comm}
	note := func(err error) {
		if len(info.Errors) < 16 {
			info.Errors = append(info.Errors, err.Error())
		}
	}
	if p.Mm == 0 {
		return info, fmt.Errorf("pid %d has no memory (a kernel thread or a zombie)", p.PID)
	}
	mm, err := k.Object("mm_struct", uint64(p.Mm))
	if err != nil {
		return info, err
	}
	um, err := k.UserSpace(mm)
	if err != nil {
		return info, err
	}
	maps, err := k.Maps(task)
	if err != nil && len(maps) == 0 {
		return info, err
	}
	if err != nil {
		note(err)
	}
	if len(maps) > maxCoreSegments {
		return info, fmt.Errorf("pid %d has %d mappings, more than an ELF core holds (%d)", p.PID, len(maps), maxCoreSegments)
	}
	var readable uint64
	for _, m := range maps {
		if m.End <= m.Start || m.Start%4096 != 0 || m.End%4096 != 0 {
			return info, fmt.Errorf("pid %d: mapping %v-%v is not a range of pages: %w", p.PID, m.Start, m.End, ErrListCorrupt)
		}
		if strings.HasPrefix(m.Perms, "r") {
			if readable += uint64(m.End - m.Start); readable < uint64(m.End-m.Start) || readable > 1<<47 {
				return info, fmt.Errorf("pid %d maps more readable memory than a user address space holds: %w", p.PID, ErrListCorrupt)
			}
		}
	}
	if maxBytes > 0 && readable > maxBytes {
		return info, fmt.Errorf("pid %d maps %d readable bytes, more than --max-size %d", p.PID, readable, maxBytes)
	}

	// the notes
	var notes bytes.Buffer
	threads, terr := k.Threads(task)
	if terr != nil {
		note(fmt.Errorf("threads: %w", terr))
	}
	if len(threads) == 0 {
		threads = []uint64{task.Addr}
	}
	// the leader first, as the kernel writes it: gdb takes the first
	// NT_PRSTATUS for the process's own
	for i, t := range threads {
		if t == task.Addr && i > 0 {
			threads[0], threads[i] = threads[i], threads[0]
		}
	}
	writeNote(&notes, ntPrpsinfo, k.prpsinfo(p))
	for _, t := range threads {
		tv, err := k.Object("task_struct", t)
		if err != nil {
			note(err)
			continue
		}
		st, err := k.prstatus(tv, p)
		if err != nil {
			note(fmt.Errorf("thread %#x: registers: %w", t, err))
		}
		writeNote(&notes, ntPrstatus, st)
		info.Threads++
	}
	if auxv, err := k.savedAuxv(mm); err == nil {
		writeNote(&notes, ntAuxv, auxv)
	} else {
		note(fmt.Errorf("auxv: %w", err))
	}
	writeNote(&notes, ntFile, fileNote(maps))

	// the layout: header, program headers, notes, then the segments on
	// page boundaries
	hdr, noteOff := elfCoreHeader(1+len(maps), notes.Len())
	off := (noteOff + uint64(notes.Len()) + 4095) &^ 4095
	type seg struct {
		m        Mapping
		off, len uint64
	}
	var segs []seg
	for i, m := range maps {
		size := uint64(m.End - m.Start)
		flags := uint32(0)
		for j, bit := range []uint32{4, 2, 1} { // rwx
			if j < len(m.Perms) && m.Perms[j] != '-' {
				flags |= bit
			}
		}
		filesz := uint64(0)
		if flags&4 != 0 {
			filesz = size
		}
		putLoad(hdr, i+1, flags, off, uint64(m.Start), 0, filesz, size)
		segs = append(segs, seg{m, off, filesz})
		off += filesz
	}
	info.Segments, info.Size = len(segs), off
	if _, err := w.WriteAt(hdr, 0); err != nil {
		return info, err
	}
	if _, err := w.WriteAt(notes.Bytes(), int64(noteOff)); err != nil {
		return info, err
	}
	page := make([]byte, 4096)
	for _, s := range segs {
		for o := uint64(0); o < s.len; o += 4096 {
			info.Pages++
			va := uint64(s.m.Start) + o
			if _, err := um.ReadAt(page, int64(va)); err == nil {
				info.Present++
			} else if s.m.File != 0 && k.readFilePage(uint64(s.m.File), s.m.Offset+o, page) == nil {
				info.Cached++
			} else {
				continue // a hole
			}
			if _, err := w.WriteAt(page, int64(s.off+o)); err != nil {
				return info, err
			}
		}
	}
	// the last pages may be holes: the file still ends where the last
	// segment does
	if err := w.Truncate(int64(off)); err != nil {
		return info, err
	}
	return info, nil
}

// elfCoreHeader returns the ELF header and program headers of an x86-64
// core with phnum segments, the first the PT_NOTE of noteLen bytes that
// follows the headers; and where the notes go.
func elfCoreHeader(phnum, noteLen int) ([]byte, uint64) {
	le := binary.LittleEndian
	noteOff := uint64(64 + 56*phnum)
	hdr := make([]byte, noteOff)
	copy(hdr, "\x7fELF\x02\x01\x01")
	le.PutUint16(hdr[16:], 4) // ET_CORE
	le.PutUint16(hdr[18:], emX8664)
	le.PutUint32(hdr[20:], 1)
	le.PutUint64(hdr[32:], 64) // e_phoff
	le.PutUint16(hdr[52:], 64)
	le.PutUint16(hdr[54:], 56)
	le.PutUint16(hdr[56:], uint16(phnum))
	ph := hdr[64:]
	le.PutUint32(ph[0:], ptNote)
	le.PutUint64(ph[8:], noteOff)
	le.PutUint64(ph[32:], uint64(noteLen))
	le.PutUint64(ph[40:], uint64(noteLen))
	le.PutUint64(ph[48:], 4)
	return hdr, noteOff
}

// putLoad fills program header i as a PT_LOAD.
func putLoad(hdr []byte, i int, flags uint32, off, vaddr, paddr, filesz, memsz uint64) {
	le := binary.LittleEndian
	ph := hdr[64+56*i:]
	le.PutUint32(ph[0:], ptLoad)
	le.PutUint32(ph[4:], flags)
	le.PutUint64(ph[8:], off)
	le.PutUint64(ph[16:], vaddr)
	le.PutUint64(ph[24:], paddr)
	le.PutUint64(ph[32:], filesz)
	le.PutUint64(ph[40:], memsz)
	le.PutUint64(ph[48:], 4096)
}

// writeNote appends an ELF note named CORE.
func writeNote(b *bytes.Buffer, typ uint32, desc []byte) { writeNamedNote(b, "CORE", typ, desc) }

// prpsinfo is struct elf_prpsinfo of x86-64 (136 bytes).
func (k *Kernel) prpsinfo(p Process) []byte {
	le := binary.LittleEndian
	b := make([]byte, 136)
	states := map[string]byte{"R": 0, "S": 1, "D": 2, "T": 3, "t": 3, "Z": 4, "X": 5}
	if len(p.State) > 0 {
		b[0] = states[p.State[:1]]
		b[1] = p.State[0]
	}
	le.PutUint32(b[16:], p.UID)
	le.PutUint32(b[20:], p.GID)
	le.PutUint32(b[24:], uint32(p.PID))
	le.PutUint32(b[28:], uint32(p.PPID))
	copy(b[40:56], p.Comm)
	copy(b[56:135], strings.Join(p.Cmdline, " "))
	return b
}

// prstatus is struct elf_prstatus of x86-64 (336 bytes) for one thread,
// with the user registers saved at the top of its kernel stack.
func (k *Kernel) prstatus(t Value, p Process) ([]byte, error) {
	le := binary.LittleEndian
	b := make([]byte, 336)
	f := &fields{v: t}
	le.PutUint32(b[32:], uint32(f.int("pid")))
	le.PutUint32(b[36:], uint32(p.PPID))
	le.PutUint32(b[40:], uint32(p.PID))
	le.PutUint32(b[44:], uint32(p.PID))
	regs, err := k.userRegs(t)
	if err != nil {
		return b, err
	}
	for i, r := range regs {
		le.PutUint64(b[112+8*i:], r)
	}
	return b, nil
}

// userRegs reads a thread's user registers in user_regs_struct's order:
// the pt_regs at the top of its kernel stack, checked by their user segment selectors, and the thread's
// FS and GS bases and selectors.
func (k *Kernel) userRegs(t Value) ([]uint64, error) {
	f := &fields{v: t}
	stack := f.ptr("stack")
	if stack == 0 {
		return nil, errors.New("no kernel stack")
	}
	rt, err := k.Types.Struct("pt_regs")
	if err != nil {
		return nil, err
	}
	// the stack's top: THREAD_SIZE 16 KiB or 32 KiB (KASAN), less 16 bytes
	// of padding with FRED (Linux 6.9+)
	for _, top := range []uint64{16 << 10, 16<<10 - 16, 32 << 10, 32<<10 - 16} {
		rv, err := k.ReadValue(rt, stack+top-rt.Size)
		if err != nil {
			continue
		}
		rf := &fields{v: rv}
		if rf.uint("cs") != userCS || rf.uint("ss") != userSS {
			continue
		}
		out := make([]uint64, 0, 27)
		for _, r := range coreRegs {
			out = append(out, rf.uint(r))
		}
		thread := func(name string) uint64 {
			if !t.Type.HasField("thread." + name) {
				return 0
			}
			return f.uint("thread." + name)
		}
		out = append(out, thread("fsbase"), thread("gsbase"), thread("ds"), thread("es"), thread("fsindex"), thread("gsindex"))
		if len(rf.errs) > 0 {
			return out, errors.New(strings.Join(rf.errs, "; "))
		}
		return out, nil
	}
	return nil, fmt.Errorf("no user registers at the top of the kernel stack %#x", stack)
}

// savedAuxv reads mm->saved_auxv up to its AT_NULL pair.
func (k *Kernel) savedAuxv(mm Value) ([]byte, error) {
	v, err := mm.Field("saved_auxv")
	if err != nil {
		return nil, err
	}
	b := v.Bytes()
	for i := 0; i+16 <= len(b); i += 16 {
		if binary.LittleEndian.Uint64(b[i:]) == 0 {
			return b[:i+16], nil
		}
	}
	return b, nil
}

// fileNote is NT_FILE: the mapped files with their ranges and page
// offsets, then their names.
func fileNote(maps []Mapping) []byte {
	le := binary.LittleEndian
	var ents, names bytes.Buffer
	n := 0
	var w [8]byte
	for _, m := range maps {
		if m.File == 0 || m.Path == "" {
			continue
		}
		for _, x := range []uint64{uint64(m.Start), uint64(m.End), m.Offset / 4096} {
			le.PutUint64(w[:], x)
			ents.Write(w[:])
		}
		names.WriteString(m.Path)
		names.WriteByte(0)
		n++
	}
	out := make([]byte, 16, 16+ents.Len()+names.Len())
	le.PutUint64(out[0:], uint64(n))
	le.PutUint64(out[8:], 4096)
	out = append(out, ents.Bytes()...)
	return append(out, names.Bytes()...)
}
