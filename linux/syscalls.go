package linux

import (
	"encoding/binary"
	"fmt"
	"strings"

	"golang.org/x/arch/x86/x86asm"
)

// SyscallEntry is one entry of a system call table.
type SyscallEntry struct {
	Table   string `json:"table"` // sys_call_table, ia32_sys_call_table, x32_sys_call_table
	NR      int    `json:"nr"`
	Handler Addr   `json:"handler"`
	Symbol  string `json:"symbol"`
	// Expected is the handler the kernel recorded for this number at boot
	// (syscalls_metadata, with CONFIG_FTRACE_SYSCALLS), when known.
	Expected string `json:"expected,omitempty"`
}

// maxSyscalls bounds a table's length.
const maxSyscalls = 2048

// SyscallTable reads a system call table; its length is the distance to
// the next symbol.
func (k *Kernel) SyscallTable(name string) ([]SyscallEntry, error) {
	sym, ok := k.Syms.Get(name)
	if !ok {
		return nil, fmt.Errorf("kernel symbol %s not found", name)
	}
	n := 0
	if next, ok := k.Syms.Next(sym.Addr); ok {
		n = int((next.Addr - sym.Addr) / 8)
	}
	if n <= 0 || n > maxSyscalls {
		return nil, fmt.Errorf("%s: implausible length %d", name, n)
	}
	b := make([]byte, 8*n)
	if _, err := k.AS.ReadAt(b, int64(sym.Addr)); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	var meta []string
	if name == "sys_call_table" {
		meta = k.syscallMetadata(n)
	}
	out := make([]SyscallEntry, 0, n)
	for i := 0; i < n; i++ {
		h := binary.LittleEndian.Uint64(b[8*i:])
		if h == 0 {
			continue // padding after the last system call
		}
		e := SyscallEntry{Table: name, NR: i, Handler: Addr(h), Symbol: k.Syms.Describe(h)}
		if i < len(meta) {
			e.Expected = meta[i]
		}
		out = append(out, e)
	}
	return out, nil
}

// syscallMetadata reads the names the kernel recorded for each system
// call number at boot (syscalls_metadata[nr]->name, "sys_read").
func (k *Kernel) syscallMetadata(n int) []string {
	p, ok := k.Syms.Lookup("syscalls_metadata")
	if !ok {
		return nil
	}
	arr, err := k.Uint64(p)
	if err != nil || arr == 0 {
		return nil
	}
	b := make([]byte, 8*n)
	if _, err := k.AS.ReadAt(b, int64(arr)); err != nil {
		return nil
	}
	out := make([]string, n)
	for i := range out {
		m := binary.LittleEndian.Uint64(b[8*i:])
		if m == 0 {
			continue
		}
		np, err := k.ReadField("syscall_metadata", m, "name")
		if err != nil {
			continue
		}
		a, err := np.Ptr()
		if err != nil || a == 0 {
			continue
		}
		if s, err := k.ReadCString(a, 64); err == nil {
			out[i] = s
		}
	}
	return out
}

// HandlerFits reports whether a table entry points at a handler of its own
// kind: the start of a __x64_sys_ (or __ia32_/compat) function, or the
// "not implemented" handler, in core kernel text, and the one recorded at
// boot when that is known.
func (k *Kernel) HandlerFits(e SyscallEntry) (bool, string) {
	h := uint64(e.Handler)
	if !k.KernelText(h) {
		return false, "points outside the kernel's text"
	}
	sym, off, ok := k.Syms.Nearest(h)
	if !ok || off != 0 {
		return false, "points inside a function, not at its start"
	}
	name := sym.Name
	if name == "sys_ni_syscall" || name == "__x64_sys_ni_syscall" || name == "__ia32_sys_ni_syscall" {
		return true, ""
	}
	prefixes := []string{"__x64_sys_", "__x64_compat_sys_", "__ia32_sys_", "__ia32_compat_sys_", "__x32_compat_sys_"}
	base := ""
	for _, p := range prefixes {
		if strings.HasPrefix(name, p) {
			base = strings.TrimPrefix(name, p)
		}
	}
	if base == "" {
		return false, "points at " + name + ", which is not a system call handler"
	}
	if e.Expected != "" && strings.TrimPrefix(e.Expected, "sys_") != base {
		return false, "points at " + name + ", but the kernel recorded " + e.Expected + " for this number at boot"
	}
	return true, ""
}

