package linux

import (
	"fmt"
	"strings"
)

// Kernel callbacks that rootkits register instead of patching code:
// netfilter hooks (a magic-packet backdoor sees every packet) and notifier
// chains (a keylogger on the keyboard chain, persistence on the module
// chain). Each is a list of function pointers the kernel calls; where they
// point tells whose code runs.

// NetfilterHook is one hook function registered on a hook point of a
// network namespace.
type NetfilterHook struct {
	NetNS  uint64 `json:"net_ns"`
	Family string `json:"family"` // ipv4, ipv6, arp, bridge
	Hook   string `json:"hook"`   // PRE_ROUTING, LOCAL_IN, FORWARD, LOCAL_OUT, POST_ROUTING
	Func   Addr   `json:"func"`
	// Entries is where the hook point's nf_hook_entries are.
	Entries Addr `json:"entries"`
}

var nfHookNames = []string{"PRE_ROUTING", "LOCAL_IN", "FORWARD", "LOCAL_OUT", "POST_ROUTING"}
var nfArpHookNames = []string{"IN", "OUT", "FORWARD"}

// maxHookEntries bounds a hook point's entries (the kernel's limit is
// MAX_HOOK_COUNT, 1024).
const maxHookEntries = 1024

// NetfilterHooks reads every network namespace's hook points (struct
// netns_nf: hooks_ipv4, hooks_ipv6, hooks_arp, hooks_bridge).
func (k *Kernel) NetfilterHooks() ([]NetfilterHook, error) {
	nets, walkErr := k.netNamespaces()
	if nets == nil && walkErr != nil {
		return nil, walkErr
	}
	netT, err := k.Types.Struct("net")
	if err != nil {
		return nil, err
	}
	nsr := k.newNSReader()
	var out []NetfilterHook
	var errs []string
	seen := map[uint64]bool{} // a table on two hook points is read once
	for _, n := range nets {
		v, err := k.ReadValue(netT, n)
		if err != nil {
			if len(errs) < 16 {
				errs = append(errs, err.Error())
			}
			continue
		}
		inum, _ := nsr.nsInum("net", n)
		for _, fam := range []struct{ field, name string }{{"hooks_ipv4", "ipv4"}, {"hooks_ipv6", "ipv6"}, {"hooks_arp", "arp"}, {"hooks_bridge", "bridge"}} {
			arr, err := v.Field("nf." + fam.field)
			if err != nil {
				continue // a family the kernel was built without
			}
			names := nfHookNames
			if fam.name == "arp" {
				names = nfArpHookNames
			}
			for i := 0; i < int(arr.Type.Len); i++ {
				e, err := arr.Index(i)
				if err != nil {
					break
				}
				p, _ := e.Ptr()
				if p == 0 {
					continue
				}
				if seen[p] {
					if len(errs) < 16 {
						errs = append(errs, fmt.Sprintf("nf_hook_entries %#x is on two hook points: read once", p))
					}
					continue
				}
				seen[p] = true
				hook := fmt.Sprint(i)
				if i < len(names) {
					hook = names[i]
				}
				fns, err := k.hookEntries(p)
				if err != nil && len(errs) < 16 {
					errs = append(errs, fmt.Sprintf("net namespace %d %s %s: %v", inum, fam.name, hook, err))
				}
				for _, fn := range fns {
					out = append(out, NetfilterHook{NetNS: inum, Family: fam.name, Hook: hook, Func: Addr(fn), Entries: Addr(p)})
				}
			}
		}
	}
	if walkErr != nil {
		errs = append(errs, walkErr.Error())
	}
	if len(errs) > 0 {
		return out, fmt.Errorf("netfilter hooks: %s", strings.Join(errs, "; "))
	}
	return out, nil
}

// hookEntries reads the hook functions of one nf_hook_entries.
func (k *Kernel) hookEntries(p uint64) ([]uint64, error) {
	et, err := k.Types.Struct("nf_hook_entries")
	if err != nil {
		return nil, err
	}
	nv, err := k.ReadField("nf_hook_entries", p, "num_hook_entries")
	if err != nil {
		return nil, err
	}
	n, _ := nv.Uint()
	if n > maxHookEntries {
		return nil, fmt.Errorf("nf_hook_entries %#x: %d entries, over the kernel's %d", p, n, maxHookEntries)
	}
	hooksOff, err := et.FieldOffset("hooks")
	if err != nil {
		return nil, err
	}
	entT, err := k.Types.Struct("nf_hook_entry")
	if err != nil {
		return nil, err
	}
	var out []uint64
	for i := uint64(0); i < n; i++ {
		f, err := k.ReadField("nf_hook_entry", p+hooksOff+i*entT.Size, "hook")
		if err != nil {
			return out, err
		}
		fn, _ := f.Ptr()
		out = append(out, fn)
	}
	return out, nil
}

// NotifierCallback is one callback on a notifier chain.
type NotifierCallback struct {
	Chain    string `json:"chain"`
	Func     Addr   `json:"func"`
	Priority int64  `json:"priority"`
	Block    Addr   `json:"notifier_block"`
}

// notifierChains are the chains that are read, with the type of their
// head (atomic, blocking or raw notifier head).
var notifierChains = []struct{ name, sym, typ string }{
	{"keyboard", "keyboard_notifier_list", "atomic_notifier_head"},
	{"vt", "vt_notifier_list", "atomic_notifier_head"},
	{"module", "module_notify_list", "blocking_notifier_head"},
	{"netdevice", "netdev_chain", "raw_notifier_head"},
	{"reboot", "reboot_notifier_list", "blocking_notifier_head"},
	{"panic", "panic_notifier_list", "atomic_notifier_head"},
}

const maxNotifiers = 4096

// Notifiers reads the callbacks of the keyboard, vt, module, netdevice,
// reboot and panic notifier chains (those the kernel has).
func (k *Kernel) Notifiers() ([]NotifierCallback, error) {
	nbT, err := k.Types.Struct("notifier_block")
	if err != nil {
		return nil, err
	}
	var out []NotifierCallback
	var errs []string
	for _, c := range notifierChains {
		a, ok := k.Syms.Lookup(c.sym)
		if !ok {
			continue
		}
		hv, err := k.ReadField(c.typ, a, "head")
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", c.sym, err))
			continue
		}
		p, _ := hv.Ptr()
		seen := map[uint64]bool{}
		for p != 0 {
			if seen[p] || len(seen) >= maxNotifiers {
				errs = append(errs, fmt.Sprintf("%s: notifier_block %#x reached twice or more than %d: %v", c.sym, p, maxNotifiers, ErrListCorrupt))
				break
			}
			seen[p] = true
			v, err := k.ReadValue(nbT, p)
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", c.sym, err))
				break
			}
			f := &fields{v: v}
			cb := NotifierCallback{Chain: c.name, Func: Addr(f.ptr("notifier_call")), Priority: f.int("priority"), Block: Addr(p)}
			next := f.ptr("next")
			if len(f.errs) > 0 {
				errs = append(errs, fmt.Sprintf("%s: notifier_block %#x: %s", c.sym, p, strings.Join(f.errs, "; ")))
				break
			}
			out = append(out, cb)
			p = next
		}
	}
	if len(errs) > 0 {
		return out, fmt.Errorf("notifier chains: %s", strings.Join(errs, "; "))
	}
	return out, nil
}
