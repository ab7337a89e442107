package linux

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Value is a typed object read from guest kernel memory. Structs are read
// whole, once; fields are slices of that snapshot, so a task's fields are
// consistent with each other even while the guest runs.
type Value struct {
	k    *Kernel
	Addr uint64
	Type *Type
	buf  []byte
	// bitfield position inside buf
	bitOff, bitSize uint32
}

// maxObjectSize bounds single reads of typed objects.
const maxObjectSize = 1 << 20

// Object reads an object of the named struct type at addr.
func (k *Kernel) Object(structName string, addr uint64) (Value, error) {
	t, err := k.Types.Struct(structName)
	if err != nil {
		return Value{}, err
	}
	return k.ReadValue(t, addr)
}

// ReadValue reads an object of type t at addr.
func (k *Kernel) ReadValue(t *Type, addr uint64) (Value, error) {
	if t == nil || t.Size == 0 {
		return Value{}, fmt.Errorf("read object at %#x: type %v has no size", addr, t)
	}
	// a pointer target (from Deref) is first met here: check its layout
	if err := t.Check(); err != nil {
		return Value{}, fmt.Errorf("read object at %#x: %w", addr, err)
	}
	if t.Size > maxObjectSize {
		return Value{}, fmt.Errorf("read %v at %#x: %d bytes is over the limit", t, addr, t.Size)
	}
	buf := make([]byte, t.Size)
	if _, err := k.AS.ReadAt(buf, int64(addr)); err != nil {
		return Value{}, fmt.Errorf("read %v at %#x: %w", t, addr, err)
	}
	return Value{k: k, Addr: addr, Type: t, buf: buf}, nil
}

// Valid reports whether the value holds data.
func (v Value) Valid() bool { return v.Type != nil }

// Bytes are the raw bytes of the value (not for bitfields).
func (v Value) Bytes() []byte { return v.buf }

// Field returns a member by name or dotted path (members by value only).
func (v Value) Field(path string) (Value, error) {
	if v.Type == nil {
		return Value{}, fmt.Errorf("field %s of an invalid value", path)
	}
	if err := v.Type.Check(); err != nil {
		return Value{}, fmt.Errorf("field %s: %w", path, err)
	}
	m, ok := v.Type.Field(path)
	if !ok {
		return Value{}, fmt.Errorf("%v has no member %s", v.Type, path)
	}
	// A checked layout keeps members inside the type; the buffer is
	// checked as well, since a Value may hold fewer bytes than its type
	// (one built from a raw buffer).
	if m.BitSize != 0 {
		start := m.Offset / 8
		b, ok := bytesAt(v.buf, start, (m.Offset%8+uint64(m.BitSize)+7)/8)
		if !ok {
			return Value{}, fmt.Errorf("bitfield %s of %v lies outside the object", path, v.Type)
		}
		return Value{k: v.k, Addr: v.Addr + start, Type: m.Type, buf: b, bitOff: uint32(m.Offset % 8), bitSize: m.BitSize}, nil
	}
	start := m.Offset / 8
	b, ok := bytesAt(v.buf, start, m.Type.Size)
	if !ok {
		return Value{}, fmt.Errorf("member %s of %v lies outside the object (%d+%d > %d bytes)", path, v.Type, start, m.Type.Size, len(v.buf))
	}
	return Value{k: v.k, Addr: v.Addr + start, Type: m.Type, buf: b}, nil
}

// Uint reads an integer, enum, pointer or bitfield as unsigned.
func (v Value) Uint() (uint64, error) {
	if v.Type == nil {
		return 0, fmt.Errorf("invalid value")
	}
	if v.bitSize != 0 {
		var b [16]byte
		copy(b[:], v.buf)
		x := binary.LittleEndian.Uint64(b[:]) >> v.bitOff
		if v.bitOff+v.bitSize > 64 {
			x |= binary.LittleEndian.Uint64(b[8:]) << (64 - v.bitOff)
		}
		if v.bitSize < 64 {
			x &= 1<<v.bitSize - 1
		}
		return x, nil
	}
	switch len(v.buf) {
	case 1:
		return uint64(v.buf[0]), nil
	case 2:
		return uint64(binary.LittleEndian.Uint16(v.buf)), nil
	case 4:
		return uint64(binary.LittleEndian.Uint32(v.buf)), nil
	case 8:
		return binary.LittleEndian.Uint64(v.buf), nil
	}
	// single-member wrappers such as kuid_t, atomic_t, refcount_t
	if (v.Type.Kind == KindStruct || v.Type.Kind == KindUnion) && len(v.Type.Members) >= 1 {
		f, err := v.Field(v.Type.Members[0].Name)
		if err == nil {
			return f.Uint()
		}
	}
	return 0, fmt.Errorf("%v (%d bytes) is not an integer", v.Type, len(v.buf))
}

