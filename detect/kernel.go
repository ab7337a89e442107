package detect

import (
	"errors"
	"fmt"
	"strings"

	"github.com/vmwatch/vmwatch/linux"
)

func syscallTables(s *Snapshot) ([]Finding, error) {
	var out []Finding
	var errs []error
	for _, table := range []string{"sys_call_table", "ia32_sys_call_table", "x32_sys_call_table"} {
		if _, ok := s.K.Syms.Lookup(table); !ok {
			continue
		}
		entries, err := s.K.SyscallTable(table)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, e := range entries {
			ok, why := s.K.HandlerFits(e)
			if ok {
				continue
			}
			ev := Evidence{Addresses: []AddrEvidence{s.addr("handler", uint64(e.Handler))},
				Found: e.Symbol, Details: map[string]any{"table": table, "nr": e.NR}}
			if e.Expected != "" {
				ev.Expected = strings.Replace(e.Expected, "sys_", "__x64_sys_", 1)
			} else {
				ev.Expected = "a system call handler in kernel text"
			}
			if m := ev.Addresses[0].Module; m != "" {
				ev.Modules = []string{m}
			}
			out = append(out, s.finding("syscall-table-hook", fmt.Sprintf("%s[%d] is redirected", table, e.NR), Critical, "T1014",
				fmt.Sprintf("%s/%d", table, e.NR),
				fmt.Sprintf("Entry %d of %s %s (%s). System call tables are read-only after boot: something wrote to it to intercept the call. Find the code it points at; treat the kernel as compromised.", e.NR, table, why, e.Symbol),
				ev))
		}
	}
	return out, errors.Join(errs...)
}

func syscallDispatch(s *Snapshot) ([]Finding, error) {
	var out []Finding
	for _, fn := range []string{"x64_sys_call", "ia32_sys_call", "x32_sys_call"} {
		if _, ok := s.K.Syms.Lookup(fn); !ok {
			continue
		}
		calls, err := s.K.CallTargets(fn)
		if err != nil {
			return out, err
		}
		for _, c := range calls {
			t := c.Target
			if !s.K.KernelText(t) {
				// the dispatcher's own ftrace site, when a tracer traces it
				if sc, _ := s.Sites(); sc.Excuses(c.At, uint64(c.Len), nil, 0) {
					continue
				}
			}
			if s.K.KernelText(t) {
				if sym, off, ok := s.K.Syms.Nearest(t); ok && off == 0 && (strings.Contains(sym.Name, "sys_") || strings.HasPrefix(sym.Name, "__x86_")) {
					continue
				}
			}
			a := s.addr("target", t)
			out = append(out, s.finding("syscall-dispatch-hook", fmt.Sprintf("%s calls code outside the system call handlers", fn), Critical, "T1014",
				fmt.Sprintf("%s/%#x", fn, t),
				fmt.Sprintf("The kernel's system call dispatcher %s has a call to %v (%s), which is not a system call handler in kernel text: its code was patched to divert system calls.", fn, linux.Addr(t), describe(a)),
				Evidence{Addresses: []AddrEvidence{a}, Expected: "calls to __x64_sys_* handlers", Found: describe(a)}))
		}
	}
	return out, nil
}

func describe(a AddrEvidence) string {
	switch {
	case a.Symbol != "":
		return a.Symbol
	case a.Module != "":
		return "module " + a.Module
	}
	return a.Address.String() + " (no symbol, no known module)"
}

func idtHandlers(s *Snapshot) ([]Finding, error) {
	idt, err := s.K.IDT()
	if err != nil {
		return nil, err
	}
	var out []Finding
	for _, g := range idt {
		// the reserved vectors keep the early boot handlers in init text
		if !g.Present || s.K.KernelText(uint64(g.Handler)) || s.K.InitText(uint64(g.Handler)) {
			continue
		}
		a := s.addr("handler", uint64(g.Handler))
		out = append(out, s.finding("idt-hook", fmt.Sprintf("Interrupt vector %d is handled outside the kernel", g.Vector), Critical, "T1014",
			fmt.Sprintf("%d", g.Vector),
			fmt.Sprintf("IDT vector %d points at %v (%s), outside the kernel's text. Interrupt and exception entry points never leave kernel text: the table was rewritten to intercept them.", g.Vector, g.Handler, describe(a)),
			Evidence{Addresses: []AddrEvidence{a}, Expected: "a handler in kernel text", Found: describe(a), Details: map[string]any{"vector": g.Vector}}))
	}
	return out, nil
}

