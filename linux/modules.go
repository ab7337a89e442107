package linux

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// Module is a loaded kernel module as /proc/modules shows it.
type Module struct {
	Addr     Addr     `json:"module"` // struct module
	Name     string   `json:"name"`
	Base     Addr     `json:"base"` // start of the module's core text
	Size     uint64   `json:"size"`
	Refcount int64    `json:"refcount"`
	State    string   `json:"state"`
	UsedBy   []string `json:"used_by,omitempty"`
	// Text is the range of executable memory of the module (for checks
	// that ask whether an address lies inside a known module).
	TextSize uint64      `json:"text_size"`
	Ranges   []AddrRange `json:"memory,omitempty"` // every region of the module's memory
	// Taints are the module's taint flags (mod->taints): bit 12 an
	// out-of-tree module (O), 13 an unsigned one (E), 0 proprietary (P).
	Taints uint64   `json:"taints,omitempty"`
	Errors []string `json:"errors,omitempty"`
}

// module taint bits (include/linux/panic.h)
const (
	TaintProprietary = 1 << 0
	TaintOutOfTree   = 1 << 12
	TaintUnsigned    = 1 << 13
)

// OutOfTree reports a module built outside the kernel's tree (or not
// signed by the kernel's key): not shipped with the kernel.
func (m Module) OutOfTree() bool { return m.Taints&(TaintOutOfTree|TaintUnsigned) != 0 }

// AddrRange is a half-open range of kernel virtual addresses.
type AddrRange struct {
	Start Addr `json:"start"`
	End   Addr `json:"end"`
}

var moduleStateNames = map[string]string{
	"MODULE_STATE_LIVE":     "Live",
	"MODULE_STATE_COMING":   "Loading",
	"MODULE_STATE_GOING":    "Unloading",
	"MODULE_STATE_UNFORMED": "Unformed",
}

// Modules walks the kernel's module list.
func (k *Kernel) Modules() ([]Module, error) {
	head, err := k.Symbol("modules")
	if err != nil {
		return nil, err
	}
	mt, err := k.Types.Struct("module")
	if err != nil {
		return nil, err
	}
	listOff, err := mt.FieldOffset("list")
	if err != nil {
		return nil, err
	}
	var out []Module
	walkErr := k.WalkList(head, maxModules, func(node uint64) error {
		a := node - listOff
		v, err := k.ReadValue(mt, a)
		if err != nil {
			out = append(out, Module{Addr: Addr(a), Errors: []string{err.Error()}})
			return nil
		}
		m := k.module(v)
		if m.State != "Unformed" {
			out = append(out, m)
		}
		return nil
	})
	return out, walkErr
}

func (k *Kernel) module(v Value) Module {
	f := &fields{v: v}
	m := Module{Addr: Addr(v.Addr), Name: f.str("name")}
	if st, err := v.Field("state"); err == nil {
		x, _ := st.Int()
		name, ok := st.Type.EnumName(x)
		if n, known := moduleStateNames[name]; ok && known {
			m.State = n
		} else {
			m.State = fmt.Sprintf("state %d", x)
		}
	} else {
		f.note(err)
	}
	switch {
	case v.Type.HasField("mem"): // 6.4+: struct module_memory mem[MOD_MEM_NUM_TYPES]
		mem, _ := v.Field("mem")
		textIdx, err := k.Types.EnumConstant("MOD_TEXT")
		if err != nil {
			textIdx = 0
		}
		n := int(mem.Type.Len)
		for i := 0; i < n; i++ {
			e, err := mem.Index(i)
			if err != nil {
				f.note(err)
				break
			}
			ef := &fields{v: e}
			size := ef.uint("size")
			m.Size += size
			if base := ef.ptr("base"); base != 0 && size != 0 {
				m.Ranges = append(m.Ranges, AddrRange{Addr(base), Addr(base + size)})
			}
			if int64(i) == textIdx {
				m.Base = Addr(ef.ptr("base"))
				m.TextSize = size
			}
			f.errs = append(f.errs, ef.errs...)
		}
	case v.Type.HasField("core_layout"):
		m.Base = Addr(f.ptr("core_layout.base"))
		coreSize, initSize := f.uint("core_layout.size"), f.uint("init_layout.size")
		m.Size = coreSize + initSize
		m.TextSize = f.uint("core_layout.text_size")
		m.Ranges = append(m.Ranges, AddrRange{m.Base, m.Base + Addr(coreSize)})
		if ib := f.ptr("init_layout.base"); ib != 0 && initSize != 0 {
			m.Ranges = append(m.Ranges, AddrRange{Addr(ib), Addr(ib + initSize)})
		}
	default:
		f.note(fmt.Errorf("struct module has neither mem nor core_layout"))
	}
	if v.Type.HasField("refcnt") {
		// module_refcount(): atomic_read(&mod->refcnt) - MODULE_REF_BASE (1)
		m.Refcount = f.int("refcnt") - 1
	}
	if v.Type.HasField("taints") {
		m.Taints = f.uint("taints")
	}
	m.UsedBy = k.moduleUsers(v, f)
	m.Errors = f.errs
	return m
}

