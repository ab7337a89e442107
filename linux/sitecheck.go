package linux

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
)

// SiteCheck decides whether the bytes at a run-time patch site are what
// the kernel's own mechanism writes there, from the kernel's state at the
// time of the check: a jump label holds its nop or a jump to its target; a
// traceable function's ftrace site its nop or a call to ftrace_caller,
// ftrace_regs_caller, a trampoline of a registered ftrace_ops or a BPF
// trampoline; ftrace_call a call to the tracer ftrace runs (ftrace_stub,
// the list function or a registered ops's func); a static call a call,
// jump or nop to a function; a kprobe an int3. Anything else at a patch
// site is a patch: being a patch site excuses nothing by itself.
type SiteCheck struct {
	k     *Kernel
	sites []PatchSite
	// what the kernel may call from a traced function's site
	ftraceTargets map[uint64]string
	// what ftrace_call may call
	tracerFuncs map[uint64]string
	bpf         []BPFKsym
	insnPages   []AddrRange
	mods        []Module
	// Errors are the parts of the kernel's state that could not be read;
	// a site that needs them is not excused.
	Errors []error
}

// x86 encodings the kernel patches in (arch/x86/include/asm/nops.h,
// text-patching.h).
var (
	nop5   = []byte{0x0f, 0x1f, 0x44, 0x00, 0x00}
	nop2   = []byte{0x66, 0x90}
	retCC  = []byte{0xc3, 0xcc, 0xcc, 0xcc, 0xcc}
	endbr  = []byte{0xf3, 0x0f, 0x1e, 0xfa}
	opCall = byte(0xe8)
	opJmp  = byte(0xe9)
	opJmp8 = byte(0xeb)
	opInt3 = byte(0xcc)
)

// NewSiteCheck reads what the patch mechanisms may currently write: the
// registered ftrace_ops with their trampolines and functions, BPF images
// (trampolines, dispatchers), kprobe instruction pages and the modules.
func (k *Kernel) NewSiteCheck(sites []PatchSite) *SiteCheck {
	c := &SiteCheck{k: k, sites: sites, ftraceTargets: map[uint64]string{}, tracerFuncs: map[uint64]string{}}
	for _, n := range []string{"ftrace_caller", "ftrace_regs_caller"} {
		if a, ok := k.Syms.Lookup(n); ok {
			c.ftraceTargets[a] = n
		}
	}
	for _, n := range []string{"ftrace_stub", "ftrace_ops_list_func", "arch_ftrace_ops_list_func", "ftrace_ops_no_ops"} {
		if a, ok := k.Syms.Lookup(n); ok {
			c.tracerFuncs[a] = n
		}
	}
	ops, err := k.FtraceOps()
	c.note(err)
	for _, o := range ops {
		if o.Func != 0 {
			c.tracerFuncs[uint64(o.Func)] = "ftrace_ops " + o.Symbol
		}
		if o.Trampoline != 0 {
			c.ftraceTargets[uint64(o.Trampoline)] = "trampoline of ftrace_ops " + o.Ops.String()
		}
	}
	c.bpf, err = k.BPFKsyms()
	c.note(err)
	c.insnPages, err = k.KprobeInsnPages()
	c.note(err)
	c.mods, err = k.Modules()
	c.note(err)
	return c
}

func (c *SiteCheck) note(err error) {
	if err != nil && len(c.Errors) < 8 {
		c.Errors = append(c.Errors, err)
	}
}

// Err joins the errors of reading the kernel's patch state.
func (c *SiteCheck) Err() error {
	if c == nil {
		return nil
	}
	return errors.Join(c.Errors...)
}

// Excuses reports whether every byte of the change [a, a+n) lies in a
// patch site whose current bytes are what the kernel writes there (a
// change may span neighbouring sites: an ftrace call followed by an
// optimized kprobe's jump). buf holds kernel memory from bufStart (the
// bytes the change was seen in); sites outside it are read from the guest.
func (c *SiteCheck) Excuses(a, n uint64, buf []byte, bufStart uint64) bool {
	if c == nil || n == 0 {
		return false // no sites known: nothing is excused
	}
	for end := a + n; a < end; {
		next, ok := c.excusedFrom(a, buf, bufStart)
		if !ok {
			return false
		}
		a = next
	}
	return true
}