// classify says where a callback lives: core kernel text, a listed
// module, or neither (a hidden module or injected code).
func (s *Snapshot) classify(a uint64) (where string, mod string, sev Severity) {
	if s.K.KernelText(a) {
		return "kernel", "", Info
	}
	mods, _ := s.Modules()
	if m, ok := linux.InModule(mods, a); ok {
		return "module", m.Name, Low
	}
	return "unknown", "", Critical
}

func kernelHooks(s *Snapshot) ([]Finding, error) {
	var out []Finding
	var errs []error
	ops, err := s.K.FtraceOps()
	if err != nil {
		errs = append(errs, fmt.Errorf("ftrace: %w", err))
	}
	for _, o := range ops {
		where, mod, sev := s.classify(uint64(o.Func))
		if where == "kernel" {
			continue
		}
		a := s.addr("callback", uint64(o.Func))
		ev := Evidence{Addresses: []AddrEvidence{a, {Role: "ftrace_ops", Address: o.Ops}}, Found: describe(a), Details: map[string]any{"attached_to": o.Attached}}
		if mod != "" {
			ev.Modules = []string{mod}
		}
		targets := "all functions"
		if len(o.Attached) > 0 {
			targets = strings.Join(o.Attached, ", ")
		}
		if where == "unknown" {
			out = append(out, s.finding("ftrace-hook", "An ftrace callback runs code of no known module", sev, "T1014", fmt.Sprintf("%#x", uint64(o.Func)),
				fmt.Sprintf("An ftrace_ops at %v calls %v on every call of %s; that code belongs to no loaded module in the module list (a hidden module, or injected code). Rootkits hook system calls this way.", o.Ops, o.Func, targets), ev))
		} else {
			out = append(out, s.finding("ftrace-hook", fmt.Sprintf("Module %s hooks kernel functions through ftrace", mod), sev, "T1014", fmt.Sprintf("%s/%#x", mod, uint64(o.Func)),
				fmt.Sprintf("Module %s registered an ftrace callback on %s. Tracing and live-patching tools do this; check that the module is expected.", mod, targets), ev))
		}
	}
	kps, err := s.K.Kprobes()
	if err != nil {
		errs = append(errs, fmt.Errorf("kprobes: %w", err))
	}
	for _, p := range kps {
		for _, h := range []linux.Addr{p.PreHandler, p.PostHandler} {
			if h == 0 {
				continue
			}
			where, mod, sev := s.classify(uint64(h))
			if where == "kernel" {
				continue
			}
			a := s.addr("handler", uint64(h))
			ev := Evidence{Addresses: []AddrEvidence{a, {Role: "probed", Address: p.Addr, Symbol: p.Symbol}}, Found: describe(a)}
			if mod != "" {
				ev.Modules = []string{mod}
			}
			what := "code of no known module"
			if mod != "" {
				what = "module " + mod
			}
			out = append(out, s.finding("kprobe-hook", fmt.Sprintf("A kprobe on %s runs %s", p.Symbol, what), sev, "T1014", fmt.Sprintf("%#x/%#x", uint64(p.Addr), uint64(h)),
				fmt.Sprintf("A kprobe on %s calls %v (%s).", p.Symbol, h, describe(a)), ev))
		}
	}
	progs, err := s.K.BPFPrograms()
	if err != nil {
		errs = append(errs, fmt.Errorf("BPF programs: %w", err))
	}
	for _, p := range progs {
		out = append(out, s.finding("bpf-program", fmt.Sprintf("eBPF program %q (%s) is loaded", p.Name, p.Type), Info, "T1014", fmt.Sprintf("%d", p.ID),
			fmt.Sprintf("eBPF program %d %q of type %s is loaded%s. eBPF is used by monitoring and networking tools and by rootkits; check that it is expected.", p.ID, p.Name, p.Type, map[bool]string{true: ", attached to " + p.Attach, false: ""}[p.Attach != ""]),
			Evidence{Addresses: []AddrEvidence{{Role: "bpf_prog", Address: p.Prog}}, Details: map[string]any{"id": p.ID, "type": p.Type, "attach": p.Attach}}))
	}
	return out, errors.Join(errs...)
}