// moduleUsers lists the modules that use this one (source_list of
// struct module_use), as the fourth column of /proc/modules.
func (k *Kernel) moduleUsers(v Value, f *fields) []string {
	if !v.Type.HasField("source_list") {
		return nil
	}
	srcOff, _ := v.Type.FieldOffset("source_list")
	ut, err := k.Types.Struct("module_use")
	if err != nil {
		return nil
	}
	nodeOff, err := ut.FieldOffset("source_list")
	if err != nil {
		return nil
	}
	var users []string
	err = k.WalkList(v.Addr+srcOff, maxModules, func(node uint64) error {
		use, err := k.ReadValue(ut, node-nodeOff)
		if err != nil {
			return err
		}
		src, err := use.Field("source")
		if err != nil {
			return err
		}
		sp, err := src.Ptr()
		if err != nil {
			return err
		}
		name, err := k.ReadField("module", sp, "name")
		if err != nil {
			return err
		}
		users = append(users, name.Str())
		return nil
	})
	if err != nil {
		f.note(fmt.Errorf("used by: %w", err))
	}
	return users
}

// FormatUsedBy renders the used-by column like /proc/modules.
func FormatUsedBy(users []string) string {
	if len(users) == 0 {
		return "-"
	}
	return strings.Join(users, ",") + ","
}

// maxModSyms bounds a module's symbol table.
const maxModSyms = 1 << 18

// modSymtab is a module's function symbols: value and name offset.
type modSymtab struct {
	funcs  []modFunc
	strtab uint64
	err    error
}

type modFunc struct {
	val  uint64
	name uint32
}

// moduleSymtab reads (once) a module's symbol table, mod->kallsyms: the
// Elf64_Sym entries and the string table the kernel keeps for
// /proc/kallsyms.
func (k *Kernel) moduleSymtab(m Module) *modSymtab {
	k.modSymMu.Lock()
	defer k.modSymMu.Unlock()
	if t, ok := k.modSyms[m.Addr]; ok {
		return t
	}
	t := &modSymtab{}
	if k.modSyms == nil {
		k.modSyms = map[Addr]*modSymtab{}
	}
	k.modSyms[m.Addr] = t
	ks, err := k.ReadField("module", uint64(m.Addr), "kallsyms")
	if err != nil {
		t.err = err
		return t
	}
	kp, _ := ks.Ptr()
	if kp == 0 {
		t.err = fmt.Errorf("module %s keeps no symbols", m.Name)
		return t
	}
	v, err := k.Object("mod_kallsyms", kp)
	if err != nil {
		t.err = err
		return t
	}
	f := &fields{v: v}
	symtab, n, strtab := f.ptr("symtab"), f.uint("num_symtab"), f.ptr("strtab")
	if len(f.errs) > 0 {
		t.err = fmt.Errorf("module %s symbols: %s", m.Name, strings.Join(f.errs, "; "))
		return t
	}
	if n > maxModSyms || symtab == 0 || strtab == 0 {
		t.err = fmt.Errorf("module %s: symbol table of %d entries at %#x", m.Name, n, symtab)
		return t
	}
	const symSize = 24 // Elf64_Sym
	// the table's last entry first: a forged count fails before the
	// whole table is allocated
	var last [symSize]byte
	if n > 0 {
		if _, err := k.AS.ReadAt(last[:], int64(symtab+(n-1)*symSize)); err != nil {
			t.err = fmt.Errorf("module %s symbol table: %w", m.Name, err)
			return t
		}
	}
	buf := make([]byte, n*symSize)
	if _, err := k.AS.ReadAt(buf, int64(symtab)); err != nil {
		t.err = fmt.Errorf("module %s symbol table: %w", m.Name, err)
		return t
	}
	for i := uint64(0); i < n; i++ {
		s := buf[i*symSize:]
		if s[4]&0xf == 2 { // STT_FUNC
			t.funcs = append(t.funcs, modFunc{binary.LittleEndian.Uint64(s[8:]), binary.LittleEndian.Uint32(s)})
		}
	}
	t.strtab = strtab
	return t
}

// ModuleSymbol names the function of a module that holds addr, from the
// module's own symbol table: "name+0xOFF".
func (k *Kernel) ModuleSymbol(m Module, addr uint64) (string, error) {
	t := k.moduleSymtab(m)
	if t.err != nil {
		return "", t.err
	}
	best := -1
	for i, f := range t.funcs {
		if f.val <= addr && (best < 0 || f.val > t.funcs[best].val) {
			best = i
		}
	}
	if best < 0 {
		return "", fmt.Errorf("no function of module %s at or below %#x", m.Name, addr)
	}
	name, err := k.ReadCString(t.strtab+uint64(t.funcs[best].name), 128)
	if err != nil || name == "" {
		return "", fmt.Errorf("module %s symbol name: %v", m.Name, err)
	}
	return fmt.Sprintf("%s+%#x", name, addr-t.funcs[best].val), nil
}
