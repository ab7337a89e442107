package linux

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
)

// synthSym is a symbol for the synthetic tables.
type synthSym struct {
	addr uint64
	typ  byte
	name string
}

func synthSymbols(n int, base uint64) []synthSym {
	syms := []synthSym{{0, 'A', "fixed_percpu_data"}, {0x40, 'A', "cpu_number"}, {base, 'T', "_text"}, {base, 'T', "startup_64"}}
	for i := 0; len(syms) < n; i++ {
		syms = append(syms, synthSym{base + 0x1000 + uint64(i)*16, "Ttdb"[i%4], fmt.Sprintf("__sym_%d_%s", i, strings.Repeat("x", i%40))})
	}
	return syms
}

// buildKallsyms lays the tables out the way scripts/kallsyms.c does, with a
// small token table: code 0xF0 stands for "__", every other byte for itself.
// layout: "pre-6.4", "seqs" (pre-6.4 with kallsyms_seqs_of_names, as in
// 6.2/6.3 and Debian's 6.1) or "6.4+". It returns the window and the
// offset of the digit run.
func buildKallsyms(syms []synthSym, base uint64, layout string) ([]byte, int) {
	var w bytes.Buffer
	align := func() {
		for w.Len()%8 != 0 {
			w.WriteByte(0)
		}
	}
	w.Write(bytes.Repeat([]byte{0xcc}, 24)) // unrelated data before the tables
	align()
	n := len(syms)
	offsets := func() {
		align()
		for _, s := range syms {
			var o int32
			if s.typ == 'A' {
				o = int32(s.addr)
			} else {
				o = int32(int64(base) - int64(s.addr) - 1)
			}
			binary.Write(&w, binary.LittleEndian, o)
		}
		align()
		binary.Write(&w, binary.LittleEndian, base)
	}
	if layout != "6.4+" {
		offsets()
	}
	align()
	binary.Write(&w, binary.LittleEndian, uint32(n))
	align()
	names := w.Len()
	var markers []uint32
	for i, s := range syms {
		if i%256 == 0 {
			markers = append(markers, uint32(w.Len()-names))
		}
		enc := bytes.ReplaceAll([]byte(string(s.typ)+s.name), []byte("__"), []byte{0xF0})
		if len(enc) > 0x7f {
			w.Write([]byte{byte(len(enc)&0x7f | 0x80), byte(len(enc) >> 7)})
		} else {
			w.WriteByte(byte(len(enc)))
		}
		w.Write(enc)
	}
	align()
	binary.Write(&w, binary.LittleEndian, markers)
	if layout == "seqs" {
		align()
		for i := 0; i < n; i++ {
			w.Write([]byte{byte(i >> 16), byte(i >> 8), byte(i)})
		}
	}
	align()
	tt := w.Len()
	var idx [256]uint16
	for c := 0; c < 256; c++ {
		idx[c] = uint16(w.Len() - tt)
		switch {
		case c == 0xF0:
			w.WriteString("__")
		case c == 0:
			w.WriteString("\x01")
		default:
			w.WriteByte(byte(c))
		}
		w.WriteByte(0)
	}
	align()
	binary.Write(&w, binary.LittleEndian, idx)
	if layout == "6.4+" {
		offsets()
		align()
		for i := 0; i < n; i++ {
			binary.Write(&w, binary.LittleEndian, uint32(i))
		}
	}
	w.Write(bytes.Repeat([]byte{0xdd}, 64))
	return w.Bytes(), tt + int(idx['0'])
}

