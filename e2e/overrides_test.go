package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"
	"github.com/vmwatch/vmwatch/linux"
	"github.com/vmwatch/vmwatch/testvm"
)

// neededSymbols are the kernel symbols vmwatch's views use.
var neededSymbols = []string{"_text", "init_task", "init_top_pgt", "linux_banner", "modules", "prb", "socket_file_ops", "__start_BTF", "__stop_BTF"}

// guestSystemMap writes a System.map (link-time addresses, as the -dbg
// package's would be) made from the guest's own /proc/kallsyms.
func guestSystemMap(t *testing.T, series string, path string) map[string]uint64 {
	vm := standard(t, series)
	pat := strings.Join(neededSymbols, "|")
	out, err := vm.Run(fmt.Sprintf("grep -E ' (%s)$' /proc/kallsyms", pat))
	if err != nil {
		t.Fatal(err)
	}
	runtime := map[string]uint64{}
	types := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		a, _ := strconv.ParseUint(f[0], 16, 64)
		runtime[f[2]] = a
		types[f[2]] = f[1]
	}
	shift := runtime["_text"] - 0xffffffff81000000
	var b strings.Builder
	link := map[string]uint64{}
	for name, a := range runtime {
		link[name] = a - shift
		fmt.Fprintf(&b, "%016x %s %s\n", a-shift, types[name], name)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return link
}

// TestSystemMap: with --system-map, symbols come from the file (moved by
// the KASLR shift) and the answers still match the guest's /proc.
func TestSystemMap(t *testing.T) {
	forEachKernel(t, func(t *testing.T, series string) {
		vm := standard(t, series)
		p := filepath.Join(t.TempDir(), "System.map")
		guestSystemMap(t, series, p)
		var info struct {
			SymbolSource string `json:"symbol_source"`
			Symbols      int    `json:"symbols"`
		}
		vmwatchJSON(t, &info, "info", "-t", "qmp:"+vm.QMPPath, "--system-map", p)
		if !strings.Contains(info.SymbolSource, "System.map") || info.Symbols != len(neededSymbols) {
			t.Errorf("symbols: %+v", info)
		}
		checkPS(t, vm, "qmp:"+vm.QMPPath, "--system-map", p)
		// Debian's placeholder System.map is refused with a useful message
		ph := filepath.Join(t.TempDir(), "placeholder")
		os.WriteFile(ph, []byte("ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n"), 0o644)
		if _, stderr, err := vmwatchRun("ps", "-t", "qmp:"+vm.QMPPath, "--system-map", ph); err == nil || !strings.Contains(string(stderr), "_text") {
			t.Errorf("placeholder System.map: err %v, stderr %s", err, stderr)
		}
	})
}

// TestISF: with --isf, types come from a Volatility 3 ISF file instead of
// BTF, and the answers still match the guest's /proc. The ISF is written
// from the guest's types (as dwarf2json would from the -dbg package) with
// the guest's own symbols.
func TestISF(t *testing.T) {
	forEachKernel(t, func(t *testing.T, series string) {
		vm := standard(t, series)
		dir := t.TempDir()
		syms := guestSystemMap(t, series, filepath.Join(dir, "System.map"))
		spec, err := btf.LoadSpecFromReader(bytes.NewReader(guestBTF(t, vm)))
		if err != nil {
			t.Fatalf("the BTF read from guest memory at the guest's own __start_BTF: %v", err)
		}
		isf := btfToISF(t, spec, syms)
		p := filepath.Join(dir, "kernel.json")
		if err := os.WriteFile(p, isf, 0o644); err != nil {
			t.Fatal(err)
		}
		var info struct {
			TypeSource string `json:"type_source"`
		}
		vmwatchJSON(t, &info, "info", "-t", "qmp:"+vm.QMPPath, "--isf", p)
		if !strings.HasPrefix(info.TypeSource, "ISF") {
			t.Errorf("types from %q, want the ISF", info.TypeSource)
		}
		checkPS(t, vm, "qmp:"+vm.QMPPath, "--isf", p)
		var mods []linux.Module
		vmwatchJSON(t, &mods, "lsmod", "-t", "qmp:"+vm.QMPPath, "--isf", p)
		if len(mods) != 2 {
			t.Errorf("lsmod with ISF: %+v", mods)
		}
	})
}

// guestBTF reads the kernel's BTF from guest memory with nothing of
// vmwatch's: __start_BTF and __stop_BTF from the guest's /proc/kallsyms,
// the kernel image's physical start ("Kernel code", which begins at _text)
// from its /proc/iomem, the bytes from the memory file.
func guestBTF(t *testing.T, vm *testvm.VM) []byte {
	t.Helper()
	out, err := vm.Run("grep -E ' (_text|__start_BTF|__stop_BTF)$' /proc/kallsyms; grep 'Kernel code' /proc/iomem")
	if err != nil {
		t.Fatal(err)
	}
	sym := map[string]uint64{}
	var codePA uint64
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 3:
			sym[f[2]], _ = strconv.ParseUint(f[0], 16, 64)
		case strings.Contains(line, "Kernel code"):
			r := strings.SplitN(strings.TrimSpace(strings.SplitN(line, ":", 2)[0]), "-", 2)
			codePA, _ = strconv.ParseUint(r[0], 16, 64)
		}
	}
	start, stop, text := sym["__start_BTF"], sym["__stop_BTF"], sym["_text"]
	if start == 0 || stop <= start || stop-start > 64<<20 || text == 0 || codePA == 0 {
		t.Fatalf("guest kallsyms/iomem give no BTF range: %q", out)
	}
	m := openGuestMemory(t, vm)
	b := m.read(codePA+(start-text), int(stop-start))
	if len(b) < 4 || b[0] != 0x9f || b[1] != 0xeb {
		t.Fatalf("no BTF magic at physical %#x (the guest's __start_BTF)", codePA+(start-text))
	}
	return b
}

