package linux

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/ulikunitz/xz"
)

// ISF is a Volatility 3 Intermediate Symbol Format file: the types and
// symbols of one kernel build, for kernels without BTF.
type ISF struct {
	path string
	raw  isfFile

	mu   sync.Mutex
	conv map[string]*Type
}

type isfFile struct {
	BaseTypes map[string]struct {
		Size   uint64 `json:"size"`
		Signed bool   `json:"signed"`
		Kind   string `json:"kind"`
	} `json:"base_types"`
	UserTypes map[string]struct {
		Kind   string              `json:"kind"`
		Size   uint64              `json:"size"`
		Fields map[string]isfField `json:"fields"`
	} `json:"user_types"`
	Enums map[string]struct {
		Size      uint64           `json:"size"`
		Base      string           `json:"base"`
		Constants map[string]int64 `json:"constants"`
	} `json:"enums"`
	Symbols map[string]struct {
		Address uint64 `json:"address"`
	} `json:"symbols"`
}

type isfField struct {
	Offset    uint64          `json:"offset"`
	Anonymous bool            `json:"anonymous"`
	Type      json.RawMessage `json:"type"`
}

type isfTypeRef struct {
	Kind        string          `json:"kind"`
	Name        string          `json:"name"`
	Count       uint64          `json:"count"`
	Subtype     json.RawMessage `json:"subtype"`
	Type        json.RawMessage `json:"type"`
	BitPosition uint32          `json:"bit_position"`
	BitLength   uint32          `json:"bit_length"`
}

// maxISFSize bounds an ISF file once decompressed.
const maxISFSize = 2 << 30

// LoadISF reads an ISF JSON file (".xz" compressed or not).
func LoadISF(path string) (*ISF, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--isf: %w", err)
	}
	defer f.Close()
	var r io.Reader = f
	if strings.HasSuffix(path, ".xz") {
		xr, err := xz.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("--isf %s: %w", path, err)
		}
		r = xr
	}
	b, err := io.ReadAll(io.LimitReader(r, maxISFSize))
	if err != nil {
		return nil, fmt.Errorf("--isf %s: %w", path, err)
	}
	return ParseISF(path, b)
}

// ParseISF parses ISF JSON.
func ParseISF(name string, b []byte) (*ISF, error) {
	var raw isfFile
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("ISF %s: %w", name, err)
	}
	if len(raw.UserTypes) == 0 {
		return nil, fmt.Errorf("ISF %s: no user_types (not a Volatility 3 symbol table?)", name)
	}
	return &ISF{path: name, raw: raw, conv: map[string]*Type{}}, nil
}

// Source names the file.
func (s *ISF) Source() string { return "ISF " + s.path }

// Count is the number of types.
func (s *ISF) Count() int { return len(s.raw.UserTypes) + len(s.raw.Enums) + len(s.raw.BaseTypes) }

