package linux

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/cilium/ebpf/btf"
)

// Kind classifies a Type.
type Kind uint8

// Kinds of types.
const (
	KindVoid Kind = iota
	KindInt
	KindPointer
	KindArray
	KindStruct
	KindUnion
	KindEnum
	KindFloat
	KindFunc
)

var kindNames = [...]string{"void", "int", "pointer", "array", "struct", "union", "enum", "float", "function"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", k)
}

// Type is the layout of a kernel type, whatever described it (BTF from guest
// memory, or a Volatility ISF file). Pointer targets resolve lazily, so the
// graph is only built as far as it is used.
type Type struct {
	Kind    Kind
	Name    string
	Size    uint64
	Signed  bool
	Len     uint64 // arrays
	Members []Member
	Values  []EnumValue

	elem   *Type
	elemFn func() *Type
	once   sync.Once

	fieldsOnce sync.Once
	fields     map[string]Member

	// the result of validate, computed once (see Check)
	checkOnce sync.Once
	checkErr  error
}

// Member is a field of a struct or union. Offset is in bits from the start
// of the outermost object it was looked up in.
type Member struct {
	Name    string
	Offset  uint64 // bits
	BitSize uint32 // non-zero for bitfields
	Type    *Type
}

// EnumValue is one named value of an enum.
type EnumValue struct {
	Name  string
	Value int64
}

// Elem is the target of a pointer or the element of an array.
func (t *Type) Elem() *Type {
	t.once.Do(func() {
		if t.elem == nil && t.elemFn != nil {
			t.elem = t.elemFn()
		}
	})
	return t.elem
}

func (t *Type) String() string {
	switch t.Kind {
	case KindStruct, KindUnion, KindEnum:
		return t.Kind.String() + " " + t.Name
	case KindPointer:
		if e := t.Elem(); e != nil {
			return e.String() + " *"
		}
		return "void *"
	case KindArray:
		if e := t.Elem(); e != nil {
			return fmt.Sprintf("%s[%d]", e, t.Len)
		}
	}
	if t.Name != "" {
		return t.Name
	}
	return t.Kind.String()
}

// Field finds a member by name, looking into anonymous structs and unions.
// A dotted path ("se.sum_exec_runtime") descends into members by value.
//
// A type whose layout fails Check has no fields: its members cannot be
// trusted to lie inside it.
func (t *Type) Field(path string) (Member, bool) {
	if t.Check() != nil {
		return Member{}, false
	}
	cur := t
	var total Member
	for i, name := range strings.Split(path, ".") {
		if cur == nil {
			return Member{}, false
		}
		m, ok := cur.field(name)
		if !ok {
			return Member{}, false
		}
		if i == 0 {
			total = m
		} else {
			if total.BitSize != 0 {
				return Member{}, false
			}
			total.Name = path
			total.Offset += m.Offset
			total.BitSize = m.BitSize
			total.Type = m.Type
		}
		cur = m.Type
	}
	return total, true
}

func (t *Type) field(name string) (Member, bool) {
	if t.Kind != KindStruct && t.Kind != KindUnion {
		return Member{}, false
	}
	t.fieldsOnce.Do(func() {
		t.fields = map[string]Member{}
		var walk func(ms []Member, base uint64, depth int)
		walk = func(ms []Member, base uint64, depth int) {
			if depth > 16 {
				return
			}
			for _, m := range ms {
				m.Offset += base
				if m.Name == "" && m.Type != nil && (m.Type.Kind == KindStruct || m.Type.Kind == KindUnion) {
					walk(m.Type.Members, m.Offset, depth+1)
					continue
				}
				if _, dup := t.fields[m.Name]; !dup {
					t.fields[m.Name] = m
				}
			}
		}
		walk(t.Members, 0, 0)
	})
	m, ok := t.fields[name]
	return m, ok
}

// HasField reports whether a struct has a member of that name.
func (t *Type) HasField(path string) bool {
	_, ok := t.Field(path)
	return ok
}

// FieldOffset returns a member's byte offset.
func (t *Type) FieldOffset(path string) (uint64, error) {
	if err := t.Check(); err != nil {
		return 0, err
	}
	m, ok := t.Field(path)
	if !ok {
		return 0, fmt.Errorf("%s has no member %s", t, path)
	}
	return m.Offset / 8, nil
}

// EnumName returns the name of an enum value.
func (t *Type) EnumName(v int64) (string, bool) {
	for _, e := range t.Values {
		if e.Value == v {
			return e.Name, true
		}
	}
	return "", false
}

// Types is a source of kernel type layouts.
type Types interface {
	// Struct returns the struct or union of that name.
	Struct(name string) (*Type, error)
	// Enum returns the enum of that name.
	Enum(name string) (*Type, error)
	// EnumConstant returns the value of an enumerator, e.g. "MOD_TEXT".
	EnumConstant(name string) (int64, error)
	// Count is the number of types.
	Count() int
	// Source names where the types came from.
	Source() string
}

// ErrNoType is wrapped by lookups of types that do not exist.
var ErrNoType = errors.New("type not found")

// btfTypes converts BTF (cilium/ebpf) into Types on demand.
type btfTypes struct {
	spec   *btf.Spec
	count  int
	source string

	mu    sync.Mutex
	conv  map[btf.Type]*Type
	enums map[string]int64 // every enumerator, from a scan of the raw BTF
	named map[string]namedType
}

func newBTFTypes(spec *btf.Spec, blob []byte, source string) *btfTypes {
	b := &btfTypes{spec: spec, source: source, conv: map[btf.Type]*Type{}}
	b.enums, b.count, _ = btfScan(blob)
	return b
}

// Count is the number of types.
func (b *btfTypes) Count() int { return b.count }

