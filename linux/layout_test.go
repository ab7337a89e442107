package linux

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// TestHostBTFLayouts: every struct and union of a real kernel's BTF (the
// machine running the test, when it exposes one) passes Check, so the
// validation rejects nothing a kernel really builds.
func TestHostBTFLayouts(t *testing.T) {
	const path = "/sys/kernel/btf/vmlinux"
	blob, err := os.ReadFile(path)
	if err != nil {
		t.Skipf("no host BTF: %v", err)
	}
	spec, err := btf.LoadSpec(path)
	if err != nil {
		t.Skipf("host BTF: %v", err)
	}
	ty := newBTFTypes(spec, blob, path)
	n := 0
	for typ, err := range spec.All() {
		if err != nil {
			t.Fatal(err)
		}
		switch typ.(type) {
		case *btf.Struct, *btf.Union:
		default:
			continue
		}
		ty.mu.Lock()
		c := ty.convert(typ, 0)
		ty.mu.Unlock()
		if err := c.Check(); err != nil {
			t.Errorf("%v: %v", typ, err)
		}
		n++
	}
	t.Logf("%d structs and unions checked", n)
}

// TestLayoutCheck: impossible layouts are errors that name the type and
// member, from every way in.
func TestLayoutCheck(t *testing.T) {
	u32 := &Type{Kind: KindInt, Name: "u32", Size: 4}
	cases := []struct {
		name string
		typ  *Type
		want string
	}{
		{"member past the end", &Type{Kind: KindStruct, Name: "task_struct", Size: 2048,
			Members: []Member{{Name: "pid", Offset: 4096 * 8, Type: u32}}},
			"type task_struct: member pid at byte 4096 (size 4) outside the struct's 2048 bytes"},
		{"member straddling the end", &Type{Kind: KindStruct, Name: "s", Size: 6,
			Members: []Member{{Name: "a", Offset: 32, Type: u32}}}, "member a at byte 4 (size 4)"},
		{"bitfield past the end", &Type{Kind: KindStruct, Name: "s", Size: 1,
			Members: []Member{{Name: "b", Offset: 6, BitSize: 3, Type: u32}}}, "member b at bit 6 (3 bits)"},
		{"bitfield wider than its type", &Type{Kind: KindStruct, Name: "s", Size: 16,
			Members: []Member{{Name: "b", BitSize: 33, Type: u32}}}, "bitfield of 33 bits"},
		{"bitfield of a pointer", &Type{Kind: KindStruct, Name: "s", Size: 16,
			Members: []Member{{Name: "b", BitSize: 3, Type: &Type{Kind: KindPointer, Size: 8}}}}, "not an integer"},
		{"huge struct", &Type{Kind: KindStruct, Name: "s", Size: 1 << 40}, "over the limit"},
		{"wrapped array", &Type{Kind: KindStruct, Name: "s", Size: 8, Members: []Member{{Name: "a",
			Type: &Type{Kind: KindArray, Len: 1 << 62, Size: 0, elem: u32}}}}, "member a: type u32[", // 2^62*4 wraps to 0
		},
		{"nested", &Type{Kind: KindStruct, Name: "outer", Size: 8, Members: []Member{{Name: "in", Type: &Type{Kind: KindStruct, Name: "inner", Size: 4,
			Members: []Member{{Name: "x", Offset: 64, Type: u32}}}}}}, "type outer: member in: type inner: member x"},
	}
	for _, c := range cases {
		err := c.typ.Check()
		var le *LayoutError
		if !errors.As(err, &le) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want a LayoutError with %q", c.name, err, c.want)
			continue
		}
		if len(c.typ.Members) > 0 && c.typ.HasField(c.typ.Members[0].Name) {
			t.Errorf("%s: Field found a member of an invalid type", c.name)
		}
		if _, err := c.typ.FieldOffset("pid"); !errors.As(err, &le) {
			t.Errorf("%s: FieldOffset: %v", c.name, err)
		}
		if _, err := (Value{Type: c.typ, buf: make([]byte, 16)}).Field("a"); !errors.As(err, &le) {
			t.Errorf("%s: Value.Field: %v", c.name, err)
		}
	}
	// a struct that contains itself by value
	self := &Type{Kind: KindStruct, Name: "loop", Size: 8}
	self.Members = []Member{{Name: "me", Type: self}}
	if err := self.Check(); err == nil || !strings.Contains(err.Error(), "contains itself") {
		t.Errorf("self-containing struct: %v", err)
	}
}
