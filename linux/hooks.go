package linux

import (
	"fmt"
	"strings"
)

// FtraceOps is a registered ftrace callback.
type FtraceOps struct {
	Ops      Addr     `json:"ops"`
	Func     Addr     `json:"func"`
	Symbol   string   `json:"symbol"`
	Flags    uint64   `json:"flags"`
	Attached []string `json:"attached,omitempty"` // functions in its filter
	// Trampoline is the code ftrace made for this ops (a copy of
	// ftrace_caller that calls Func directly), which traced functions call.
	Trampoline     Addr   `json:"trampoline,omitempty"`
	TrampolineSize uint64 `json:"trampoline_size,omitempty"`
}

// limits for hook walks
const (
	maxFtraceOps  = 4096
	maxHashChain  = 1 << 16
	maxKprobes    = 1 << 16
	maxBPFProgs   = 1 << 16
	maxFtraceHash = 1 << 20
)

// FtraceOps walks ftrace_ops_list, the callbacks ftrace calls at traced
// functions, up to the ftrace_list_end sentinel.
func (k *Kernel) FtraceOps() ([]FtraceOps, error) {
	head, err := k.Symbol("ftrace_ops_list")
	if err != nil {
		return nil, err
	}
	end, err := k.Symbol("ftrace_list_end")
	if err != nil {
		return nil, err
	}
	opsT, err := k.Types.Struct("ftrace_ops")
	if err != nil {
		return nil, err
	}
	cur, err := k.Uint64(head)
	if err != nil {
		return nil, err
	}
	var out []FtraceOps
	seen := map[uint64]bool{}
	for cur != 0 && cur != end {
		if seen[cur] || len(out) > maxFtraceOps {
			return out, fmt.Errorf("ftrace_ops list loops at %#x: %w", cur, ErrListCorrupt)
		}
		seen[cur] = true
		v, err := k.ReadValue(opsT, cur)
		if err != nil {
			return out, fmt.Errorf("ftrace_ops at %#x: %w", cur, err)
		}
		f := &fields{v: v}
		fn := f.ptr("func")
		o := FtraceOps{Ops: Addr(cur), Func: Addr(fn), Symbol: k.Syms.Describe(fn), Flags: f.uint("flags")}
		if opsT.HasField("trampoline") {
			o.Trampoline, o.TrampolineSize = Addr(f.ptr("trampoline")), f.uint("trampoline_size")
		}
		if hp := f.ptr("func_hash"); hp != 0 {
			if fh, err := k.ReadField("ftrace_ops_hash", hp, "filter_hash"); err == nil {
				if p, _ := fh.Ptr(); p != 0 {
					o.Attached = k.ftraceHashFuncs(p)
				}
			}
		}
		out = append(out, o)
		cur = f.ptr("next")
	}
	return out, nil
}

// ftraceHashFuncs lists the functions in an ftrace_hash.
func (k *Kernel) ftraceHashFuncs(hash uint64) []string {
	h, err := k.Object("ftrace_hash", hash)
	if err != nil {
		return nil
	}
	f := &fields{v: h}
	bits := f.uint("size_bits")
	buckets := f.ptr("buckets")
	if bits > 20 || buckets == 0 {
		return nil
	}
	entT, err := k.Types.Struct("ftrace_func_entry")
	if err != nil {
		return nil
	}
	var out []string
	for i := uint64(0); i < 1<<bits && len(out) < maxFtraceHash; i++ {
		first, err := k.Uint64(buckets + 8*i)
		if err != nil {
			break
		}
		k.walkHlist(first, maxHashChain, func(node uint64) bool {
			e, err := k.ReadValue(entT, node) // hlist is the first member
			if err != nil {
				return false
			}
			ef := &fields{v: e}
			// a function's name (its ftrace site sits at the start, after endbr64)
			if sym, off, ok := k.Syms.Nearest(ef.uint("ip")); ok && off < 16 {
				out = append(out, sym.Name)
			} else {
				out = append(out, k.Syms.Describe(ef.uint("ip")))
			}
			return true
		})
	}
	return out
}

// walkHlist follows an hlist chain from its first node.
func (k *Kernel) walkHlist(first uint64, limit int, fn func(node uint64) bool) error {
	seen := map[uint64]bool{}
	for n := first; n != 0; {
		if seen[n] || len(seen) > limit {
			return fmt.Errorf("hlist loops at %#x: %w", n, ErrListCorrupt)
		}
		seen[n] = true
		if !fn(n) {
			return nil
		}
		next, err := k.Uint64(n) // hlist_node.next is the first word
		if err != nil {
			return err
		}
		n = next
	}
	return nil
}

