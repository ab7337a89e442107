package linux

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"iter"
	"runtime"
	"sort"
	"strings"
	"sync"
	"unsafe"
	"weak"
)

// The kernel's compressed symbol table (kallsyms) is a set of arrays that
// scripts/kallsyms.c writes into .rodata, each aligned to 8 bytes:
//
//	kallsyms_num_syms    u32
//	kallsyms_names       per symbol: length (ULEB128, 1-2 bytes), then that many token indices
//	kallsyms_markers     u32 per 256 symbols: offset of symbol 256*k in kallsyms_names
//	kallsyms_token_table 256 NUL-terminated strings; a symbol's bytes index it
//	kallsyms_token_index 256 u16 offsets into the token table
//	kallsyms_offsets     s32 per symbol, relative to kallsyms_relative_base (u64)
//
// Before Linux 6.4 kallsyms_offsets and kallsyms_relative_base come first,
// right before kallsyms_num_syms; since 6.4 they follow kallsyms_token_index.
// (6.2 and 6.3 put kallsyms_seqs_of_names between the markers and the token
// table; that layout is not handled.) The finder works outwards from the
// token table, whose entries for the digits are the single characters
// "0".."9" in a row, and checks every table against the others.

// Symbol is one kernel symbol.
type Symbol struct {
	Addr uint64
	Name string
	// Type is the nm-style type letter ('T' text, 't' local text, 'D', 'd',
	// 'B', 'b', 'R', 'r', 'A' absolute (per-CPU), 'W' weak, ...).
	Type byte
}

// Symbols is a symbol table sorted by address. Guests that run the same
// kernel build share one table (see internSymbols); each keeps only its
// KASLR slide.
type Symbols struct {
	t *symTable
	// slide is added to the table's relative addresses of kernel-half
	// symbols; per-CPU offsets and other low addresses are not moved.
	slide uint64
	// Source says where the symbols came from ("kallsyms in guest memory",
	// "System.map FILE").
	Source string
}

// symTable holds symbols sorted by address, kernel-half addresses stored
// relative to the lowest of them (and marked relocated), so guests of one build (at any KASLR
// offset) produce the same table.
type symTable struct {
	rel    []uint64
	names  []string
	types  []byte
	byName map[string]int32
}

// relocated marks a type byte whose symbol moves with the slide (type
// letters are ASCII, so the top bit is free).
const relocated = 0x80

// upperHalf reports whether addr lies in the kernel half of the address
// space, where KASLR moves symbols.
func upperHalf(addr uint64) bool { return addr>>63 == 1 }

// NewSymbols builds a table from symbols in any order.
func NewSymbols(source string, syms []Symbol) *Symbols {
	sort.SliceStable(syms, func(i, j int) bool { return syms[i].Addr < syms[j].Addr })
	var slide uint64
	for _, s := range syms {
		if upperHalf(s.Addr) {
			slide = s.Addr
			break
		}
	}
	t := &symTable{rel: make([]uint64, len(syms)), names: make([]string, len(syms)), types: make([]byte, len(syms))}
	for i, s := range syms {
		t.rel[i], t.names[i], t.types[i] = s.Addr, s.Name, s.Type
		if upperHalf(s.Addr) {
			t.rel[i] -= slide
			t.types[i] |= relocated
		}
	}
	return &Symbols{t: internSymbols(t), slide: slide, Source: source}
}

// symCache maps a table's content hash to the table while some guest uses
// it; a hostile guest cannot poison it, since only equal content is shared.
var symCache = struct {
	sync.Mutex
	m map[[32]byte]weak.Pointer[symTable]
}{m: map[[32]byte]weak.Pointer[symTable]{}}

// internSymbols returns an existing table with t's content, or indexes t
// and remembers it.
func internSymbols(t *symTable) *symTable {
	h := sha256.New()
	var b [9]byte
	for i := range t.rel {
		binary.LittleEndian.PutUint64(b[:], t.rel[i])
		b[8] = t.types[i]
		h.Write(b[:])
		h.Write([]byte(t.names[i]))
		h.Write([]byte{0})
	}
	var key [32]byte
	h.Sum(key[:0])
	symCache.Lock()
	defer symCache.Unlock()
	if wp, ok := symCache.m[key]; ok {
		if old := wp.Value(); old != nil {
			return old
		}
	}
	t.byName = make(map[string]int32, len(t.names))
	for i := len(t.names) - 1; i >= 0; i-- {
		// the first symbol of a name wins, as in kallsyms_lookup_name
		t.byName[t.names[i]] = int32(i)
	}
	symCache.m[key] = weak.Make(t)
	runtime.AddCleanup(t, func(key [32]byte) {
		symCache.Lock()
		defer symCache.Unlock()
		if wp, ok := symCache.m[key]; ok && wp.Value() == nil {
			delete(symCache.m, key)
		}
	}, key)
	return t
}

