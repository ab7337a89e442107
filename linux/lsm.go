package linux

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// The LSM hooks: the functions the kernel calls at each security decision
// (open a file, kill a task, load a module, ...). Until Linux 6.11 each
// hook is a list in security_hook_heads of security_hook_list entries;
// from 6.12 each hook has MAX_LSM_COUNT static call slots in
// static_calls_table, each with its key (whose func is the call's target)
// and the security_hook_list it was set from. A rootkit that adds its own
// entry, or points a slot elsewhere, decides who may do what, and sees
// every decision.

const maxLSMEntries = 1 << 12

// LSMHooks reads every registered LSM hook function. Object is "lsm hook
// NAME" with the LSM's name; Struct "security_hook_list" for the function
// an entry registered, "static_call_key" for a slot's call target when it
// differs from its entry's function.
func (k *Kernel) LSMHooks() ([]OpsPointer, error) {
	if a, ok := k.Syms.Lookup("static_calls_table"); ok {
		if _, err := k.Types.Struct("lsm_static_calls_table"); err == nil {
			return k.lsmStaticCalls(a)
		}
	}
	a, err := k.Symbol("security_hook_heads")
	if err != nil {
		return nil, err
	}
	return k.lsmHeads(a)
}

// lsmName reads the name an LSM registered its hooks with.
func (k *Kernel) lsmName(f *fields) string {
	np := uint64(0)
	if f.v.Type.HasField("lsmid") {
		if id := f.ptr("lsmid"); id != 0 {
			if v, err := k.ReadField("lsm_id", id, "name"); err == nil {
				np, _ = v.Ptr()
			}
		}
	} else if f.v.Type.HasField("lsm") {
		np = f.ptr("lsm")
	}
	if np == 0 {
		return "?"
	}
	s, err := k.ReadCString(np, 64)
	if err != nil {
		return "?"
	}
	return safeName(s)
}

// lsmTable reads the table of hooks (structName at addr) and gives the
// type of its entries and where an entry's function is.
func (k *Kernel) lsmTable(structName string, addr uint64) (Value, *Type, uint64, error) {
	t, err := k.Types.Struct(structName)
	if err != nil {
		return Value{}, nil, 0, err
	}
	hlT, err := k.Types.Struct("security_hook_list")
	if err != nil {
		return Value{}, nil, 0, err
	}
	hookOff, err := hlT.FieldOffset("hook")
	if err != nil {
		return Value{}, nil, 0, err
	}
	v, err := k.ReadValue(t, addr)
	return v, hlT, hookOff, err
}

// lsmHeads walks each hlist of security_hook_heads (Linux up to 6.11).
func (k *Kernel) lsmHeads(heads uint64) ([]OpsPointer, error) {
	hv, hlT, hookOff, err := k.lsmTable("security_hook_heads", heads)
	if err != nil {
		return nil, err
	}
	ht := hv.Type
	listOff, err := hlT.FieldOffset("list")
	if err != nil {
		return nil, err
	}
	var out []OpsPointer
	var errs []string
	total := 0
	for _, m := range ht.Members {
		hf := &fields{v: hv}
		p := hf.ptr(m.Name + ".first")
		seen := map[uint64]bool{}
		for p != 0 {
			p -= listOff // the hlist_node is the entry's list member
			if seen[p] || total >= maxLSMEntries {
				errs = append(errs, fmt.Sprintf("%s: entry %#x reached twice or more than %d entries: %v", m.Name, p, maxLSMEntries, ErrListCorrupt))
				break
			}
			seen[p] = true
			total++
			v, err := k.ReadValue(hlT, p)
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", m.Name, err))
				break
			}
			f := &fields{v: v}
			fn := hookAt(v, hookOff)
			next := f.ptr("list.next")
			if len(f.errs) > 0 {
				errs = append(errs, fmt.Sprintf("%s: %s", m.Name, strings.Join(f.errs, "; ")))
				break
			}
			out = append(out, OpsPointer{Object: fmt.Sprintf("lsm hook %s (%s)", m.Name, k.lsmName(f)), Struct: "security_hook_list",
				Member: m.Name, Func: Addr(fn), Table: Addr(p)})
			p = next
		}
		if len(errs) > 16 {
			break
		}
	}
	if len(errs) > 0 {
		return out, fmt.Errorf("LSM hooks: %s", strings.Join(errs, "; "))
	}
	return out, nil
}

// lsmStaticCalls reads each slot of static_calls_table (Linux 6.12 on).
func (k *Kernel) lsmStaticCalls(table uint64) ([]OpsPointer, error) {
	tv, hlT, hookOff, err := k.lsmTable("lsm_static_calls_table", table)
	if err != nil {
		return nil, err
	}
	tt := tv.Type
	var out []OpsPointer
	var errs []string
	note := func(s string) {
		if len(errs) < 16 {
			errs = append(errs, s)
		}
	}
	for _, m := range tt.Members {
		arr, err := tv.Field(m.Name)
		if err != nil || arr.Type.Kind != KindArray {
			continue
		}
		for i := 0; i < int(min(arr.Type.Len, 64)); i++ {
			sv, err := arr.Index(i)
			if err != nil {
				note(fmt.Sprintf("%s[%d]: %v", m.Name, i, err))
				break
			}
			sf := &fields{v: sv}
			key, hl := sf.ptr("key"), sf.ptr("hl")
			object := fmt.Sprintf("lsm hook %s slot %d", m.Name, i)
			var fn uint64
			if hl != 0 {
				v, err := k.ReadValue(hlT, hl)
				if err != nil {
					note(fmt.Sprintf("%s: %v", object, err))
					continue
				}
				f := &fields{v: v}
				object = fmt.Sprintf("lsm hook %s (%s)", m.Name, k.lsmName(f))
				if fn = hookAt(v, hookOff); fn != 0 {
					out = append(out, OpsPointer{Object: object, Struct: "security_hook_list", Member: m.Name, Func: Addr(fn), Table: Addr(hl)})
				}
			}
			if key == 0 {
				continue
			}
			kv, err := k.ReadField("static_call_key", key, "func")
			if err != nil {
				note(fmt.Sprintf("%s: %v", object, err))
				continue
			}
			if target, _ := kv.Ptr(); target != 0 && target != fn {
				out = append(out, OpsPointer{Object: object, Struct: "static_call_key", Member: m.Name, Func: Addr(target), Table: Addr(key)})
			}
		}
	}
	if len(errs) > 0 {
		return out, fmt.Errorf("LSM static calls: %s", strings.Join(errs, "; "))
	}
	return out, nil
}

// hookAt reads the function of a security_hook_list (its hook union holds
// one pointer, whatever the hook).
func hookAt(v Value, off uint64) uint64 {
	b := v.Bytes()
	if off+8 > uint64(len(b)) {
		return 0
	}
	return binary.LittleEndian.Uint64(b[off:])
}
