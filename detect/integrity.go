package detect

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"

	"golang.org/x/arch/x86/x86asm"

	"github.com/vmwatch/vmwatch/linux"
)

// Baseline is the known-good content of a kernel's code and read-only
// data: recorded once from a trusted state, compared on every check.
type Baseline struct {
	file      string
	Release   string `json:"release"`
	Banner    string `json:"banner"`
	TextStart uint64 `json:"text_start"`
	// Boot identifies the boot it was recorded in (linux.Kernel.BootID).
	Boot string `json:"boot,omitempty"`
	// Regions are [start, end) offsets from _text with their bytes.
	Regions []BaselineRegion `json:"regions"`
}

// BaselineRegion is one recorded range.
type BaselineRegion struct {
	Name  string `json:"name"`
	Start uint64 `json:"start"` // offset from _text
	Data  []byte `json:"-"`
	Size  int    `json:"size"`
	// Pages are SHA-256 sums of each 4 KiB page, kept instead of Data by
	// a compacted baseline (see Compact).
	Pages [][sha256.Size]byte `json:"-"`
	// memo is the last full comparison of a compacted region
	memo *regionMemo
}

// regionMemo: the guest's page hashes and kernel offset at a full
// comparison, and the findings it gave.
type regionMemo struct {
	textStart uint64
	pages     [][sha256.Size]byte
	findings  []Finding
}

// Compact replaces the recorded bytes with a hash per page, so that a
// daemon watching many VMs keeps kilobytes instead of tens of megabytes
// per VM; the bytes are read back from file (the baseline's path) only
// when a page differs.
func (b *Baseline) Compact(file string) {
	b.file = file
	for i := range b.Regions {
		r := &b.Regions[i]
		if r.Data == nil {
			continue
		}
		r.Pages = pageHashes(r.Data)
		r.Data = nil
	}
}

func pageHashes(d []byte) [][sha256.Size]byte {
	out := make([][sha256.Size]byte, 0, (len(d)+4095)/4096)
	for off := 0; off < len(d); off += 4096 {
		out = append(out, sha256.Sum256(d[off:min(len(d), off+4096)]))
	}
	return out
}

// baselineRegions are the ranges recorded: kernel text and read-only data.
var baselineRegions = [][3]string{{"text", "_stext", "_etext"}, {"rodata", "__start_rodata", "__end_rodata"}}

// RecordBaseline reads the kernel's code and read-only data now.
func RecordBaseline(k *linux.Kernel) (*Baseline, error) {
	// a booting kernel has not patched its code into its final form yet
	if booted, err := k.Booted(); err == nil && !booted {
		return nil, ErrBooting
	}
	b := &Baseline{Release: k.Release, Banner: k.Banner, TextStart: k.Loc.TextStart, Boot: k.BootID()}
	for _, r := range baselineRegions {
		s, ok1 := k.Syms.Lookup(r[1])
		e, ok2 := k.Syms.Lookup(r[2])
		if !ok1 || !ok2 || e <= s || e-s > 512<<20 {
			continue
		}
		p, ok := k.Loc.ImagePhys(s)
		if !ok {
			continue
		}
		data := make([]byte, e-s)
		if _, err := k.Mem.ReadAt(data, int64(p)); err != nil {
			return nil, fmt.Errorf("baseline: read %s: %w", r[0], err)
		}
		b.Regions = append(b.Regions, BaselineRegion{Name: r[0], Start: s - k.Loc.TextStart, Data: data, Size: len(data)})
	}
	if len(b.Regions) == 0 {
		return nil, errors.New("baseline: kernel text bounds (_stext, _etext) not found")
	}
	return b, nil
}