// Len is the number of symbols.
func (s *Symbols) Len() int { return len(s.t.rel) }

// addr is symbol i's address in this guest.
func (s *Symbols) addr(i int) uint64 {
	if s.t.types[i]&relocated != 0 {
		return s.t.rel[i] + s.slide
	}
	return s.t.rel[i]
}

// At returns symbol i in address order.
func (s *Symbols) At(i int) Symbol {
	return Symbol{Addr: s.addr(i), Name: s.t.names[i], Type: s.t.types[i] &^ relocated}
}

// All yields the symbols in address order with their index.
func (s *Symbols) All() iter.Seq2[int, Symbol] {
	return func(yield func(int, Symbol) bool) {
		for i := range s.t.rel {
			if !yield(i, s.At(i)) {
				return
			}
		}
	}
}

// Next returns the first symbol above addr.
func (s *Symbols) Next(addr uint64) (Symbol, bool) {
	i := sort.Search(s.Len(), func(i int) bool { return s.addr(i) > addr })
	if i == s.Len() {
		return Symbol{}, false
	}
	return s.At(i), true
}

// Lookup returns the address of a symbol by name.
func (s *Symbols) Lookup(name string) (uint64, bool) {
	i, ok := s.t.byName[name]
	if !ok {
		return 0, false
	}
	return s.addr(int(i)), true
}

// Get returns a symbol by name.
func (s *Symbols) Get(name string) (Symbol, bool) {
	i, ok := s.t.byName[name]
	if !ok {
		return Symbol{}, false
	}
	return s.At(int(i)), true
}

// MustLookup returns the address of a symbol or an error that names it.
func (s *Symbols) MustLookup(name string) (uint64, error) {
	a, ok := s.Lookup(name)
	if !ok {
		return 0, fmt.Errorf("kernel symbol %s not found (in %s)", name, s.Source)
	}
	return a, nil
}

// Nearest returns the symbol at or below addr (ignoring absolute per-CPU
// symbols) and the offset of addr from it.
func (s *Symbols) Nearest(addr uint64) (Symbol, uint64, bool) {
	i := sort.Search(s.Len(), func(i int) bool { return s.addr(i) > addr }) - 1
	for ; i >= 0; i-- {
		if t := s.t.types[i] &^ relocated; t != 'A' && t != 'a' {
			sym := s.At(i)
			return sym, addr - sym.Addr, true
		}
	}
	return Symbol{}, 0, false
}

// Describe formats addr as symbol+offset, or the bare address.
func (s *Symbols) Describe(addr uint64) string {
	if s != nil {
		if sym, off, ok := s.Nearest(addr); ok && off < 1<<20 {
			if off == 0 {
				return sym.Name
			}
			return fmt.Sprintf("%s+%#x", sym.Name, off)
		}
	}
	return fmt.Sprintf("%#x", addr)
}

// KallsymsInfo records where the tables were found.
type KallsymsInfo struct {
	Layout       string `json:"layout"`        // where the address table is: "pre-6.4" or "6.4+"
	SeqsOfNames  bool   `json:"seqs_of_names"` // kallsyms_seqs_of_names between markers and token table
	NumSyms      int    `json:"num_syms"`
	TokenTable   Addr   `json:"token_table"` // virtual addresses
	Names        Addr   `json:"names"`
	Offsets      Addr   `json:"offsets"`
	RelBase      Addr   `json:"relative_base"` // value of kallsyms_relative_base
	AbsPercpu    bool   `json:"absolute_percpu"`
	BaseRelative bool   `json:"base_relative"`
}

// limits against hostile input
const (
	maxKallsyms       = 2_000_000
	maxNameEntryBytes = 2 + 0x3fff
	maxTokenTableSize = 256 * 128
)

var digitTokens = []byte("0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00")

// findDigitRuns returns the offsets of the "0".."9" token run in b.
func findDigitRuns(b []byte, limit int) []int {
	var out []int
	off := 0
	for len(out) < limit {
		i := bytes.Index(b[off:], digitTokens)
		if i < 0 {
			break
		}
		// the byte before "0" must end the previous token
		if p := off + i; p > 0 && b[p-1] == 0 {
			out = append(out, p)
		}
		off += i + 1
	}
	return out
}