func TestParseKallsymsLayouts(t *testing.T) {
	const base = 0xffffffff9a000000
	for _, layout := range []string{"pre-6.4", "seqs", "6.4+"} {
		for _, n := range []int{300, 1024, 5000} {
			syms := synthSymbols(n, base)
			w, d := buildKallsyms(syms, base, layout)
			if found := findDigitRuns(w, 8); len(found) == 0 || found[0] != d {
				t.Fatalf("%s/%d: digit run at %v, want %d", layout, n, found, d)
			}
			got, info, err := ParseKallsyms(w, 0xffffffffa0000000, d, base)
			if err != nil {
				t.Fatalf("%s/%d: %v", layout, n, err)
			}
			if len(got) != n || info.SeqsOfNames != (layout == "seqs") || !info.AbsPercpu {
				t.Fatalf("%s/%d: %d symbols, info %+v", layout, n, len(got), info)
			}
			for i, s := range syms {
				if got[i].Name != s.name || got[i].Addr != s.addr || got[i].Type != s.typ {
					t.Fatalf("%s/%d: symbol %d = %+v, want %+v", layout, n, i, got[i], s)
				}
			}
			// the kernel image must start where _text says
			if _, _, err := ParseKallsyms(w, 0, d, base+0x200000); err == nil {
				t.Fatalf("%s/%d: accepted a table whose _text is elsewhere", layout, n)
			}
		}
	}
}

func TestSymbolsLookup(t *testing.T) {
	s := NewSymbols("test", []Symbol{{0x2000, "b", 't'}, {0x1000, "a", 'T'}, {0, "pcpu", 'A'}, {0x3000, "c", 'T'}})
	if a, ok := s.Lookup("b"); !ok || a != 0x2000 {
		t.Fatal("lookup by name")
	}
	if sym, off, ok := s.Nearest(0x2010); !ok || sym.Name != "b" || off != 0x10 {
		t.Fatalf("nearest: %+v %#x", sym, off)
	}
	if got := s.Describe(0x1008); got != "a+0x8" {
		t.Fatal(got)
	}
}

// Guests of one build at different KASLR offsets share one table; each
// sees its own addresses, and per-CPU offsets stay put.
func TestSymbolsShared(t *testing.T) {
	build := func(base uint64, extra string) *Symbols {
		return NewSymbols("test", []Symbol{{0x10, "pcpu_var", 'A'}, {base, "_text", 'T'}, {base + 0x40, "f", 't'}, {base + 0x100, extra, 'T'}})
	}
	a, b := build(0xffffffff81000000, "g"), build(0xffffffff9a200000, "g")
	if a.t != b.t {
		t.Fatal("same build at two offsets did not share a table")
	}
	if c := build(0xffffffff81000000, "h"); c.t == a.t {
		t.Fatal("different symbols shared a table")
	}
	for _, tc := range []struct {
		s    *Symbols
		name string
		want uint64
	}{{a, "f", 0xffffffff81000040}, {b, "f", 0xffffffff9a200040}, {a, "pcpu_var", 0x10}, {b, "pcpu_var", 0x10}, {b, "g", 0xffffffff9a200100}} {
		if got, ok := tc.s.Lookup(tc.name); !ok || got != tc.want {
			t.Errorf("%s = %#x, want %#x", tc.name, got, tc.want)
		}
	}
	if sym, ok := b.Next(0xffffffff9a200040); !ok || sym.Name != "g" || sym.Type != 'T' {
		t.Errorf("next after f: %+v", sym)
	}
	if _, ok := b.Next(0xffffffff9a200100); ok {
		t.Error("a symbol after the last")
	}
	n := 0
	for i, sym := range b.All() {
		if sym != b.At(i) {
			t.Fatalf("All and At disagree at %d", i)
		}
		n++
	}
	if n != b.Len() || n != 4 {
		t.Fatalf("All yielded %d of %d", n, b.Len())
	}
}

func FuzzParseKallsyms(f *testing.F) {
	const base = 0xffffffff81000000
	for _, layout := range []string{"pre-6.4", "seqs", "6.4+"} {
		w, d := buildKallsyms(synthSymbols(300, base), base, layout)
		f.Add(w, uint32(d))
	}
	f.Fuzz(func(t *testing.T, w []byte, d uint32) {
		syms, info, err := ParseKallsyms(w, base, int(d), 0)
		if err != nil {
			return
		}
		if len(syms) != info.NumSyms {
			t.Fatalf("%d symbols, header says %d", len(syms), info.NumSyms)
		}
		for i := 1; i < len(syms); i++ {
			if syms[i].Addr < syms[i-1].Addr {
				t.Fatal("unsorted result")
			}
		}
	})
}
