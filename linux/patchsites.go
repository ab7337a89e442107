package linux

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sort"
	"strings"
)

// PatchSite is a place in kernel text the kernel itself rewrites at run
// time: jump labels (static keys), ftrace call sites, static calls and
// kprobes. Integrity checks must not call a change there an attack.
type PatchSite struct {
	Addr uint64
	Len  uint64
	Kind string
}

// PatchSites collects the kernel's run-time patch sites from its own
// tables, sorted by address; the caller must not modify the slice. The
// sites in the kernel image (jump labels, static calls, ftrace call sites,
// trampolines) are fixed at build time: they are read once per kernel, so
// a rootkit that later edits those tables cannot declare its patch one.
// Kprobes come and go and are read on every call.
func (k *Kernel) PatchSites() ([]PatchSite, error) {
	k.sitesMu.Lock()
	if k.sites == nil {
		sites, complete, err := k.imageSites()
		if err != nil || !complete {
			k.sitesMu.Unlock()
			return sites, err // not kept: read again next time
		}
		k.sites = sites
	}
	sites := k.sites
	k.sitesMu.Unlock()
	kps, err := k.Kprobes()
	if err != nil || len(kps) == 0 {
		return sites, nil
	}
	out := make([]PatchSite, 0, len(sites)+len(kps))
	out = append(out, sites...)
	for _, p := range kps {
		out = append(out, PatchSite{uint64(p.Addr), 5, "kprobe"})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr < out[j].Addr })
	return out, nil
}

// imageSites reads the patch sites inside the kernel image; complete is
// false while the kernel is still booting (its runtime constants unset).
func (k *Kernel) imageSites() (sites []PatchSite, complete bool, err error) {
	var out []PatchSite
	var firstErr error
	note := func(err error) {
		if err != nil && firstErr == nil {
			firstErr = err
		}
	}
	js, err := k.relativeSites("__start___jump_table", "__stop___jump_table", "jump_entry", "code", "jump label", 5)
	note(err)
	out = append(out, js...)
	sc, err := k.relativeSites("__start_static_call_sites", "__stop_static_call_sites", "static_call_site", "addr", "static call", 5)
	note(err)
	out = append(out, sc...)
	fs, err := k.ftraceSites()
	note(err)
	for _, s := range fs { // module call sites are outside the image
		if s.Addr >= k.Loc.TextStart && s.Addr < k.Loc.ImageEnd {
			out = append(out, s)
		}
	}
	// static call trampolines and BPF dispatchers are rewritten whole
	for _, s := range k.Syms.All() {
		if strings.HasPrefix(s.Name, "__SCT__") || strings.HasPrefix(s.Name, "bpf_dispatcher_") {
			size := uint64(64)
			if next, ok := k.Syms.Next(s.Addr); ok && next.Addr-s.Addr < 1<<16 {
				size = next.Addr - s.Addr
			}
			out = append(out, PatchSite{s.Addr, size, "trampoline"})
		}
	}
	rc, complete, err := k.runtimeConstSites()
	note(err)
	out = append(out, rc...)
	sort.Slice(out, func(i, j int) bool { return out[i].Addr < out[j].Addr })
	return out, complete, firstErr
}

// runtimeConstPtrs are the variables whose value Linux 6.11+ patches into
// instructions at boot (runtime_const_ptr: "movabs $VALUE, %reg"). The
// values differ per boot (they point into allocated memory).
var runtimeConstPtrs = []string{"dentry_hashtable"}

// runtimeConstSites finds the instructions that carry a runtime constant:
// a REX.W mov whose 64-bit immediate is the variable's current value. The
// kernel's table of them (runtime_ptr_* sections) has no symbols in
// kallsyms. complete is false when a variable is not set yet.
func (k *Kernel) runtimeConstSites() ([]PatchSite, bool, error) {
	var vals [][]byte
	for _, name := range runtimeConstPtrs {
		a, ok := k.Syms.Lookup(name)
		if !ok {
			continue
		}
		v, err := k.Uint64(a)
		if err != nil {
			return nil, false, err
		}
		if v == 0 {
			return nil, false, nil
		}
		vals = append(vals, binary.LittleEndian.AppendUint64(nil, v))
	}
	if len(vals) == 0 {
		return nil, true, nil
	}
	start, text, err := k.TextBytes()
	if err != nil {
		return nil, false, err
	}
	defer ReturnBuffer(text)
	var out []PatchSite
	for _, v := range vals {
		for off := 0; ; {
			i := bytes.Index(text[off:], v)
			if i < 0 {
				break
			}
			at := off + i
			if at >= 2 && text[at-2]&0xfe == 0x48 && text[at-1]&0xf8 == 0xb8 && len(out) < 4096 {
				out = append(out, PatchSite{start + uint64(at-2), 10, "runtime constant"})
			}
			off = at + 1
		}
	}
	return out, true, nil
}