// Save writes the baseline: a JSON header line, then the regions' bytes,
// gzip-compressed.
func (b *Baseline) Save(path string) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	zw, _ := gzip.NewWriterLevel(f, gzip.BestSpeed)
	hdr, _ := json.Marshal(b)
	zw.Write(append(hdr, '\n'))
	for _, r := range b.Regions {
		zw.Write(r.Data)
	}
	if err := zw.Close(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// LoadBaseline reads a baseline file.
func LoadBaseline(path string) (*Baseline, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("baseline %s: %w", path, err)
	}
	all, err := io.ReadAll(io.LimitReader(zr, 1<<30))
	if err != nil {
		return nil, fmt.Errorf("baseline %s: %w", path, err)
	}
	nl := bytes.IndexByte(all, '\n')
	if nl < 0 {
		return nil, fmt.Errorf("baseline %s: no header", path)
	}
	var b Baseline
	if err := json.Unmarshal(all[:nl], &b); err != nil {
		return nil, fmt.Errorf("baseline %s: %w", path, err)
	}
	rest := all[nl+1:]
	for i := range b.Regions {
		n := b.Regions[i].Size
		if n < 0 || n > len(rest) {
			return nil, fmt.Errorf("baseline %s: truncated", path)
		}
		b.Regions[i].Data, rest = rest[:n], rest[n:]
	}
	return &b, nil
}

// change is a run of bytes that differs from the baseline.
type change struct {
	addr           uint64
	expected, seen []byte
}

// diffRegion finds differing runs, skipping those excused (a patch site
// holding what the kernel writes there) and those a different KASLR offset
// explains (relocated 32- and 64-bit addresses differ by exactly the shift).
func diffRegion(base, cur []byte, start uint64, delta int64, excused func(a, n uint64) bool) []change {
	var out []change
	n := min(len(base), len(cur))
	for i := 0; i < n; {
		if base[i] == cur[i] {
			i++
			continue
		}
		j := i
		for j < n && (base[j] != cur[j] || j-i < 8 && j+1 < n && base[j+1] != cur[j+1]) {
			j++
		}
		// extend a little to join nearby differences
		k := j
		for k < n && k < j+4 {
			if base[k] != cur[k] {
				j = k + 1
			}
			k++
		}
		if !(excused != nil && excused(start+uint64(i), uint64(j-i))) && !(delta != 0 && relocated(base, cur, i, j, delta)) {
			out = append(out, change{start + uint64(i), base[i:j], cur[i:j]})
		}
		i = j
	}
	return out
}

