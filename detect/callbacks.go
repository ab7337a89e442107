package detect

import (
	"errors"
	"fmt"

	"github.com/vmwatch/vmwatch/linux"
)

// owner tells whose code an address is: the kernel's, a module's (with
// whether it was built outside the kernel's tree, and the module's own
// symbol for it), or nobody's.
type owner struct {
	where  string // kernel, module, unknown
	mod    *linux.Module
	symbol string
}

func (s *Snapshot) owner(a uint64) owner {
	if s.K.KernelText(a) {
		return owner{where: "kernel", symbol: s.K.Syms.Describe(a)}
	}
	mods, _ := s.Modules()
	if m, ok := linux.InModule(mods, a); ok {
		o := owner{where: "module", mod: &m}
		if sym, err := s.K.ModuleSymbol(m, a); err == nil {
			o.symbol = sym + " [" + m.Name + "]"
		}
		return o
	}
	return owner{where: "unknown"}
}

// evidence of a callback: its address, symbol and module.
func (o owner) evidence(role string, a uint64) AddrEvidence {
	e := AddrEvidence{Role: role, Address: linux.Addr(a), Symbol: o.symbol}
	if o.mod != nil {
		e.Module = o.mod.Name
	}
	return e
}

// kernelCallbacks reports netfilter hooks, notifier callbacks, terminal
// operations (tty drivers, ttys, line disciplines), the operations of
// /proc's entries, tracepoint probes, LSM hooks and perf event handlers whose
// code is outside the kernel and every listed module (critical: a hidden
// module or injected code) or in a module built outside the kernel's tree
// (high: the kernel's own netfilter and input code is in-tree).
func kernelCallbacks(s *Snapshot) ([]Finding, error) {
	var out []Finding
	hooks, hookErr := s.K.NetfilterHooks()
	for _, h := range hooks {
		o := s.owner(uint64(h.Func))
		if o.where == "kernel" || o.where == "module" && !o.mod.OutOfTree() {
			continue
		}
		ev := Evidence{Addresses: []AddrEvidence{o.evidence("hook", uint64(h.Func)), {Role: "nf_hook_entries", Address: h.Entries}},
			Details: map[string]any{"net_ns": h.NetNS, "family": h.Family, "hook": h.Hook}}
		point := fmt.Sprintf("%s %s (network namespace %d)", h.Family, h.Hook, h.NetNS)
		key := fmt.Sprintf("%d/%s/%s/%#x", h.NetNS, h.Family, h.Hook, uint64(h.Func))
		if o.where == "unknown" {
			ev.Found = describe(ev.Addresses[0])
			out = append(out, s.finding("netfilter-hook", "A netfilter hook runs code of no known module on "+point, Critical, "T1205.001", key,
				fmt.Sprintf("A netfilter hook on %s calls %v, code that belongs to no module in the module list (a hidden module, or injected code). It sees every packet: backdoors wait there for a magic packet.", point, h.Func), ev))
			continue
		}
		ev.Modules, ev.Found = []string{o.mod.Name}, describe(ev.Addresses[0])
		out = append(out, s.finding("netfilter-hook", fmt.Sprintf("Out-of-tree module %s hooks netfilter on %s", o.mod.Name, point), High, "T1205.001", key,
			fmt.Sprintf("Module %s, built outside the kernel's tree (taint %#x), registered a netfilter hook on %s that calls %s. A hook sees every packet: backdoors wait there for a magic packet, filters drop traffic. Check that the module is expected.", o.mod.Name, o.mod.Taints, point, describe(ev.Addresses[0])), ev))
	}
	nots, notErr := s.K.Notifiers()
	for _, n := range nots {
		o := s.owner(uint64(n.Func))
		if o.where == "kernel" || o.where == "module" && !o.mod.OutOfTree() {
			continue
		}
		ev := Evidence{Addresses: []AddrEvidence{o.evidence("callback", uint64(n.Func)), {Role: "notifier_block", Address: n.Block}},
			Details: map[string]any{"chain": n.Chain, "priority": n.Priority}}
		ev.Found = describe(ev.Addresses[0])
		attack, why := "T1547.006", "It runs on every event of the chain."
		if n.Chain == "keyboard" {
			attack, why = "T1056.001", "It sees every key pressed on the guest's consoles: keyloggers register here."
		}
		key := fmt.Sprintf("%s/%#x", n.Chain, uint64(n.Func))
		if o.where == "unknown" {
			out = append(out, s.finding("notifier-hook", fmt.Sprintf("A %s notifier runs code of no known module", n.Chain), Critical, attack, key,
				fmt.Sprintf("A callback on the %s notifier chain calls %v, code that belongs to no module in the module list (a hidden module, or injected code). %s", n.Chain, n.Func, why), ev))
			continue
		}
		ev.Modules = []string{o.mod.Name}
		out = append(out, s.finding("notifier-hook", fmt.Sprintf("Out-of-tree module %s is on the %s notifier chain", o.mod.Name, n.Chain), High, attack, key,
			fmt.Sprintf("Module %s, built outside the kernel's tree (taint %#x), registered %s on the %s notifier chain. %s", o.mod.Name, o.mod.Taints, describe(ev.Addresses[0]), n.Chain, why), ev))
	}
	ttys, ttyErr := s.K.TTYOps()
	out = append(out, s.opsFindings(ttys, opsKind{id: "tty-hook", attack: "T1056.001", what: "terminal operation",
		why: "Whoever owns a terminal's operations sees everything typed and printed on it: passwords included.", who: "Tty sniffers swap these tables."})...)
	procs, procErr := s.K.ProcOps()
	out = append(out, s.opsFindings(procs, opsKind{id: "proc-hook", attack: "T1014", what: "/proc operation", ownTableLow: true,
		why: "The kernel calls it to list or print the entry: whoever owns it decides what /proc shows.", who: "Rootkits swap these to hide connections from /proc/net/tcp and processes or files from listings."})...)
	tps, tpErr := s.K.Tracepoints()
	out = append(out, s.opsFindings(tps, opsKind{id: "tracepoint-hook", attack: "T1014", what: "tracepoint probe",
		why: "The kernel calls it at every hit of the tracepoint (every exec, every system call, every packet).", who: "Rootkits register probes here to watch the system without the ftrace or kprobe lists showing them."})...)
	lsms, lsmErr := s.K.LSMHooks()
	out = append(out, s.opsFindings(lsms, opsKind{id: "lsm-hook", attack: "T1014", what: "security hook",
		why: "The kernel asks it at every security decision of its kind (open a file, send a signal, load a module) and obeys its answer.", who: "Rootkits add hooks here to protect their processes and files, or to watch every decision."})...)
	perfs, perfErr := s.K.PerfEvents()
	out = append(out, s.opsFindings(perfs, opsKind{id: "perf-hook", attack: "T1014", what: "perf event handler",
		why: "The kernel calls it at every overflow of the event: a sampling timer on every CPU, or a hardware breakpoint on a kernel address.", who: "Rootkits and keyloggers create kernel counters to run code periodically or on a watched address without a hook in the code."})...)
	return out, errors.Join(hookErr, notErr, ttyErr, procErr, tpErr, lsmErr, perfErr)
}