// excusedFrom finds a site holding a valid instruction that covers a and
// returns the address after that instruction.
func (c *SiteCheck) excusedFrom(a uint64, buf []byte, bufStart uint64) (uint64, bool) {
	i := sort.Search(len(c.sites), func(i int) bool { return c.sites[i].Addr+c.sites[i].Len > a })
	for ; i < len(c.sites) && c.sites[i].Addr <= a; i++ {
		s := c.sites[i]
		b := c.bytesAt(s.Addr, s.Len, buf, bufStart)
		if b == nil {
			continue
		}
		if l, ok := c.holds(s, b); ok && a < s.Addr+l {
			return s.Addr + l, true
		}
	}
	return 0, false
}

func (c *SiteCheck) bytesAt(a, n uint64, buf []byte, bufStart uint64) []byte {
	if a >= bufStart && a-bufStart+n <= uint64(len(buf)) {
		return buf[a-bufStart : a-bufStart+n]
	}
	b, err := c.k.AS.Read(a, int(n))
	if err != nil {
		return nil
	}
	return b
}

// holds checks the bytes b at site s and returns the length of the
// instruction the kernel wrote there.
func (c *SiteCheck) holds(s PatchSite, b []byte) (uint64, bool) {
	rel32 := func(at uint64, b []byte) uint64 {
		return at + 5 + uint64(int64(int32(binary.LittleEndian.Uint32(b[1:5]))))
	}
	has := func(p []byte) bool { return len(b) >= len(p) && bytes.Equal(b[:len(p)], p) }
	switch s.Kind {
	case SiteJumpLabel:
		switch {
		case has(nop5):
			return 5, true
		case has(nop2):
			return 2, true
		case len(b) >= 2 && b[0] == opJmp8:
			return 2, s.Addr+2+uint64(int64(int8(b[1]))) == s.Target
		case len(b) >= 5 && b[0] == opJmp:
			return 5, rel32(s.Addr, b) == s.Target
		}
	case SiteStaticCall, SiteStaticTramp:
		switch {
		case has(nop5), has(retCC):
			return 5, true
		case len(b) >= 5 && (b[0] == opCall || b[0] == opJmp):
			return 5, c.function(rel32(s.Addr, b))
		case s.Kind == SiteStaticCall && len(b) >= 6 && b[0] == 0x0f && b[1]&0xf0 == 0x80: // jcc to a function (a conditional tail call)
			return 6, c.function(s.Addr + 6 + uint64(int64(int32(binary.LittleEndian.Uint32(b[2:6])))))
		}
	case SiteFtrace:
		switch {
		case has(nop5):
			return 5, true
		case len(b) >= 5 && b[0] == opCall:
			t := rel32(s.Addr, b)
			if _, ok := c.ftraceTargets[t]; ok {
				return 5, true
			}
			return 5, c.bpfImage(t, "bpf_trampoline_") // a direct call (BPF trampolines)
		}
	case SiteFtraceCaller:
		if len(b) >= 5 && b[0] == opCall {
			_, ok := c.tracerFuncs[rel32(s.Addr, b)]
			return 5, ok
		}
	case SiteBPFDispatch:
		off := uint64(0)
		if has(endbr) {
			off = 4
		}
		if uint64(len(b)) < off+5 {
			return 0, false
		}
		p := b[off : off+5]
		switch {
		case bytes.Equal(p, nop5):
			return off + 5, true
		case p[0] == opJmp:
			return off + 5, c.bpfImage(rel32(s.Addr+off, p), "bpf_dispatcher_")
		}
	case SiteKprobe:
		switch {
		case len(b) >= 1 && b[0] == opInt3:
			return 1, true
		case len(b) >= 5 && b[0] == opJmp: // an optimized kprobe jumps to its detour buffer
			return 5, c.inInsnPage(rel32(s.Addr, b))
		}
	case SiteRuntimeConst:
		// found by its content: the immediate is the variable's current value
		return s.Len, true
	}
	return 0, false
}