// btfToISF writes types in Volatility 3's ISF schema.
func btfToISF(t *testing.T, spec *btf.Spec, syms map[string]uint64) []byte {
	base := map[string]any{"void": map[string]any{"kind": "void", "size": 0, "signed": false, "endian": "little"},
		"pointer": map[string]any{"kind": "int", "size": 8, "signed": false, "endian": "little"}}
	user := map[string]any{}
	enums := map[string]any{}
	names := map[btf.Type]string{}
	n := 0
	nameOf := func(typ btf.Type) string {
		if s, ok := names[typ]; ok {
			return s
		}
		s := typ.TypeName()
		if s == "" {
			n++
			s = fmt.Sprintf("unnamed_%d", n)
		}
		names[typ] = s
		return s
	}
	var ref func(typ btf.Type) map[string]any
	var addComposite func(typ btf.Type)
	ref = func(typ btf.Type) map[string]any {
		typ = btf.UnderlyingType(typ)
		switch v := typ.(type) {
		case *btf.Int:
			kind := "int"
			if v.Encoding&btf.Bool != 0 {
				kind = "bool"
			}
			base[v.Name] = map[string]any{"kind": kind, "size": v.Size, "signed": v.Encoding&btf.Signed != 0, "endian": "little"}
			return map[string]any{"kind": "base", "name": v.Name}
		case *btf.Pointer:
			return map[string]any{"kind": "pointer", "subtype": ref(v.Target)}
		case *btf.Array:
			return map[string]any{"kind": "array", "count": v.Nelems, "subtype": ref(v.Type)}
		case *btf.Struct, *btf.Union:
			addComposite(v)
			kind := "struct"
			if _, ok := v.(*btf.Union); ok {
				kind = "union"
			}
			return map[string]any{"kind": kind, "name": nameOf(v)}
		case *btf.Enum:
			name := nameOf(v)
			if _, ok := enums[name]; !ok {
				c := map[string]int64{}
				for _, e := range v.Values {
					c[e.Name] = int64(e.Value)
				}
				enums[name] = map[string]any{"size": v.Size, "base": "int", "constants": c}
			}
			return map[string]any{"kind": "enum", "name": name}
		case *btf.FuncProto:
			return map[string]any{"kind": "function"}
		case *btf.Fwd:
			return map[string]any{"kind": "struct", "name": v.Name}
		}
		return map[string]any{"kind": "base", "name": "void"}
	}
	addComposite = func(typ btf.Type) {
		name := nameOf(typ)
		if _, ok := user[name]; ok {
			return
		}
		var members []btf.Member
		var size uint32
		kind := "struct"
		switch v := typ.(type) {
		case *btf.Struct:
			members, size = v.Members, v.Size
		case *btf.Union:
			members, size, kind = v.Members, v.Size, "union"
		}
		fields := map[string]any{}
		entry := map[string]any{"kind": kind, "size": size, "fields": fields}
		user[name] = entry
		for _, m := range members {
			f := map[string]any{"offset": m.Offset.Bytes()}
			tr := ref(m.Type)
			if m.BitfieldSize > 0 {
				unit := uint32(sizeOf(m.Type))
				off := uint32(m.Offset) / 8 / unit * unit
				f["offset"] = off
				f["type"] = map[string]any{"kind": "bitfield", "bit_position": uint32(m.Offset) - off*8, "bit_length": uint32(m.BitfieldSize), "type": tr}
			} else {
				f["type"] = tr
			}
			fname := m.Name
			if fname == "" {
				fname = "__anon_" + nameOf(btf.UnderlyingType(m.Type))
				f["anonymous"] = true
			}
			fields[fname] = f
		}
	}
	for typ, err := range spec.All() {
		if err != nil {
			t.Fatal(err)
		}
		switch typ.(type) {
		case *btf.Struct, *btf.Union:
			if typ.TypeName() != "" {
				addComposite(typ)
			}
		case *btf.Enum:
			ref(typ)
		}
	}
	symbols := map[string]any{}
	for name, a := range syms {
		symbols[name] = map[string]any{"address": a}
	}
	b, err := json.Marshal(map[string]any{
		"metadata":   map[string]any{"format": "6.2.0", "producer": map[string]any{"name": "vmwatch-e2e"}},
		"base_types": base, "user_types": user, "enums": enums, "symbols": symbols,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sizeOf(typ btf.Type) int {
	n, err := btf.Sizeof(typ)
	if err != nil || n == 0 {
		return 1
	}
	return n
}
