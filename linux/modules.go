package linux

import (
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
	Errors   []string    `json:"errors,omitempty"`
}

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