// function reports whether t is the start of a function: of kernel text
// (a symbol's address), of a module's code, or of a BPF image.
func (c *SiteCheck) function(t uint64) bool {
	if c.k.KernelText(t) {
		sym, off, ok := c.k.Syms.Nearest(t)
		return ok && off == 0 && (sym.Type == 'T' || sym.Type == 't' || sym.Type == 'W' || sym.Type == 'w')
	}
	if m, ok := InModule(c.mods, t); ok && t >= uint64(m.Base) && t < uint64(m.Base)+m.TextSize {
		return true
	}
	return c.bpfImage(t, "")
}

// bpfImage reports whether t starts a BPF image (a JITed program, a
// trampoline or a dispatcher) whose name has the prefix.
func (c *SiteCheck) bpfImage(t uint64, prefix string) bool {
	for _, s := range c.bpf {
		if uint64(s.Start) == t && len(s.Name) >= len(prefix) && s.Name[:len(prefix)] == prefix {
			return true
		}
	}
	return false
}

func (c *SiteCheck) inInsnPage(t uint64) bool {
	for _, r := range c.insnPages {
		if t >= uint64(r.Start) && t < uint64(r.End) {
			return true
		}
	}
	return false
}

// BPFKsym is an entry of the kernel's list of BPF images (kernel/bpf/
// core.c bpf_kallsyms): JITed programs, trampolines, dispatchers.
type BPFKsym struct {
	Start Addr   `json:"start"`
	End   Addr   `json:"end"`
	Name  string `json:"name"`
}

// maxBPFKsyms bounds the walk over bpf_kallsyms.
const maxBPFKsyms = 1 << 16

// BPFKsyms walks bpf_kallsyms.
func (k *Kernel) BPFKsyms() ([]BPFKsym, error) {
	head, ok := k.Syms.Lookup("bpf_kallsyms")
	if !ok {
		return nil, nil // no BPF JIT
	}
	kt, err := k.Types.Struct("bpf_ksym")
	if err != nil {
		return nil, err
	}
	off, err := kt.FieldOffset("lnode")
	if err != nil {
		return nil, err
	}
	var out []BPFKsym
	err = k.WalkList(head, maxBPFKsyms, func(node uint64) error {
		v, err := k.ReadValue(kt, node-off)
		if err != nil {
			return err
		}
		f := &fields{v: v}
		out = append(out, BPFKsym{Start: Addr(f.uint("start")), End: Addr(f.uint("end")), Name: f.str("name")})
		return nil
	})
	if err != nil {
		return out, fmt.Errorf("bpf_kallsyms: %w", err)
	}
	return out, nil
}

// maxInsnPages bounds the walk over kprobe instruction pages.
const maxInsnPages = 1 << 12

// KprobeInsnPages lists the pages kprobes copy instructions into and
// optimized kprobes jump to (kprobe_insn_slots, kprobe_optinsn_slots).
func (k *Kernel) KprobeInsnPages() ([]AddrRange, error) {
	pt, err := k.Types.Struct("kprobe_insn_page")
	if err != nil {
		return nil, nil // no kprobes
	}
	listOff, err := pt.FieldOffset("list")
	if err != nil {
		return nil, err
	}
	ct, err := k.Types.Struct("kprobe_insn_cache")
	if err != nil {
		return nil, err
	}
	pagesOff, err := ct.FieldOffset("pages")
	if err != nil {
		return nil, err
	}
	var out []AddrRange
	for _, cache := range []string{"kprobe_insn_slots", "kprobe_optinsn_slots"} {
		a, ok := k.Syms.Lookup(cache)
		if !ok {
			continue
		}
		err := k.WalkList(a+pagesOff, maxInsnPages, func(node uint64) error {
			v, err := k.ReadField("kprobe_insn_page", node-listOff, "insns")
			if err != nil {
				return err
			}
			p, err := v.Ptr()
			if err == nil && p != 0 {
				out = append(out, AddrRange{Start: Addr(p), End: Addr(p + 4096)})
			}
			return err
		})
		if err != nil {
			return out, fmt.Errorf("%s: %w", cache, err)
		}
	}
	return out, nil
}