// relativeSites reads a table of entries whose field holds a 32-bit offset
// from the field's own address to the patched instruction.
func (k *Kernel) relativeSites(startSym, stopSym, typ, field, kind string, n uint64) ([]PatchSite, error) {
	start, ok1 := k.Syms.Lookup(startSym)
	stop, ok2 := k.Syms.Lookup(stopSym)
	if !ok1 || !ok2 {
		return nil, nil // not built in (e.g. no static calls)
	}
	t, err := k.Types.Struct(typ)
	if err != nil {
		return nil, err
	}
	off, err := t.FieldOffset(field)
	if err != nil {
		return nil, err
	}
	if stop < start || stop-start > 64<<20 || t.Size == 0 {
		return nil, fmt.Errorf("%s: implausible table %#x-%#x", typ, start, stop)
	}
	b := make([]byte, stop-start)
	if _, err := k.AS.ReadAt(b, int64(start)); err != nil {
		return nil, fmt.Errorf("%s table: %w", typ, err)
	}
	var out []PatchSite
	for p := uint64(0); p+t.Size <= uint64(len(b)); p += t.Size {
		rel := int32(binary.LittleEndian.Uint32(b[p+off:]))
		a := start + p + off + uint64(int64(rel))
		out = append(out, PatchSite{a &^ 0, n, kind})
	}
	return out, nil
}

// maxFtraceRecords bounds the ftrace record walk.
const maxFtraceRecords = 1 << 20

// ftraceSites lists ftrace's call sites (struct dyn_ftrace records in the
// ftrace_pages list): each is a 5-byte call or NOP at a function's start.
func (k *Kernel) ftraceSites() ([]PatchSite, error) {
	head, ok := k.Syms.Lookup("ftrace_pages_start")
	if !ok {
		return nil, nil
	}
	pgT, err := k.Types.Struct("ftrace_page")
	if err != nil {
		return nil, err
	}
	recT, err := k.Types.Struct("dyn_ftrace")
	if err != nil {
		return nil, err
	}
	ipOff, err := recT.FieldOffset("ip")
	if err != nil {
		return nil, err
	}
	pg, err := k.Uint64(head)
	if err != nil {
		return nil, err
	}
	var out []PatchSite
	seen := map[uint64]bool{}
	for pg != 0 {
		if seen[pg] || len(out) > maxFtraceRecords {
			return out, fmt.Errorf("ftrace pages loop at %#x: %w", pg, ErrListCorrupt)
		}
		seen[pg] = true
		v, err := k.ReadValue(pgT, pg)
		if err != nil {
			return out, err
		}
		f := &fields{v: v}
		recs, idx := f.ptr("records"), f.uint("index")
		if idx > 1<<16 {
			return out, fmt.Errorf("ftrace page %#x claims %d records", pg, idx)
		}
		if idx > 0 && recs != 0 {
			b := make([]byte, idx*recT.Size)
			if _, err := k.AS.ReadAt(b, int64(recs)); err == nil {
				for i := uint64(0); i < idx; i++ {
					ip := binary.LittleEndian.Uint64(b[i*recT.Size+ipOff:])
					out = append(out, PatchSite{ip, 5, "ftrace"})
				}
			}
		}
		pg = f.ptr("next")
	}
	return out, nil
}

// Covered reports whether [a, a+n) lies within one of the sorted sites.
func Covered(sites []PatchSite, a, n uint64) bool {
	i := sort.Search(len(sites), func(i int) bool { return sites[i].Addr+sites[i].Len > a })
	for ; i < len(sites) && sites[i].Addr <= a; i++ {
		if a+n <= sites[i].Addr+sites[i].Len {
			return true
		}
	}
	return false
}

// TextBytes reads the core kernel text [_stext, _etext) from physical
// memory in one piece (the image is physically contiguous), into a buffer
// from BorrowBuffer: give it back with ReturnBuffer when done.
func (k *Kernel) TextBytes() (start uint64, b []byte, err error) {
	s, ok1 := k.Syms.Lookup("_stext")
	e, ok2 := k.Syms.Lookup("_etext")
	if !ok1 || !ok2 || e <= s || e-s > 256<<20 {
		return 0, nil, fmt.Errorf("kernel text bounds (_stext/_etext) unknown")
	}
	p, ok := k.Loc.ImagePhys(s)
	if !ok {
		return 0, nil, fmt.Errorf("_stext %#x outside the kernel image", s)
	}
	b = BorrowBuffer(int(e - s))
	if _, err := k.Mem.ReadAt(b, int64(p)); err != nil {
		ReturnBuffer(b)
		return 0, nil, fmt.Errorf("kernel text: %w", err)
	}
	return s, b, nil
}