// Int reads a signed integer (sign-extended by the type's size).
func (v Value) Int() (int64, error) {
	x, err := v.Uint()
	if err != nil {
		return 0, err
	}
	bits := uint(len(v.buf) * 8)
	if v.bitSize != 0 {
		bits = uint(v.bitSize)
	}
	if v.Type.Kind == KindStruct || v.Type.Kind == KindUnion {
		bits = 32
		if v.Type.Size == 8 {
			bits = 64
		}
	}
	if bits < 64 && x&(1<<(bits-1)) != 0 {
		x |= ^uint64(0) << bits
	}
	return int64(x), nil
}

// Ptr reads a pointer.
func (v Value) Ptr() (uint64, error) {
	if v.Type == nil || v.bitSize != 0 || (v.Type.Kind != KindPointer && !(v.Type.Kind == KindInt && v.Type.Size == 8)) {
		return 0, fmt.Errorf("%v is not a pointer", v.Type)
	}
	p, ok := u64At(v.buf, 0)
	if !ok || len(v.buf) != 8 {
		return 0, fmt.Errorf("%v at %#x: %d bytes, not a pointer", v.Type, v.Addr, len(v.buf))
	}
	return p, nil
}

// Deref follows a pointer and reads the object it points to.
func (v Value) Deref() (Value, error) {
	p, err := v.Ptr()
	if err != nil {
		return Value{}, err
	}
	if p == 0 {
		return Value{}, fmt.Errorf("NULL %v at %#x", v.Type, v.Addr)
	}
	t := v.Type.Elem()
	if t == nil || t.Kind == KindVoid {
		return Value{}, fmt.Errorf("cannot follow %v at %#x", v.Type, v.Addr)
	}
	return v.k.ReadValue(t, p)
}

// Str reads a NUL-terminated char array.
func (v Value) Str() string {
	b := v.buf
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// Index returns element i of an array.
func (v Value) Index(i int) (Value, error) {
	if v.Type == nil || v.Type.Kind != KindArray {
		return Value{}, fmt.Errorf("%v is not an array", v.Type)
	}
	e := v.Type.Elem()
	if i < 0 || uint64(i) >= v.Type.Len || e == nil {
		return Value{}, fmt.Errorf("index %d out of range for %v", i, v.Type)
	}
	// i is checked against the bytes held before multiplying, so a hostile
	// Len or element size cannot wrap the offset around
	var b []byte
	ok := e.Size == 0 || uint64(i) < uint64(len(v.buf))/e.Size
	if ok {
		b, ok = bytesAt(v.buf, uint64(i)*e.Size, e.Size)
	}
	if !ok {
		return Value{}, fmt.Errorf("element %d of %v at %#x lies outside the %d bytes read", i, v.Type, v.Addr, len(v.buf))
	}
	return Value{k: v.k, Addr: v.Addr + uint64(i)*e.Size, Type: e, buf: b}, nil
}

// fields reads several fields, remembering the first error per field so a
// view can report what it could not read without stopping.
type fields struct {
	v    Value
	errs []string
}

func (f *fields) note(err error) {
	if err != nil && len(f.errs) < 16 {
		f.errs = append(f.errs, err.Error())
	}
}

func (f *fields) uint(path string) uint64 {
	x, err := f.v.Field(path)
	if err != nil {
		f.note(err)
		return 0
	}
	u, err := x.Uint()
	f.note(err)
	return u
}

func (f *fields) int(path string) int64 {
	x, err := f.v.Field(path)
	if err != nil {
		f.note(err)
		return 0
	}
	u, err := x.Int()
	f.note(err)
	return u
}

func (f *fields) ptr(path string) uint64 {
	x, err := f.v.Field(path)
	if err != nil {
		f.note(err)
		return 0
	}
	u, err := x.Ptr()
	f.note(err)
	return u
}

func (f *fields) str(path string) string {
	x, err := f.v.Field(path)
	if err != nil {
		f.note(err)
		return ""
	}
	return x.Str()
}