// relocated reports whether every differing byte in [i, j) lies in a
// 4- or 8-byte window whose value moved as KASLR moves it: by exactly delta
// (an absolute address of the image), or a 32-bit value by exactly -delta
// (an "inverse" relocation: the offset from a moved instruction or table
// entry to a per-CPU variable, which does not move; x86 kernels access
// per-CPU data %rip-relative, and __ksymtab entries of per-CPU symbols).
func relocated(base, cur []byte, i, j int, delta int64) bool {
	n := min(len(base), len(cur))
	for x := i; x < j && x < n; x++ {
		if base[x] == cur[x] {
			continue
		}
		ok := false
		for w := x - 7; w <= x && !ok; w++ {
			if w < 0 {
				continue
			}
			if w+8 <= n && int64(binary.LittleEndian.Uint64(cur[w:]))-int64(binary.LittleEndian.Uint64(base[w:])) == delta {
				ok = true
			}
			if w >= x-3 && w+4 <= n {
				if d := int32(binary.LittleEndian.Uint32(cur[w:])) - int32(binary.LittleEndian.Uint32(base[w:])); d == int32(delta) || d == -int32(delta) {
					ok = true
				}
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

func kernelIntegrity(s *Snapshot) ([]Finding, error) {
	// a patch site excuses a change only when it holds what the kernel's
	// own mechanism writes there, given the kernel's state now
	sc, siteErr := s.Sites()
	out, err := inlineHooks(s, sc)
	if b := s.Opt.Baseline; b != nil {
		fs, berr := compareBaseline(s, b, sc)
		out = append(out, fs...)
		err = errors.Join(err, berr)
	}
	return out, errors.Join(err, siteErr)
}

func compareBaseline(s *Snapshot, b *Baseline, sc *linux.SiteCheck) ([]Finding, error) {
	if b.Release != s.K.Release || b.Banner != s.K.Banner {
		return nil, fmt.Errorf("the baseline is of kernel %q, the guest runs %q: record a new baseline", b.Release, s.K.Release)
	}
	delta := int64(s.K.Loc.TextStart - b.TextStart)
	// data the kernel writes while it boots and then seals (.data..ro_after_init,
	// inside rodata: allocated caches, hash tables, per-CPU offsets) differs
	// from boot to boot; a baseline of another boot cannot vouch for it
	var skip [2]uint64
	if delta != 0 || b.Boot != "" && b.Boot != s.K.BootID() {
		if lo, ok := s.K.Syms.Lookup("__start_ro_after_init"); ok {
			if hi, ok := s.K.Syms.Lookup("__end_ro_after_init"); ok && hi > lo {
				skip = [2]uint64{lo, hi}
			}
		}
	}
	var out []Finding
	for i := range b.Regions {
		r := &b.Regions[i]
		start := s.K.Loc.TextStart + r.Start
		p, ok := s.K.Loc.ImagePhys(start)
		if !ok {
			return out, fmt.Errorf("baseline region %s outside the kernel image", r.Name)
		}
		cur := linux.BorrowBuffer(r.Size)
		fs, err := compareRegion(s, b, r, cur, p, start, delta, sc, skip)
		linux.ReturnBuffer(cur)
		out = append(out, fs...)
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// compareRegion compares one baseline region with the guest's bytes,
// read into cur from physical address p.
func compareRegion(s *Snapshot, b *Baseline, r *BaselineRegion, cur []byte, p, start uint64, delta int64, sc *linux.SiteCheck, skip [2]uint64) ([]Finding, error) {
	if _, err := s.K.Mem.ReadAt(cur, int64(p)); err != nil {
		return nil, fmt.Errorf("read kernel %s: %w", r.Name, err)
	}
	base := r.Data
	var hashes [][sha256.Size]byte
	if base == nil {
		// compacted: compare page hashes, and read the recorded bytes back
		// only if a page differs
		hashes = pageHashes(cur)
		if slices.Equal(hashes, r.Pages) && delta == 0 {
			return nil, nil
		}
		// the same bytes as at the last full comparison (another KASLR
		// offset than the recording's, or a change that persists): the
		// same findings, without reading the file again
		if m := r.memo; m != nil && m.textStart == s.K.Loc.TextStart && slices.Equal(m.pages, hashes) {
			out := make([]Finding, 0, len(m.findings))
			for _, f := range m.findings {
				f.Time = s.Time
				out = append(out, f)
			}
			return out, nil
		}
		full, err := LoadBaseline(b.file)
		if err != nil {
			return nil, fmt.Errorf("baseline bytes: %w", err)
		}
		for _, fr := range full.Regions {
			if fr.Name == r.Name {
				base = fr.Data
			}
		}
		if base == nil {
			return nil, fmt.Errorf("baseline %s has no region %s", b.file, r.Name)
		}
	}
	// group changes by the function they fall in
	type group struct {
		sym     string
		changes []change
	}
	groups := map[string]*group{}
	var order []string
	excused := func(a, n uint64) bool { return sc.Excuses(a, n, cur, start) }
	for _, c := range diffRegion(base, cur, start, delta, excused) {
		if c.addr >= skip[0] && c.addr+uint64(len(c.seen)) <= skip[1] {
			continue
		}
		sym, _, _ := s.K.Syms.Nearest(c.addr)
		g := groups[sym.Name]
		if g == nil {
			g = &group{sym: sym.Name}
			groups[sym.Name] = g
			order = append(order, sym.Name)
		}
		g.changes = append(g.changes, c)
	}
	sort.Strings(order)
	var out []Finding
	for _, name := range order {
		g := groups[name]
		c := g.changes[0]
		where := s.K.Syms.Describe(c.addr)
		ev := Evidence{Addresses: []AddrEvidence{{Role: "changed", Address: linux.Addr(c.addr), Symbol: where}},
			Expected: hexBytes(c.expected), Found: hexBytes(c.seen),
			Details: map[string]any{"region": r.Name, "changes": len(g.changes)}}
		if tgt, ok := jumpTarget(c, cur, start); ok {
			ev.Addresses = append(ev.Addresses, s.addr("jump target", tgt))
		}
		out = append(out, s.finding("kernel-code-modified", fmt.Sprintf("Kernel %s changed in %s", r.Name, g.sym), Critical, "T1014", fmt.Sprintf("%s/%s", r.Name, g.sym),
			fmt.Sprintf("%d byte(s) of kernel %s at %s differ from the baseline (expected %s, found %s), and are not what the kernel itself writes at its patch sites (jump labels, ftrace, static calls, kprobes). Kernel code was patched: an inline hook or a rootkit.", len(c.seen), r.Name, where, hexBytes(c.expected), hexBytes(c.seen)),
			ev))
	}
	if hashes != nil {
		r.memo = &regionMemo{textStart: s.K.Loc.TextStart, pages: hashes, findings: out}
	}
	return out, nil
}

// jumpTarget decodes a jmp/call at the start of a change.
func jumpTarget(c change, cur []byte, start uint64) (uint64, bool) {
	off := int(c.addr - start)
	if off < 0 || off >= len(cur) {
		return 0, false
	}
	in, err := linux.DecodeInsn(cur[off:min(len(cur), off+16)])
	if err != nil || (in.Op != x86asm.JMP && in.Op != x86asm.CALL) {
		return 0, false
	}
	rel, ok := in.Args[0].(x86asm.Rel)
	if !ok {
		return 0, false
	}
	return c.addr + uint64(in.Len) + uint64(int64(rel)), true
}

func hexBytes(b []byte) string {
	if len(b) > 32 {
		return hex.EncodeToString(b[:32]) + "…"
	}
	return hex.EncodeToString(b)
}

// inlineHooks looks at the first instructions of every kernel function for
// a jump or call out of kernel text: the classic inline hook. Places the
// kernel patches itself (ftrace trampolines, kprobes) are skipped.
func inlineHooks(s *Snapshot, sc *linux.SiteCheck) ([]Finding, error) {
	start, text, err := s.K.TextBytes()
	if err != nil {
		return nil, err
	}
	defer linux.ReturnBuffer(text)
	var out []Finding
	for _, sym := range s.K.Syms.All() {
		if sym.Type != 'T' && sym.Type != 't' || sym.Addr < start || sym.Addr >= start+uint64(len(text)) {
			continue
		}
		off := int(sym.Addr - start)
		for n, pc := 0, off; n < 4 && pc < len(text); n++ {
			in, err := linux.DecodeInsn(text[pc:min(len(text), pc+16)])
			if err != nil {
				break
			}
			if in.Op == x86asm.CALL || in.Op == x86asm.JMP {
				if rel, ok := in.Args[0].(x86asm.Rel); ok {
					site := start + uint64(pc)
					t := site + uint64(in.Len) + uint64(int64(rel))
					// calls from __ref functions into init text are the kernel's own
					if !s.K.KernelText(t) && !s.K.InitText(t) && !sc.Excuses(site, uint64(in.Len), text, start) {
						a := s.addr("jump target", t)
						out = append(out, s.finding("inline-hook", fmt.Sprintf("Kernel function %s jumps to %s", sym.Name, describe(a)), Critical, "T1014", sym.Name,
							fmt.Sprintf("The first instructions of %s (at %s) %s %v (%s), outside kernel text: an inline hook diverts every call of %s. Treat the kernel as compromised.", sym.Name, s.K.Syms.Describe(site), map[bool]string{true: "call", false: "jump to"}[in.Op == x86asm.CALL], linux.Addr(t), describe(a), sym.Name),
							Evidence{Addresses: []AddrEvidence{{Role: "hooked", Address: linux.Addr(site), Symbol: s.K.Syms.Describe(site)}, a},
								Expected: "the function's own code", Found: fmt.Sprintf("%s %v", in.Op, linux.Addr(t))}))
					}
				}
				break
			}
			if in.Op == x86asm.RET || in.Op == x86asm.UD2 || in.Op == x86asm.INT {
				break
			}
			pc += in.Len
		}
	}
	return out, nil
}