func (b *btfTypes) Source() string  { return b.source }
func (b *btfTypes) Spec() *btf.Spec { return b.spec }

// byName finds a type by kind ("struct", "enum") and name. Results are
// kept: views look the same few types up for every object they read, and
// a lookup in the spec inflates the BTF type each time.
func (b *btfTypes) byName(kind, name string, want func(btf.Type) bool) (*Type, error) {
	key := kind + " " + name
	b.mu.Lock()
	r, ok := b.named[key]
	b.mu.Unlock()
	if ok {
		return r.t, r.err
	}
	t, err := b.lookup(name, want)
	b.mu.Lock()
	if b.named == nil {
		b.named = map[string]namedType{}
	}
	b.named[key] = namedType{t, err}
	b.mu.Unlock()
	return t, err
}

type namedType struct {
	t   *Type
	err error
}

func (b *btfTypes) lookup(name string, want func(btf.Type) bool) (*Type, error) {
	ts, err := b.spec.AnyTypesByName(name)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, ErrNoType)
	}
	for _, t := range ts {
		if want(t) {
			b.mu.Lock()
			defer b.mu.Unlock()
			c := b.convert(t, 0)
			// the guest's BTF is hostile: a layout is checked before use
			// (Check follows no pointers, so it never needs b.mu itself)
			if err := c.Check(); err != nil {
				return nil, err
			}
			return c, nil
		}
	}
	return nil, fmt.Errorf("%s: %w", name, ErrNoType)
}

func (b *btfTypes) Struct(name string) (*Type, error) {
	t, err := b.byName("struct", name, func(t btf.Type) bool {
		switch t.(type) {
		case *btf.Struct, *btf.Union:
			return true
		}
		return false
	})
	var le *LayoutError
	if errors.As(err, &le) {
		return nil, fmt.Errorf("%w in %s", err, b.source)
	}
	if err != nil {
		return nil, fmt.Errorf("struct %w in %s", err, b.source)
	}
	return t, nil
}

func (b *btfTypes) Enum(name string) (*Type, error) {
	t, err := b.byName("enum", name, func(t btf.Type) bool { _, ok := t.(*btf.Enum); return ok })
	var le *LayoutError
	if errors.As(err, &le) {
		return nil, fmt.Errorf("%w in %s", err, b.source)
	}
	if err != nil {
		return nil, fmt.Errorf("enum %w in %s", err, b.source)
	}
	return t, nil
}

func (b *btfTypes) EnumConstant(name string) (int64, error) {
	v, ok := b.enums[name]
	if !ok {
		return 0, fmt.Errorf("enumerator %s: %w in %s", name, ErrNoType, b.source)
	}
	return v, nil
}

// resolveFwd finds the full definition of a forward-declared struct.
func (b *btfTypes) resolveFwd(f *btf.Fwd) btf.Type {
	ts, err := b.spec.AnyTypesByName(f.Name)
	if err != nil {
		return f
	}
	for _, t := range ts {
		switch t.(type) {
		case *btf.Struct, *btf.Union:
			return t
		}
	}
	return f
}

// convert must be called with b.mu held.
func (b *btfTypes) convert(t btf.Type, depth int) *Type {
	if t == nil {
		return &Type{Kind: KindVoid}
	}
	if c, ok := b.conv[t]; ok {
		return c
	}
	orig := t
	t = btf.UnderlyingType(t)
	if f, ok := t.(*btf.Fwd); ok {
		t = b.resolveFwd(f)
	}
	if c, ok := b.conv[t]; ok {
		b.conv[orig] = c
		return c
	}
	out := &Type{}
	b.conv[orig] = out
	b.conv[t] = out
	if depth > 64 {
		out.Kind = KindVoid
		return out
	}
	switch v := t.(type) {
	case *btf.Int:
		out.Kind, out.Name, out.Size, out.Signed = KindInt, v.Name, uint64(v.Size), v.Encoding&btf.Signed != 0
	case *btf.Pointer:
		out.Kind, out.Size = KindPointer, 8
		target := v.Target
		out.elemFn = func() *Type {
			b.mu.Lock()
			defer b.mu.Unlock()
			return b.convert(target, 0)
		}
	case *btf.Array:
		out.Kind, out.Len = KindArray, uint64(v.Nelems)
		out.elem = b.convert(v.Type, depth+1)
		out.Size = out.Len * out.elem.Size
	case *btf.Struct:
		out.Kind, out.Name, out.Size = KindStruct, v.Name, uint64(v.Size)
		out.Members = b.members(v.Members, depth)
	case *btf.Union:
		out.Kind, out.Name, out.Size = KindUnion, v.Name, uint64(v.Size)
		out.Members = b.members(v.Members, depth)
	case *btf.Enum:
		out.Kind, out.Name, out.Size, out.Signed = KindEnum, v.Name, uint64(v.Size), v.Signed
		for _, e := range v.Values {
			out.Values = append(out.Values, EnumValue{e.Name, int64(e.Value)})
		}
	case *btf.Float:
		out.Kind, out.Name, out.Size = KindFloat, v.Name, uint64(v.Size)
	case *btf.Func, *btf.FuncProto:
		out.Kind = KindFunc
	case *btf.Fwd:
		out.Kind, out.Name = KindStruct, v.Name
	default:
		out.Kind = KindVoid
	}
	return out
}

func (b *btfTypes) members(ms []btf.Member, depth int) []Member {
	out := make([]Member, 0, len(ms))
	for _, m := range ms {
		out = append(out, Member{Name: m.Name, Offset: uint64(m.Offset), BitSize: uint32(m.BitfieldSize), Type: b.convert(m.Type, depth+1)})
	}
	return out
}