// Struct returns a struct or union by name.
func (s *ISF) Struct(name string) (*Type, error) {
	if _, ok := s.raw.UserTypes[name]; !ok {
		return nil, fmt.Errorf("struct %s: %w in %s", name, ErrNoType, s.Source())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.user(name, 0)
	// an ISF file is as untrusted as the guest's BTF: check the layout
	if err := t.Check(); err != nil {
		return nil, fmt.Errorf("%w in %s", err, s.Source())
	}
	return t, nil
}

// Enum returns an enum by name.
func (s *ISF) Enum(name string) (*Type, error) {
	if _, ok := s.raw.Enums[name]; !ok {
		return nil, fmt.Errorf("enum %s: %w in %s", name, ErrNoType, s.Source())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.enum(name)
	if err := t.Check(); err != nil {
		return nil, fmt.Errorf("%w in %s", err, s.Source())
	}
	return t, nil
}

// EnumConstant finds an enumerator in any enum.
func (s *ISF) EnumConstant(name string) (int64, error) {
	for _, e := range s.raw.Enums {
		if v, ok := e.Constants[name]; ok {
			return v, nil
		}
	}
	return 0, fmt.Errorf("enumerator %s: %w in %s", name, ErrNoType, s.Source())
}

// Symbols returns the ISF's symbols, moved by the KASLR shift that puts _text
// at textStart.
func (s *ISF) Symbols(textStart uint64) (*Symbols, error) {
	t, ok := s.raw.Symbols["_text"]
	if !ok {
		return nil, fmt.Errorf("%s has no _text symbol", s.Source())
	}
	shift := textStart - t.Address
	syms := make([]Symbol, 0, len(s.raw.Symbols))
	for n, v := range s.raw.Symbols {
		a := v.Address
		if a >= startKernelMap {
			a += shift
		}
		syms = append(syms, Symbol{Addr: a, Name: n, Type: '?'})
	}
	return NewSymbols(s.Source(), syms), nil
}

func (s *ISF) key(kind, name string) string { return kind + " " + name }

func (s *ISF) enum(name string) *Type {
	if t, ok := s.conv[s.key("enum", name)]; ok {
		return t
	}
	e := s.raw.Enums[name]
	t := &Type{Kind: KindEnum, Name: name, Size: e.Size, Signed: true}
	for k, v := range e.Constants {
		t.Values = append(t.Values, EnumValue{k, v})
	}
	s.conv[s.key("enum", name)] = t
	return t
}

func (s *ISF) user(name string, depth int) *Type {
	if t, ok := s.conv[s.key("struct", name)]; ok {
		return t
	}
	u := s.raw.UserTypes[name]
	t := &Type{Kind: KindStruct, Name: name, Size: u.Size}
	if u.Kind == "union" {
		t.Kind = KindUnion
	}
	s.conv[s.key("struct", name)] = t
	for fname, f := range u.Fields {
		ft, bitOff, bitLen := s.ref(f.Type, depth+1)
		m := Member{Name: fname, Offset: f.Offset*8 + uint64(bitOff), BitSize: bitLen, Type: ft}
		if f.Anonymous {
			m.Name = ""
		}
		t.Members = append(t.Members, m)
	}
	return t
}

// ref converts a type reference; bitfields return their position.
func (s *ISF) ref(raw json.RawMessage, depth int) (*Type, uint32, uint32) {
	var r isfTypeRef
	if depth > 64 || json.Unmarshal(raw, &r) != nil {
		return &Type{Kind: KindVoid}, 0, 0
	}
	switch r.Kind {
	case "base":
		b, ok := s.raw.BaseTypes[r.Name]
		if !ok || r.Name == "void" {
			return &Type{Kind: KindVoid, Name: r.Name}, 0, 0
		}
		k := KindInt
		if b.Kind == "float" {
			k = KindFloat
		}
		return &Type{Kind: k, Name: r.Name, Size: b.Size, Signed: b.Signed}, 0, 0
	case "pointer":
		sub := r.Subtype
		return &Type{Kind: KindPointer, Size: 8, elemFn: func() *Type {
			s.mu.Lock()
			defer s.mu.Unlock()
			t, _, _ := s.ref(sub, 0)
			return t
		}}, 0, 0
	case "array":
		e, _, _ := s.ref(r.Subtype, depth+1)
		return &Type{Kind: KindArray, Len: r.Count, elem: e, Size: r.Count * e.Size}, 0, 0
	case "struct", "union":
		if _, ok := s.raw.UserTypes[r.Name]; ok {
			return s.user(r.Name, depth+1), 0, 0
		}
		return &Type{Kind: KindStruct, Name: r.Name}, 0, 0
	case "enum":
		if _, ok := s.raw.Enums[r.Name]; ok {
			return s.enum(r.Name), 0, 0
		}
		return &Type{Kind: KindEnum, Name: r.Name, Size: 4}, 0, 0
	case "bitfield":
		t, _, _ := s.ref(r.Type, depth+1)
		return t, r.BitPosition, r.BitLength
	case "function":
		return &Type{Kind: KindFunc}, 0, 0
	}
	return &Type{Kind: KindVoid}, 0, 0
}
