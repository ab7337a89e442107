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

// kernelCallbacks reports netfilter hooks, notifier callbacks and terminal
// operations (tty drivers, ttys, line disciplines) whose
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
	for _, p := range ttys {
		o := s.owner(uint64(p.Func))
		if o.where == "kernel" || o.where == "module" && !o.mod.OutOfTree() {
			continue
		}
		ev := Evidence{Addresses: []AddrEvidence{o.evidence("function", uint64(p.Func)), {Role: p.Struct, Address: p.Table}},
			Details: map[string]any{"object": p.Object, "struct": p.Struct, "member": p.Member}}
		ev.Found = describe(ev.Addresses[0])
		key := fmt.Sprintf("%s/%s/%#x", p.Object, p.Member, uint64(p.Func))
		what := fmt.Sprintf("%s of %s (%s)", p.Member, p.Object, p.Struct)
		if o.where == "unknown" {
			out = append(out, s.finding("tty-hook", "A terminal operation runs code of no known module: "+what, Critical, "T1056.001", key,
				fmt.Sprintf("The %s calls %v, code that belongs to no module in the module list (a hidden module, or injected code). Whoever owns a terminal's operations sees everything typed and printed on it: passwords included.", what, p.Func), ev))
			continue
		}
		ev.Modules = []string{o.mod.Name}
		out = append(out, s.finding("tty-hook", fmt.Sprintf("Out-of-tree module %s replaced a terminal operation: %s", o.mod.Name, what), High, "T1056.001", key,
			fmt.Sprintf("Module %s, built outside the kernel's tree (taint %#x), owns the %s: it calls %s. Whoever owns a terminal's operations sees everything typed and printed on it: passwords included. Tty sniffers swap these tables.", o.mod.Name, o.mod.Taints, what, describe(ev.Addresses[0])), ev))
	}
	return out, errors.Join(hookErr, notErr, ttyErr)
}
