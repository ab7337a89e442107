package linux

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/vmwatch/vmwatch/x86"
)

// The module area of x86-64: after the 1 GiB kernel image window, up to
// the fixmap (Documentation/arch/x86/x86_64/mm.rst).
const (
	modulesStart = 0xffffffffc0000000
	modulesEnd   = 0xffffffffff000000
)

// SysfsModules lists the modules registered in sysfs: the kobjects of
// module_kset (/sys/module), each embedded in a struct module_kobject that
// points back at its module. Built-in modules with parameters are there
// too, with no struct module.
func (k *Kernel) SysfsModules() ([]Module, error) {
	ksetp, err := k.Symbol("module_kset")
	if err != nil {
		return nil, err
	}
	kset, err := k.Uint64(ksetp)
	if err != nil || kset == 0 {
		return nil, fmt.Errorf("module_kset: %v", err)
	}
	ksT, err := k.Types.Struct("kset")
	if err != nil {
		return nil, err
	}
	listOff, err := ksT.FieldOffset("list")
	if err != nil {
		return nil, err
	}
	koT, err := k.Types.Struct("kobject")
	if err != nil {
		return nil, err
	}
	entryOff, err := koT.FieldOffset("entry")
	if err != nil {
		return nil, err
	}
	mkT, err := k.Types.Struct("module_kobject")
	if err != nil {
		return nil, err
	}
	kobjOff, err := mkT.FieldOffset("kobj")
	if err != nil {
		return nil, err
	}
	var out []Module
	err = k.WalkList(kset+listOff, maxModules*4, func(node uint64) error {
		kobj := node - entryOff
		mk, err := k.ReadValue(mkT, kobj-kobjOff)
		if err != nil {
			return nil
		}
		f := &fields{v: mk}
		mod := f.ptr("mod")
		if mod == 0 {
			return nil // a built-in module's parameters
		}
		v, err := k.Object("module", mod)
		if err != nil {
			out = append(out, Module{Addr: Addr(mod), Errors: []string{err.Error()}})
			return nil
		}
		out = append(out, k.module(v))
		return nil
	})
	return out, err
}

// ScanModules searches the mapped pages of the module area for struct
// module objects, whatever list they are (or are not) on. A candidate
// must point at itself through mkobj.mod (as every loaded module's struct
// does), have a printable name and a known state. This finds modules
// that unlinked themselves from the module list and from sysfs.
func (k *Kernel) ScanModules() ([]Module, error) {
	mt, err := k.Types.Struct("module")
	if err != nil {
		return nil, err
	}
	selfOff, err := mt.FieldOffset("mkobj.mod")
	if err != nil {
		return nil, err
	}
	var out []Module
	seen := map[uint64]bool{}
	buf := make([]byte, x86.PageSize4K)
	var scanErr error
	err = k.AS.Mapped(modulesStart, modulesEnd, func(va uint64, m x86.Mapping) bool {
		for off := uint64(0); off < m.PageSize; off += x86.PageSize4K {
			page := va + off
			if _, err := k.Mem.ReadAt(buf, int64(m.Phys+off)); err != nil {
				continue
			}
			for i := 0; i+8 <= len(buf); i += 8 {
				w := binary.LittleEndian.Uint64(buf[i:])
				cand := page + uint64(i) - selfOff
				if w != cand || seen[cand] {
					continue
				}
				seen[cand] = true
				v, err := k.ReadValue(mt, cand)
				if err != nil {
					continue
				}
				mod := k.module(v)
				if !plausibleModuleName(mod.Name) || strings.HasPrefix(mod.State, "state ") {
					continue
				}
				out = append(out, mod)
				if len(out) > maxModules {
					scanErr = fmt.Errorf("more than %d module candidates", maxModules)
					return false
				}
			}
		}
		return true
	})
	if err == nil {
		err = scanErr
	}
	return out, err
}

func plausibleModuleName(s string) bool {
	if s == "" || len(s) > 56 {
		return false
	}
	for _, c := range s {
		if !(c == '_' || c == '-' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// KernelText reports whether addr lies in the core kernel's text.
func (k *Kernel) KernelText(addr uint64) bool {
	s, ok1 := k.Syms.Lookup("_stext")
	e, ok2 := k.Syms.Lookup("_etext")
	if !ok1 || !ok2 {
		s, e = k.Loc.TextStart, k.Loc.ImageEnd
	}
	return addr >= s && addr < e
}

// InitText reports whether addr lies in the kernel's init text
// (_sinittext.._einittext): code run at boot and freed afterwards, which
// early interrupt handlers and calls from __ref functions still name.
func (k *Kernel) InitText(addr uint64) bool {
	s, ok1 := k.Syms.Lookup("_sinittext")
	e, ok2 := k.Syms.Lookup("_einittext")
	return ok1 && ok2 && addr >= s && addr < e
}

// InModule returns the module whose memory holds addr.
func InModule(mods []Module, addr uint64) (Module, bool) {
	for _, m := range mods {
		for _, r := range m.Ranges {
			if addr >= uint64(r.Start) && addr < uint64(r.End) {
				return m, true
			}
		}
	}
	return Module{}, false
}
