package linux

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// Tracepoints: each struct tracepoint of the kernel and of every module,
// with the probes registered on it (tracepoint->funcs, an array ended by
// a NULL func), the function its static call jumps to, and its
// regfunc/unregfunc. The kernel's own probes are trace_event_raw_event_*,
// perf_trace_* and __bpf_trace_* in kernel text; a rootkit that watches
// every exec or hides from tracing registers its own probe here
// (tracepoint_probe_register), which ftrace does not list.

const (
	maxTracepoints = 1 << 15
	maxTPProbes    = 256
)

// Tracepoints reads the probes of every tracepoint. Object is
// "tracepoint NAME" (with " [module]" for a module's tracepoint), Struct
// "tracepoint_func" for a probe, "static_call_key" for the static call's
// target, "tracepoint" for regfunc and unregfunc.
func (k *Kernel) Tracepoints() ([]OpsPointer, error) {
	tpT, err := k.Types.Struct("tracepoint")
	if err != nil {
		return nil, err
	}
	var errs []string
	note := func(err error) {
		if len(errs) < 16 {
			errs = append(errs, err.Error())
		}
	}
	type tp struct {
		addr      uint64
		name, mod string
	}
	var tps []tp
	// the kernel's tracepoints are its __tracepoint_NAME symbols
	for _, s := range k.Syms.All() {
		if strings.HasPrefix(s.Name, "__tracepoint_") && len(tps) < maxTracepoints {
			tps = append(tps, tp{addr: s.Addr, name: strings.TrimPrefix(s.Name, "__tracepoint_")})
		}
	}
	mods, modErr := k.Modules()
	if modErr != nil {
		note(modErr)
	}
	for _, m := range mods {
		addrs, err := k.moduleTracepoints(uint64(m.Addr))
		if err != nil {
			note(fmt.Errorf("module %s: %w", m.Name, err))
		}
		for _, a := range addrs {
			if len(tps) < maxTracepoints {
				tps = append(tps, tp{addr: a, mod: m.Name})
			}
		}
	}
	var out []OpsPointer
	funcT, _ := k.Types.Struct("tracepoint_func")
	seenKey := map[uint64]bool{}
	// a module's own tracepoint calls into that module: its iterator,
	// regfunc and unregfunc are not hooks
	own := func(mod string, p uint64) bool {
		m, ok := InModule(mods, p)
		return mod != "" && ok && m.Name == mod
	}
	for _, t := range tps {
		if len(out) >= maxTTYPointers {
			note(fmt.Errorf("more than %d function pointers: the rest not read", maxTTYPointers))
			break
		}
		v, err := k.ReadValue(tpT, t.addr)
		if err != nil {
			note(fmt.Errorf("tracepoint at %#x: %w", t.addr, err))
			continue
		}
		f := &fields{v: v}
		name := "?"
		if np := f.ptr("name"); np != 0 {
			if s, err := k.ReadCString(np, 128); err == nil {
				name = safeName(s)
			}
		}
		// a __tracepoint_ symbol of another name is no tracepoint
		if t.name != "" && name != t.name {
			continue
		}
		object := "tracepoint " + name
		if t.mod != "" {
			object += " [" + t.mod + "]"
		}
		for _, fn := range []string{"regfunc", "unregfunc"} {
			if !tpT.HasField(fn) {
				continue // in tracepoint->ext from Linux 6.13
			}
			if p := f.ptr(fn); p != 0 && !own(t.mod, p) {
				out = append(out, OpsPointer{Object: object, Struct: "tracepoint", Member: fn, Func: Addr(p), Table: Addr(t.addr)})
			}
		}
		funcs, key := f.ptr("funcs"), f.ptr("static_call_key")
		iterator := uint64(0)
		if tpT.HasField("iterator") {
			iterator = f.ptr("iterator")
		}
		if len(f.errs) > 0 {
			note(fmt.Errorf("%s: %s", object, strings.Join(f.errs, "; ")))
		}
		probes := map[uint64]bool{}
		for i := uint64(0); funcs != 0 && funcT != nil; i++ {
			if i >= maxTPProbes {
				note(fmt.Errorf("%s: more than %d probes: the rest not read", object, maxTPProbes))
				break
			}
			pv, err := k.ReadField("tracepoint_func", funcs+i*funcT.Size, "func")
			if err != nil {
				note(fmt.Errorf("%s: probe %d: %w", object, i, err))
				break
			}
			p, _ := pv.Ptr()
			if p == 0 {
				break
			}
			probes[p] = true
			out = append(out, OpsPointer{Object: object, Struct: "tracepoint_func", Member: "func", Func: Addr(p), Table: Addr(funcs)})
		}
		// with one probe the static call jumps straight to it, with more to
		// the iterator; another target is a static call redirected
		if key != 0 && !seenKey[key] {
			seenKey[key] = true
			if kv, err := k.ReadField("static_call_key", key, "func"); err == nil {
				if p, _ := kv.Ptr(); p != 0 && !probes[p] && p != iterator && !own(t.mod, p) {
					out = append(out, OpsPointer{Object: object, Struct: "static_call_key", Member: "func", Func: Addr(p), Table: Addr(key)})
				}
			}
		}
	}
	if len(errs) > 0 {
		return out, fmt.Errorf("tracepoints: %s", strings.Join(errs, "; "))
	}
	return out, nil
}

// moduleTracepoints reads mod->tracepoints_ptrs: with PREL32 relocations
// (x86-64) each entry is a 32-bit offset from itself, else a pointer.
func (k *Kernel) moduleTracepoints(mod uint64) ([]uint64, error) {
	mt, err := k.Types.Struct("module")
	if err != nil {
		return nil, err
	}
	pm, ok := mt.Field("tracepoints_ptrs")
	if !ok {
		return nil, nil // a kernel without tracepoints
	}
	v, err := k.ReadValue(mt, mod)
	if err != nil {
		return nil, err
	}
	f := &fields{v: v}
	ptrs, n := f.ptr("tracepoints_ptrs"), f.uint("num_tracepoints")
	if len(f.errs) > 0 {
		return nil, fmt.Errorf("%s", strings.Join(f.errs, "; "))
	}
	if ptrs == 0 || n == 0 {
		return nil, nil
	}
	if n > maxTracepoints {
		return nil, fmt.Errorf("%d tracepoints, over %d", n, maxTracepoints)
	}
	size := uint64(8)
	if e := pm.Type.Elem(); e != nil && e.Size == 4 {
		size = 4
	}
	buf := make([]byte, n*size)
	if _, err := k.AS.ReadAt(buf, int64(ptrs)); err != nil {
		return nil, fmt.Errorf("tracepoints_ptrs at %#x: %w", ptrs, err)
	}
	out := make([]uint64, 0, n)
	for i := uint64(0); i < n; i++ {
		if size == 4 {
			off := int32(binary.LittleEndian.Uint32(buf[i*4:]))
			out = append(out, ptrs+i*4+uint64(int64(off)))
		} else {
			out = append(out, binary.LittleEndian.Uint64(buf[i*8:]))
		}
	}
	return out, nil
}
