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
	// Target is where an enabled jump label jumps (its jump_entry's target).
	Target uint64
}

// Kinds of patch sites; SiteCheck knows what the kernel writes at each.
const (
	SiteJumpLabel    = "jump label"
	SiteStaticCall   = "static call"
	SiteStaticTramp  = "static call trampoline"
	SiteFtrace       = "ftrace"        // a traceable function's call site (dyn_ftrace)
	SiteFtraceCaller = "ftrace caller" // ftrace_call, ftrace_regs_call: the call of the tracer
	SiteBPFDispatch  = "bpf dispatcher"
	SiteKprobe       = "kprobe"
	SiteRuntimeConst = "runtime constant"
)

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
		out = append(out, PatchSite{Addr: uint64(p.Addr), Len: 5, Kind: SiteKprobe})
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
	js, err := k.relativeSites("__start___jump_table", "__stop___jump_table", "jump_entry", "code", "target", SiteJumpLabel, 5)
	note(err)
	out = append(out, js...)
	sc, err := k.relativeSites("__start_static_call_sites", "__stop_static_call_sites", "static_call_site", "addr", "", SiteStaticCall, 6)
	note(err)
	out = append(out, sc...)
	fs, err := k.ftraceSites()
	note(err)
	for _, s := range fs { // module call sites are outside the image
		if s.Addr >= k.Loc.TextStart && s.Addr < k.Loc.ImageEnd {
			out = append(out, s)
		}
	}
	// the tracer's own call in ftrace_caller and ftrace_regs_caller
	// (arch/x86/kernel/ftrace_64.S), rewritten by ftrace_update_ftrace_func
	for _, name := range []string{"ftrace_call", "ftrace_regs_call"} {
		if a, ok := k.Syms.Lookup(name); ok {
			out = append(out, PatchSite{Addr: a, Len: 5, Kind: SiteFtraceCaller})
		}
	}
	// static call trampolines (a jump at their start) and BPF dispatchers
	// (a jump at their start, after endbr64, written by bpf_arch_text_poke)
	for _, s := range k.Syms.All() {
		switch {
		case strings.HasPrefix(s.Name, "__SCT__"):
			out = append(out, PatchSite{Addr: s.Addr, Len: 5, Kind: SiteStaticTramp})
		case strings.HasPrefix(s.Name, "bpf_dispatcher_") && strings.HasSuffix(s.Name, "_func"):
			out = append(out, PatchSite{Addr: s.Addr, Len: 9, Kind: SiteBPFDispatch})
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
				out = append(out, PatchSite{Addr: start + uint64(at-2), Len: 10, Kind: SiteRuntimeConst})
			}
			off = at + 1
		}
	}
	return out, true, nil
}

// relativeSites reads a table of entries whose field holds a 32-bit offset
// from the field's own address to the patched instruction (and, when
// targetField is set, another such offset to the site's target).
func (k *Kernel) relativeSites(startSym, stopSym, typ, field, targetField, kind string, n uint64) ([]PatchSite, error) {
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
	toff := uint64(0)
	if targetField != "" {
		if toff, err = t.FieldOffset(targetField); err != nil {
			return nil, err
		}
	}
	if off+4 > t.Size || toff+4 > t.Size {
		return nil, fmt.Errorf("%s: members %s/%s lie outside its %d bytes", typ, field, targetField, t.Size)
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
		// off+4 and toff+4 are inside t.Size (checked above), and
		// p+t.Size inside b; the reads are checked all the same
		rel, ok := u32At(b, p+off)
		if !ok {
			return out, fmt.Errorf("%s entry at %#x: %s outside the table", typ, start+p, field)
		}
		site := PatchSite{Addr: start + p + off + uint64(int64(int32(rel))), Len: n, Kind: kind}
		if targetField != "" {
			trel, ok := u32At(b, p+toff)
			if !ok {
				return out, fmt.Errorf("%s entry at %#x: %s outside the table", typ, start+p, targetField)
			}
			site.Target = start + p + toff + uint64(int64(int32(trel)))
		}
		out = append(out, site)
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
	// dyn_ftrace is 16 bytes (ip, flags, arch): bound it so that a page's
	// records stay a small read
	if recT.Size == 0 || recT.Size > 4096 || ipOff+8 > recT.Size {
		return nil, fmt.Errorf("dyn_ftrace: ip at byte %d of an implausible %d-byte struct", ipOff, recT.Size)
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
			// a page whose records do not read is skipped, as before
			if b, err := k.readTable("ftrace records", recs, idx*recT.Size, idx*recT.Size); err == nil {
				for i := uint64(0); i < idx; i++ {
					if ip, ok := u64At(b, i*recT.Size+ipOff); ok {
						out = append(out, PatchSite{Addr: ip, Len: 5, Kind: SiteFtrace})
					}
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