// Kprobe is a registered kprobe.
type Kprobe struct {
	Probe       Addr   `json:"kprobe"`
	Addr        Addr   `json:"addr"`
	Symbol      string `json:"symbol"`
	PreHandler  Addr   `json:"pre_handler,omitempty"`
	PostHandler Addr   `json:"post_handler,omitempty"`
	Handler     string `json:"handler,omitempty"`
}

// Kprobes walks kprobe_table, the hash of registered kprobes.
func (k *Kernel) Kprobes() ([]Kprobe, error) {
	sym, ok := k.Syms.Get("kprobe_table")
	if !ok {
		return nil, fmt.Errorf("kernel symbol kprobe_table not found")
	}
	n := 64 // KPROBE_TABLE_SIZE; measured from the symbol table when possible
	if next, ok := k.Syms.Next(sym.Addr); ok {
		if d := int((next.Addr - sym.Addr) / 8); d > 0 && d <= 4096 {
			n = d
		}
	}
	kpT, err := k.Types.Struct("kprobe")
	if err != nil {
		return nil, err
	}
	hOff, err := kpT.FieldOffset("hlist")
	if err != nil {
		return nil, err
	}
	var out []Kprobe
	for i := 0; i < n; i++ {
		first, err := k.Uint64(sym.Addr + 8*uint64(i))
		if err != nil {
			return out, err
		}
		err = k.walkHlist(first, maxKprobes, func(node uint64) bool {
			v, err := k.ReadValue(kpT, node-hOff)
			if err != nil {
				return false
			}
			f := &fields{v: v}
			p := Kprobe{Probe: Addr(node - hOff), Addr: Addr(f.ptr("addr")), PreHandler: Addr(f.ptr("pre_handler")), PostHandler: Addr(f.ptr("post_handler"))}
			p.Symbol = k.Syms.Describe(uint64(p.Addr))
			if p.PreHandler != 0 {
				p.Handler = k.Syms.Describe(uint64(p.PreHandler))
			}
			out = append(out, p)
			return len(out) < maxKprobes
		})
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// BPFProg is a loaded eBPF program.
type BPFProg struct {
	Prog   Addr   `json:"prog"`
	ID     uint64 `json:"id"`
	Type   string `json:"type"`
	Name   string `json:"name"`
	Attach string `json:"attach,omitempty"`
}

// BPFPrograms lists loaded eBPF programs from prog_idr.
func (k *Kernel) BPFPrograms() ([]BPFProg, error) {
	idr, err := k.Symbol("prog_idr")
	if err != nil {
		return nil, err
	}
	idrT, err := k.Types.Struct("idr")
	if err != nil {
		return nil, err
	}
	off, err := idrT.FieldOffset("idr_rt.xa_head")
	if err != nil {
		return nil, err
	}
	head, err := k.Uint64(idr + off)
	if err != nil {
		return nil, err
	}
	progT, err := k.Types.Struct("bpf_prog")
	if err != nil {
		return nil, err
	}
	var out []BPFProg
	err = k.walkXArray(head, func(entry uint64) error {
		v, err := k.ReadValue(progT, entry)
		if err != nil {
			return nil
		}
		f := &fields{v: v}
		p := BPFProg{Prog: Addr(entry)}
		if tv, err := v.Field("type"); err == nil {
			x, _ := tv.Int()
			p.Type, _ = tv.Type.EnumName(x)
			p.Type = strings.ToLower(strings.TrimPrefix(p.Type, "BPF_PROG_TYPE_"))
		}
		if aux := f.ptr("aux"); aux != 0 {
			if a, err := k.Object("bpf_prog_aux", aux); err == nil {
				af := &fields{v: a}
				p.ID = af.uint("id")
				p.Name = af.str("name")
				if an := af.ptr("attach_func_name"); an != 0 {
					p.Attach, _ = k.ReadCString(an, 128)
				}
			}
		}
		out = append(out, p)
		if len(out) > maxBPFProgs {
			return fmt.Errorf("more than %d BPF programs", maxBPFProgs)
		}
		return nil
	})
	return out, err
}
