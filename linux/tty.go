package linux

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// The terminals' operations: every tty driver's tty_operations, every
// open tty's own ops and its line discipline's tty_ldisc_ops, and the
// registered line disciplines. A tty sniffer or keylogger swaps one of
// these tables for a copy whose functions wrap the kernel's.

// OpsPointer is one function pointer of an operations table.
type OpsPointer struct {
	// Object names what holds the table: "driver serial", "tty ttyS0",
	// "ldisc of ttyS0", "ldisc 0".
	Object string `json:"object"`
	Struct string `json:"struct"` // tty_operations, tty_ldisc_ops
	Member string `json:"member"`
	Func   Addr   `json:"func"`
	Table  Addr   `json:"table"`
}

// limits of the tty walk
const (
	maxTTYDrivers = 1024
	maxTTYsPerDrv = 4096
	nrLdiscs      = 31 // NR_LDISCS (include/uapi/linux/tty.h)
	// maxTTYPointers bounds the function pointers read in all
	maxTTYPointers = 1 << 16
)

// FuncPointers reads the function pointers of an operations struct at
// addr: every member that is a pointer to a function and is not NULL.
func (k *Kernel) FuncPointers(structName string, addr uint64) ([]OpsPointer, error) {
	t, err := k.Types.Struct(structName)
	if err != nil {
		return nil, err
	}
	v, err := k.ReadValue(t, addr)
	if err != nil {
		return nil, fmt.Errorf("%s at %#x: %w", structName, addr, err)
	}
	var out []OpsPointer
	b := v.Bytes()
	for _, m := range t.Members {
		if m.Type == nil || m.Type.Kind != KindPointer || m.BitSize != 0 {
			continue
		}
		if e := m.Type.Elem(); e == nil || e.Kind != KindFunc {
			continue
		}
		off := m.Offset / 8
		if off+8 > uint64(len(b)) {
			continue
		}
		if fn := binary.LittleEndian.Uint64(b[off:]); fn != 0 {
			out = append(out, OpsPointer{Struct: structName, Member: m.Name, Func: Addr(fn), Table: Addr(addr)})
		}
	}
	return out, nil
}

// TTYOps reads the operations of the tty drivers (tty_drivers list), of
// their open ttys and those ttys' line disciplines, and of the registered
// line disciplines (tty_ldiscs).
func (k *Kernel) TTYOps() ([]OpsPointer, error) {
	head, err := k.Symbol("tty_drivers")
	if err != nil {
		return nil, err
	}
	drvT, err := k.Types.Struct("tty_driver")
	if err != nil {
		return nil, err
	}
	listOff, err := drvT.FieldOffset("tty_drivers")
	if err != nil {
		return nil, err
	}
	var out []OpsPointer
	var errs []string
	add := func(object, structName string, table uint64) {
		if table == 0 || len(out) >= maxTTYPointers {
			return
		}
		ps, err := k.FuncPointers(structName, table)
		if err != nil {
			errs = append(errs, object+": "+err.Error())
			return
		}
		for i := range ps {
			ps[i].Object = object
		}
		out = append(out, ps...)
	}
	seenTable := map[uint64]bool{}
	addOnce := func(object, structName string, table uint64) {
		if !seenTable[table] {
			seenTable[table] = true
			add(object, structName, table)
		}
	}
	ttyT, _ := k.Types.Struct("tty_struct")
	walkErr := k.WalkList(head, maxTTYDrivers, func(n uint64) error {
		v, err := k.ReadValue(drvT, n-listOff)
		if err != nil {
			errs = append(errs, err.Error())
			return nil
		}
		f := &fields{v: v}
		name := "?"
		if np := f.ptr("driver_name"); np != 0 {
			if s, err := k.ReadCString(np, 64); err == nil {
				name = safeName(s)
			}
		}
		addOnce("driver "+name, "tty_operations", f.ptr("ops"))
		ttys, num := f.ptr("ttys"), f.uint("num")
		if ttys == 0 || ttyT == nil {
			return nil
		}
		num = min(num, maxTTYsPerDrv)
		buf := make([]byte, num*8)
		if _, err := k.AS.ReadAt(buf, int64(ttys)); err != nil {
			errs = append(errs, fmt.Sprintf("driver %s ttys: %v", name, err))
			return nil
		}
		for i := uint64(0); i < num; i++ {
			tp := binary.LittleEndian.Uint64(buf[i*8:])
			if tp == 0 {
				continue
			}
			tv, err := k.ReadValue(ttyT, tp)
			if err != nil {
				errs = append(errs, err.Error())
				continue
			}
			tf := &fields{v: tv}
			tname := cString(tf, "name", 64)
			addOnce("tty "+tname, "tty_operations", tf.ptr("ops"))
			if ld := tf.ptr("ldisc"); ld != 0 {
				if ov, err := k.ReadField("tty_ldisc", ld, "ops"); err == nil {
					op, _ := ov.Ptr()
					addOnce("line discipline of "+tname, "tty_ldisc_ops", op)
				}
			}
		}
		return nil
	})
	// tty_ldiscs[NR_LDISCS]: each registered discipline's ops know their
	// own number, which also ends the walk at the array's end
	if a, ok := k.Syms.Lookup("tty_ldiscs"); ok {
		buf := make([]byte, nrLdiscs*8)
		if _, err := k.AS.ReadAt(buf, int64(a)); err == nil {
			for i := 0; i < nrLdiscs; i++ {
				p := binary.LittleEndian.Uint64(buf[i*8:])
				if p == 0 {
					continue
				}
				nv, err := k.ReadField("tty_ldisc_ops", p, "num")
				if err != nil {
					continue
				}
				if num, _ := nv.Int(); num != int64(i) {
					continue
				}
				addOnce(fmt.Sprintf("line discipline %d", i), "tty_ldisc_ops", p)
			}
		}
	}
	if walkErr != nil {
		errs = append(errs, walkErr.Error())
	}
	if len(out) >= maxTTYPointers {
		errs = append(errs, fmt.Sprintf("more than %d function pointers: the rest not read", maxTTYPointers))
	}
	if len(errs) > 16 {
		errs = append(errs[:16], fmt.Sprintf("and %d more errors", len(errs)-16))
	}
	if len(errs) > 0 {
		return out, fmt.Errorf("tty operations: %s", strings.Join(errs, "; "))
	}
	return out, nil
}