// Call is a direct call or jump in kernel code: where it is and where it
// goes.
type Call struct {
	At, Target uint64
	Len        int
}

// CallTargets decodes a kernel function and returns its direct calls and
// jumps out of it (x64_sys_call dispatches system calls this way since
// Linux 6.9 and in the stable kernels that took the change).
func (k *Kernel) CallTargets(fn string) ([]Call, error) {
	sym, ok := k.Syms.Get(fn)
	if !ok {
		return nil, fmt.Errorf("kernel symbol %s not found", fn)
	}
	size := uint64(0)
	if next, ok := k.Syms.Next(sym.Addr); ok {
		size = next.Addr - sym.Addr
	}
	if size == 0 || size > 1<<20 {
		return nil, fmt.Errorf("%s: implausible size %d", fn, size)
	}
	code, err := k.AS.Read(sym.Addr, int(size))
	if err != nil {
		return nil, err
	}
	var out []Call
	for pc := 0; pc < len(code); {
		inst, err := DecodeInsn(code[pc:])
		if err != nil || inst.Len == 0 {
			pc++
			continue
		}
		if inst.Op == x86asm.CALL || inst.Op == x86asm.JMP {
			if rel, ok := inst.Args[0].(x86asm.Rel); ok {
				t := sym.Addr + uint64(pc) + uint64(inst.Len) + uint64(int64(rel))
				if t < sym.Addr || t >= sym.Addr+size { // calls and tail jumps out of the function
					out = append(out, Call{At: sym.Addr + uint64(pc), Target: t, Len: inst.Len})
				}
			}
		}
		pc += inst.Len
	}
	return out, nil
}

// IDTEntry is one gate of the interrupt descriptor table.
type IDTEntry struct {
	Vector  int    `json:"vector"`
	Handler Addr   `json:"handler"`
	Symbol  string `json:"symbol"`
	Present bool   `json:"present"`
}

// IDT reads idt_table: 256 16-byte gate descriptors whose handler address
// is split in three parts (Intel SDM vol. 3, 6.14.1).
func (k *Kernel) IDT() ([]IDTEntry, error) {
	a, err := k.Symbol("idt_table")
	if err != nil {
		return nil, err
	}
	b := make([]byte, 256*16)
	if _, err := k.AS.ReadAt(b, int64(a)); err != nil {
		return nil, fmt.Errorf("idt_table: %w", err)
	}
	out := make([]IDTEntry, 256)
	for i := range out {
		g := b[i*16:]
		h := uint64(binary.LittleEndian.Uint16(g[0:])) | uint64(binary.LittleEndian.Uint16(g[6:]))<<16 | uint64(binary.LittleEndian.Uint32(g[8:]))<<32
		present := g[5]&0x80 != 0
		out[i] = IDTEntry{Vector: i, Handler: Addr(h), Present: present}
		if present {
			out[i].Symbol = k.Syms.Describe(h)
		}
	}
	return out, nil
}

// endbr64 (F3 0F 1E FA) starts functions in kernels built with indirect
// branch tracking; x86asm does not know it.
var endbr64 = []byte{0xf3, 0x0f, 0x1e, 0xfa}

// DecodeInsn decodes one instruction of kernel code, knowing endbr64.
func DecodeInsn(code []byte) (x86asm.Inst, error) {
	if len(code) >= 4 && string(code[:4]) == string(endbr64) {
		return x86asm.Inst{Op: x86asm.NOP, Len: 4}, nil
	}
	return x86asm.Decode(code, 64)
}
