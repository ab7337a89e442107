package linux

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// testBTF builds a small BTF blob: struct cred-like and task-like types with
// a pointer, an array, an anonymous union and a bitfield.
func testBTF(t testing.TB) []byte {
	u32 := &btf.Int{Name: "unsigned int", Size: 4}
	s32 := &btf.Int{Name: "int", Size: 4, Encoding: btf.Signed}
	u8 := &btf.Int{Name: "unsigned char", Size: 1}
	char := &btf.Int{Name: "char", Size: 1, Encoding: btf.Char}
	kuid := &btf.Struct{Name: "kuid_t_s", Size: 4, Members: []btf.Member{{Name: "val", Type: u32}}}
	cred := &btf.Struct{Name: "cred", Size: 12, Members: []btf.Member{
		{Name: "usage", Type: s32}, {Name: "uid", Type: kuid, Offset: 32}, {Name: "gid", Type: kuid, Offset: 64}}}
	task := &btf.Struct{Name: "task_struct", Size: 48}
	task.Members = []btf.Member{
		{Name: "__state", Type: u32},
		{Name: "", Type: &btf.Union{Size: 4, Members: []btf.Member{{Name: "pid", Type: s32}, {Name: "raw", Type: u32}}}, Offset: 32},
		{Name: "prio", Type: u8, Offset: 64, BitfieldSize: 3},
		{Name: "policy", Type: u8, Offset: 67, BitfieldSize: 5},
		{Name: "comm", Type: &btf.Array{Type: char, Nelems: 16, Index: u32}, Offset: 128},
		{Name: "real_cred", Type: &btf.Pointer{Target: cred}, Offset: 256},
		{Name: "parent", Type: &btf.Pointer{Target: task}, Offset: 320},
	}
	b, err := btf.NewBuilder([]btf.Type{task}, nil)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := b.Marshal(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return blob
}

func TestFindBTFAndTypes(t *testing.T) {
	blob := testBTF(t)
	img := append(bytes.Repeat([]byte{0x9f, 0xeb, 0x01, 0x00}, 100), blob...) // false starts first
	img = append(img, make([]byte, 100)...)
	off, n, err := findBTF(img, 0xffffffff81000000, nil)
	if err != nil || off != 400 || n != len(blob) {
		t.Fatalf("findBTF: off %d n %d err %v", off, n, err)
	}
	spec, err := btf.LoadSpecFromReader(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	ty := newBTFTypes(spec, blob, "test")
	task, err := ty.Struct("task_struct")
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]uint64{"pid": 4, "raw": 4, "comm": 16, "real_cred": 32} {
		if off, err := task.FieldOffset(name); err != nil || off != want {
			t.Errorf("offset of %s: %d %v, want %d", name, off, err, want)
		}
	}
	// typed reads from a buffer
	buf := make([]byte, 48)
	binary.LittleEndian.PutUint32(buf[4:], 0xfffffffe) // pid -2
	buf[8] = 5 | 17<<3                                 // prio 5, policy 17
	copy(buf[16:], "swapper/0\x00junk")
	binary.LittleEndian.PutUint64(buf[32:], 0xffff888000001000)
	v := Value{Type: task, buf: buf}
	if p, _ := v.Field("pid"); mustInt(t, p) != -2 {
		t.Error("signed field")
	}
	if p, _ := v.Field("prio"); mustUint(t, p) != 5 {
		t.Error("bitfield prio")
	}
	if p, _ := v.Field("policy"); mustUint(t, p) != 17 {
		t.Error("bitfield policy")
	}
	if c, _ := v.Field("comm"); c.Str() != "swapper/0" {
		t.Errorf("comm %q", c.Str())
	}
	if c, _ := v.Field("real_cred"); c.Type.Elem().Name != "cred" {
		t.Error("pointer target")
	}
	if _, err := v.Field("nosuch"); err == nil {
		t.Error("missing field gave no error")
	}
	cred, _ := ty.Struct("cred")
	cb := []byte{1, 0, 0, 0, 0xe8, 3, 0, 0, 7, 0, 0, 0}
	if u, _ := (Value{Type: cred, buf: cb}).Field("uid"); mustUint(t, u) != 1000 {
		t.Error("single-member wrapper struct")
	}
}

func mustUint(t *testing.T, v Value) uint64 {
	t.Helper()
	x, err := v.Uint()
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func mustInt(t *testing.T, v Value) int64 {
	t.Helper()
	x, err := v.Int()
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// FuzzFindBTF: hostile bytes around BTF headers never panic; an accepted
// blob lies inside the image and parses or fails cleanly.
func FuzzFindBTF(f *testing.F) {
	f.Add(testBTF(f))
	f.Add(append([]byte{0x9f, 0xeb, 0x01, 0x00, 0x18, 0, 0, 0}, make([]byte, 40)...))
	f.Fuzz(func(t *testing.T, img []byte) {
		off, n, err := findBTF(img, 0, nil)
		if err != nil {
			return
		}
		if off < 0 || n <= 0 || off+n > len(img) {
			t.Fatalf("blob %d+%d outside %d-byte image", off, n, len(img))
		}
		btf.LoadSpecFromReader(bytes.NewReader(img[off : off+n]))
	})
}

func TestBTFScan(t *testing.T) {
	u32 := &btf.Int{Name: "unsigned int", Size: 4}
	e := &btf.Enum{Name: "pid_type", Size: 4, Values: []btf.EnumValue{{Name: "PIDTYPE_PID", Value: 0}, {Name: "PIDTYPE_TGID", Value: 1}}}
	e64 := &btf.Enum{Name: "big", Size: 8, Values: []btf.EnumValue{{Name: "BIG", Value: 1 << 40}}}
	s := &btf.Struct{Name: "s", Size: 8, Members: []btf.Member{{Name: "a", Type: u32}, {Name: "e", Type: e, Offset: 32}}}
	b, _ := btf.NewBuilder([]btf.Type{s, e64}, nil)
	blob, err := b.Marshal(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	enums, n, err := btfScan(blob)
	if err != nil || n != 4 || enums["PIDTYPE_TGID"] != 1 || enums["BIG"] != 1<<40 {
		t.Fatalf("%v %d %v", enums, n, err)
	}
}

// FuzzBTFScan: a hostile BTF blob never panics or reads out of bounds.
func FuzzBTFScan(f *testing.F) {
	f.Add(testBTF(f))
	f.Fuzz(func(t *testing.T, blob []byte) {
		enums, count, err := btfScan(blob)
		if err != nil {
			return
		}
		if count*12 > len(blob) {
			t.Fatalf("%d types in a %d-byte blob (a type takes 12 bytes at least)", count, len(blob))
		}
		for n := range enums {
			if n == "" || !bytes.Contains(blob, append([]byte(n), 0)) {
				t.Fatalf("enumerator %q is not a string of the blob", n)
			}
		}
		// cilium/ebpf as the oracle: every enumerator it reads from a blob
		// both accept is in the scan's map, with the value it read
		spec, err := btf.LoadSpecFromReader(bytes.NewReader(blob))
		if err != nil {
			return
		}
		seen := map[string]int{}
		var all []btf.EnumValue
		for typ, err := range spec.All() {
			if err != nil {
				return
			}
			if e, ok := typ.(*btf.Enum); ok && !e.Signed {
				for _, v := range e.Values {
					seen[v.Name]++
					all = append(all, v)
				}
			}
		}
		for _, v := range all {
			got, ok := enums[v.Name]
			if v.Name != "" && seen[v.Name] == 1 && (!ok || uint64(got) != v.Value) {
				t.Fatalf("enumerator %s: scan %d (found %v), cilium/ebpf %d", v.Name, got, ok, v.Value)
			}
		}
	})
}