func u32(b []byte, off int) uint32 { return binary.LittleEndian.Uint32(b[off:]) }
func u64(b []byte, off int) uint64 { return binary.LittleEndian.Uint64(b[off:]) }

func align8(x int) int { return (x + 7) &^ 7 }

// tokenTable is a validated kallsyms_token_table.
type tokenTable struct {
	start, indexAt, end int // offsets in the window: table, token_index, end of index
	tokens              [256][]byte
}

// findTokenTable validates a token table around the digit run at d and finds
// kallsyms_token_index after it.
func findTokenTable(w []byte, d int) (*tokenTable, error) {
	for x := align8(d + len(digitTokens)); x <= d+maxTokenTableSize && x+512 <= len(w); x += 8 {
		var idx [256]int
		ok := true
		for i := 0; i < 256; i++ {
			idx[i] = int(binary.LittleEndian.Uint16(w[x+2*i:]))
			if (i == 0 && idx[0] != 0) || (i > 0 && idx[i] <= idx[i-1]) {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		start := d - idx['0']
		if start < 0 || start%8 != 0 {
			continue
		}
		var tt tokenTable
		tt.start, tt.indexAt, tt.end = start, x, x+512
		for i := 0; i < 256 && ok; i++ {
			a := start + idx[i]
			var e int
			if i < 255 {
				e = start + idx[i+1] - 1
			} else {
				z := bytes.IndexByte(w[a:min(len(w), a+256)], 0)
				if z < 0 {
					ok = false
					break
				}
				e = a + z
				if align8(e+1) != x {
					ok = false
					break
				}
			}
			if e >= len(w) || e < a || w[e] != 0 || bytes.IndexByte(w[a:e], 0) >= 0 {
				ok = false
				break
			}
			tt.tokens[i] = w[a:e]
		}
		if !ok {
			continue
		}
		for c := byte('0'); c <= '9'; c++ {
			if len(tt.tokens[c]) != 1 || tt.tokens[c][0] != c {
				ok = false
			}
		}
		if ok {
			return &tt, nil
		}
	}
	return nil, errors.New("no kallsyms_token_index after the candidate token table")
}

// readNameLen decodes the 1- or 2-byte ULEB128 length of a names entry.
func readNameLen(w []byte, p int) (n, hdr int, ok bool) {
	if p >= len(w) {
		return 0, 0, false
	}
	n = int(w[p])
	if n&0x80 == 0 {
		return n, 1, n > 0
	}
	if p+1 >= len(w) || w[p+1]&0x80 != 0 {
		return 0, 0, false
	}
	return n&0x7f | int(w[p+1])<<7, 2, true
}

// skipNames walks count entries of kallsyms_names from p and returns the end.
func skipNames(w []byte, p, count int) (int, bool) {
	for i := 0; i < count; i++ {
		n, h, ok := readNameLen(w, p)
		if !ok || p+h+n > len(w) {
			return 0, false
		}
		p += h + n
	}
	return p, true
}

// findMarkers walks kallsyms_markers backwards from its end me: the values
// decrease by at least 512 (256 names of two bytes or more) down to 0.
func findMarkers(w []byte, me int) (ms int, markers []uint32, ok bool) {
	if me < 8 || me > len(w) {
		return 0, nil, false
	}
	p := me - 4
	last := u32(w, p)
	if last == 0 {
		return 0, nil, false
	}
	var rev []uint32
	rev = append(rev, last)
	for p -= 4; p >= 0; p -= 4 {
		v := u32(w, p)
		prev := rev[len(rev)-1]
		if v >= prev || prev-v < 512 || prev-v > 256*maxNameEntryBytes {
			return 0, nil, false
		}
		rev = append(rev, v)
		if v == 0 {
			if p%8 != 0 {
				return 0, nil, false
			}
			markers = make([]uint32, len(rev))
			for i := range rev {
				markers[i] = rev[len(rev)-1-i]
			}
			return p, markers, true
		}
		if len(rev) > maxKallsyms/256 {
			return 0, nil, false
		}
	}
	return 0, nil, false
}

// parsedNames is a located and validated kallsyms_names.
type parsedNames struct {
	numSymsAt, start, end int
	n                     int
	markers               []uint32
}

// findNames locates kallsyms_num_syms and kallsyms_names before the markers
// at ms and checks every marker against the names.
func findNames(w []byte, ms int, markers []uint32) (*parsedNames, bool) {
	count := len(markers)
	lastOff := int(markers[count-1])
	lo, hi := (count-1)*256+1, count*256
	top := ms - lastOff - 2
	bottom := ms - lastOff - 256*maxNameEntryBytes
	if bottom < 8 {
		bottom = 8
	}
	for ns := top &^ 7; ns >= bottom; ns -= 8 {
		n := int(u32(w, ns-8))
		if n < lo || n > hi || u32(w, ns-4) != 0 {
			continue
		}
		end, ok := skipNames(w, ns+lastOff, n-(count-1)*256)
		if !ok || end > ms || align8(end) != ms {
			continue
		}
		// every marker must point at the start of its group
		p := ns
		good := true
		for k := 0; k < count && good; k++ {
			if p-ns != int(markers[k]) {
				good = false
				break
			}
			if k < count-1 {
				p, good = skipNames(w, p, 256)
			}
		}
		if good {
			return &parsedNames{numSymsAt: ns - 8, start: ns, end: end, n: n, markers: markers}, true
		}
	}
	return nil, false
}

// locateNames finds kallsyms_markers and kallsyms_names before the token
// table at t: either directly (before 6.2, and 6.4+) or with
// kallsyms_seqs_of_names (3 bytes per symbol) in between (6.2, 6.3, and
// stable kernels that took that change, such as Debian's 6.1).
func locateNames(w []byte, t int) (*parsedNames, bool) {
	for _, me := range []int{t, t - 4} {
		if ms, markers, ok := findMarkers(w, me); ok {
			if names, ok := findNames(w, ms, markers); ok {
				return names, false
			}
		}
	}
	// seqs_of_names starts at an 8-aligned s and ends within the 8 bytes before t.
	for s := t - 8; s >= 8 && t-s <= 3*maxKallsyms+8; s -= 8 {
		for n := (t - s - 7 + 2) / 3; n <= (t-s)/3; n++ {
			if n <= 0 || align8(s+3*n) != t {
				continue
			}
			count := (n + 255) / 256
			for _, me := range []int{s, s - 4} {
				ms := me - 4*count
				if ms < 0 || ms%8 != 0 || u32(w, ms) != 0 || u32(w, me-4) == 0 {
					continue
				}
				if ms2, markers, ok := findMarkers(w, me); ok && ms2 == ms {
					if names, ok := findNames(w, ms, markers); ok && names.n == n {
						return names, true
					}
				}
			}
		}
	}
	return nil, false
}

// ParseKallsyms finds the compressed symbol table in w, a window of kernel
// memory whose first byte is at virtual address base, near the digit run at
// offset d (see findDigitRuns). textStart, when not zero, is the virtual
// address where the kernel image starts; the table's _text must match it.
func ParseKallsyms(w []byte, base uint64, d int, textStart uint64) ([]Symbol, *KallsymsInfo, error) {
	if d < 0 || d >= len(w) {
		return nil, nil, errors.New("kallsyms: candidate outside the window")
	}
	tt, err := findTokenTable(w, d)
	if err != nil {
		return nil, nil, fmt.Errorf("kallsyms: %w", err)
	}
	names, seqs := locateNames(w, tt.start)
	if names == nil {
		return nil, nil, errors.New("kallsyms: token table found, but no kallsyms_markers and kallsyms_names before it (damaged table?)")
	}
	n := names.n
	info := &KallsymsInfo{NumSyms: n, TokenTable: Addr(base + uint64(tt.start)), Names: Addr(base + uint64(names.start)), SeqsOfNames: seqs}

	// Decode the names.
	decoded := make([]byte, 0, n*24)
	spans := make([]span, n)
	p := names.start
	for i := 0; i < n; i++ {
		l, h, ok := readNameLen(w, p)
		if !ok || p+h+l > names.end {
			return nil, nil, fmt.Errorf("kallsyms: name %d at %#x is damaged", i, base+uint64(p))
		}
		p += h
		s := len(decoded)
		for _, t := range w[p : p+l] {
			decoded = append(decoded, tt.tokens[t]...)
		}
		p += l
		if len(decoded)-s < 2 || len(decoded)-s > 1024 {
			return nil, nil, fmt.Errorf("kallsyms: name %d decodes to %d bytes", i, len(decoded)-s)
		}
		spans[i] = span{s, len(decoded) - s}
	}

	// Find the addresses: before num_syms (pre-6.4) or after the token index (6.4+).
	type cand struct {
		layout       string
		offs, relAt  int
		baseRelative bool
	}
	sz4 := align8(4 * n)
	cands := []cand{
		{"pre-6.4", names.numSymsAt - 8 - sz4, names.numSymsAt - 8, true},
		{"6.4+", tt.end, tt.end + sz4, true},
		{"pre-6.4 absolute", names.numSymsAt - 8*n, -1, false},
		{"6.4+ absolute", tt.end, -1, false},
	}
	var addrs []uint64
	for _, c := range cands {
		if c.offs < 0 {
			continue
		}
		if c.baseRelative {
			if c.relAt+8 > len(w) || c.offs+4*n > len(w) {
				continue
			}
			rel := u64(w, c.relAt)
			a, abs, ok := relativeAddrs(w[c.offs:c.offs+4*n], rel)
			if ok && plausibleAddrs(a, decoded, spans, textStart) {
				addrs = a
				info.Layout, info.Offsets, info.RelBase, info.AbsPercpu, info.BaseRelative = c.layout, Addr(base+uint64(c.offs)), Addr(rel), abs, true
				break
			}
		} else {
			if c.offs+8*n > len(w) {
				continue
			}
			a := make([]uint64, n)
			for i := range a {
				a[i] = u64(w, c.offs+8*i)
			}
			if plausibleAddrs(a, decoded, spans, textStart) {
				addrs = a
				info.Layout, info.Offsets = c.layout, Addr(base+uint64(c.offs))
				break
			}
		}
	}
	if addrs == nil {
		return nil, nil, fmt.Errorf("kallsyms: %d names decoded, but no address table matches them", n)
	}

	// One string for all names; symbols point into it.
	all := unsafe.String(unsafe.SliceData(decoded), len(decoded))
	syms := make([]Symbol, n)
	for i, sp := range spans {
		syms[i] = Symbol{Addr: addrs[i], Type: decoded[sp.off], Name: all[sp.off+1 : sp.off+sp.len]}
	}
	return syms, info, nil
}

// span is a decoded name: its type letter at off, then the name.
type span struct{ off, len int }

// relativeAddrs computes addresses from kallsyms_offsets. With absolute
// per-CPU symbols (x86-64 SMP), non-negative offsets are absolute values and
// negative ones count down from relative_base-1; otherwise offsets are
// unsigned and added to the base.
func relativeAddrs(offs []byte, rel uint64) ([]uint64, bool, bool) {
	if rel < 0xffff800000000000 {
		return nil, false, false
	}
	n := len(offs) / 4
	abs := false
	for i := 0; i < n; i++ {
		if int32(u32(offs, 4*i)) < 0 {
			abs = true
			break
		}
	}
	a := make([]uint64, n)
	for i := range a {
		o := int32(u32(offs, 4*i))
		switch {
		case !abs:
			a[i] = rel + uint64(uint32(o))
		case o >= 0:
			a[i] = uint64(o)
		default:
			a[i] = rel - 1 - uint64(int64(o))
		}
	}
	return a, abs, true
}

// plausibleAddrs checks decoded addresses: sorted, and _text (or
// startup_64) where the kernel image starts.
func plausibleAddrs(a []uint64, decoded []byte, sp []span, textStart uint64) bool {
	for i := 1; i < len(a); i++ {
		if a[i] < a[i-1] {
			return false
		}
	}
	found := false
	for i, s := range sp {
		name := decoded[s.off+1 : s.off+s.len]
		isText, isStartup := bytes.Equal(name, []byte("_text")), bytes.Equal(name, []byte("startup_64"))
		if isText || isStartup {
			if a[i] < 0xffff800000000000 || (textStart != 0 && a[i] != textStart) {
				return false
			}
			found = true
			if isText {
				break
			}
		}
	}
	return found
}

// ParseSystemMap reads a System.map ("ADDRESS TYPE NAME" lines).
func ParseSystemMap(text string) ([]Symbol, error) {
	var out []Symbol
	for ln, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		var a uint64
		if _, err := fmt.Sscanf(f[0], "%x", &a); err != nil || len(f[1]) != 1 {
			return nil, fmt.Errorf("System.map line %d: %q is not \"ADDRESS TYPE NAME\"", ln+1, line)
		}
		out = append(out, Symbol{Addr: a, Type: f[1][0], Name: f[2]})
	}
	if len(out) == 0 {
		return nil, errors.New("System.map holds no symbols (Debian's /boot/System.map is a placeholder; the real one is in the -dbg package)")
	}
	return out, nil
}