// opsKind says what a family of operations tables is, for its findings.
type opsKind struct {
	id, attack, what string
	why, who         string // what owning it gives; who swaps it
	// ownTableLow: a function in the same module as the table holding it
	// is that module's own entry (a driver's /proc files), low
	ownTableLow bool
}

// opsFindings reports each function pointer of operations tables that is
// in no known code (critical) or in an out-of-tree module (high).
func (s *Snapshot) opsFindings(ptrs []linux.OpsPointer, kind opsKind) []Finding {
	var out []Finding
	for _, p := range ptrs {
		o := s.owner(uint64(p.Func))
		if o.where == "kernel" || o.where == "module" && !o.mod.OutOfTree() {
			continue
		}
		ev := Evidence{Addresses: []AddrEvidence{o.evidence("function", uint64(p.Func)), {Role: p.Struct, Address: p.Table}},
			Details: map[string]any{"object": p.Object, "struct": p.Struct, "member": p.Member}}
		ev.Found = describe(ev.Addresses[0])
		key := fmt.Sprintf("%s/%s/%s/%#x", p.Object, p.Struct, p.Member, uint64(p.Func))
		what := fmt.Sprintf("%s of %s (%s)", p.Member, p.Object, p.Struct)
		if o.where == "unknown" {
			out = append(out, s.finding(kind.id, fmt.Sprintf("A %s runs code of no known module: %s", kind.what, what), Critical, kind.attack, key,
				fmt.Sprintf("The %s calls %v, code that belongs to no module in the module list (a hidden module, or injected code). %s", what, p.Func, kind.why), ev))
			continue
		}
		ev.Modules = []string{o.mod.Name}
		if t := s.owner(uint64(p.Table)); kind.ownTableLow && t.mod != nil && t.mod.Name == o.mod.Name {
			out = append(out, s.finding(kind.id, fmt.Sprintf("Out-of-tree module %s has its own %s: %s", o.mod.Name, kind.what, what), Low, kind.attack, key,
				fmt.Sprintf("Module %s, built outside the kernel's tree (taint %#x), provides the %s from its own table: it calls %s. Drivers outside the tree (DKMS) create their own entries; a module that swaps a kernel entry's table for its own copy looks the same. Check that the module is expected.", o.mod.Name, o.mod.Taints, what, describe(ev.Addresses[0])), ev))
			continue
		}
		out = append(out, s.finding(kind.id, fmt.Sprintf("Out-of-tree module %s owns a %s: %s", o.mod.Name, kind.what, what), High, kind.attack, key,
			fmt.Sprintf("Module %s, built outside the kernel's tree (taint %#x), owns the %s: it calls %s. %s %s", o.mod.Name, o.mod.Taints, what, describe(ev.Addresses[0]), kind.why, kind.who), ev))
	}
	return out
}
