package linux

import (
	"fmt"
)

// PIDEntry is one struct pid of the kernel's PID table with the task
// that has it as its PID (tasks of a process group or session only are
// not listed).
type PIDEntry struct {
	PID  int64 `json:"pid"`
	Pid  Addr  `json:"struct_pid"`
	Task Addr  `json:"task"`
}

// limits for the PID table walk
const (
	maxPIDEntries = 1 << 22
	maxXADepth    = 12
)

// PIDTable walks init_pid_ns's IDR (an xarray since Linux 4.20): every
// struct pid that has a task attached as PIDTYPE_PID. This is the view
// /proc is built from, independent of the task list.
func (k *Kernel) PIDTable() ([]PIDEntry, error) {
	ns, err := k.Symbol("init_pid_ns")
	if err != nil {
		return nil, err
	}
	nsT, err := k.Types.Struct("pid_namespace")
	if err != nil {
		return nil, err
	}
	headOff, err := nsT.FieldOffset("idr.idr_rt.xa_head")
	if err != nil {
		return nil, fmt.Errorf("pid namespace IDR: %w", err)
	}
	head, err := k.Uint64(ns + headOff)
	if err != nil {
		return nil, err
	}
	var out []PIDEntry
	pidT, err := k.Types.Struct("pid")
	if err != nil {
		return nil, err
	}
	taskT, err := k.Types.Struct("task_struct")
	if err != nil {
		return nil, err
	}
	linkOff, err := taskT.FieldOffset("pid_links")
	if err != nil {
		return nil, err
	}
	pidtypePID, err := k.Types.EnumConstant("PIDTYPE_PID")
	if err != nil {
		return nil, err
	}
	numbersOff, err := pidT.FieldOffset("numbers")
	if err != nil {
		return nil, err
	}
	upidT, err := k.Types.Struct("upid")
	if err != nil {
		return nil, err
	}
	hn, err := k.Types.Struct("hlist_node")
	if err != nil {
		return nil, err
	}
	linkOff += uint64(pidtypePID) * hn.Size
	err = k.walkXArray(head, func(entry uint64) error {
		p, err := k.ReadValue(pidT, entry)
		if err != nil {
			return nil // a struct pid freed under us
		}
		f := &fields{v: p}
		tasks, err := p.Field("tasks")
		if err != nil {
			return err
		}
		first, err := tasks.Index(int(pidtypePID))
		if err != nil {
			return err
		}
		ff := &fields{v: first}
		node := ff.ptr("first")
		if node == 0 || len(f.errs) > 0 || len(ff.errs) > 0 {
			return nil
		}
		// numbers[] is a flexible array: numbers[0] is the initial namespace
		up, err := k.ReadValue(upidT, entry+numbersOff)
		if err != nil {
			return nil
		}
		uf := &fields{v: up}
		nr := uf.int("nr")
		out = append(out, PIDEntry{PID: nr, Pid: Addr(entry), Task: Addr(node - linkOff)})
		if len(out) > maxPIDEntries {
			return fmt.Errorf("PID table: more than %d entries", maxPIDEntries)
		}
		return nil
	})
	return out, err
}

// walkXArray calls fn for every pointer entry of an xarray whose xa_head is
// head. Internal node pointers have the low bits 10; value entries (bit 0)
// and reserved internal entries are skipped.
func (k *Kernel) walkXArray(head uint64, fn func(entry uint64) error) error {
	nodeT, err := k.Types.Struct("xa_node")
	if err != nil {
		return err
	}
	seen := map[uint64]bool{}
	var walk func(entry uint64, depth int) error
	walk = func(entry uint64, depth int) error {
		switch {
		case entry == 0:
			return nil
		case entry&3 == 2 && entry > 4096: // internal: a node
			if depth > maxXADepth {
				return fmt.Errorf("xarray deeper than %d levels: %w", maxXADepth, ErrListCorrupt)
			}
			node := entry - 2
			if seen[node] {
				return fmt.Errorf("xarray node %#x reached twice: %w", node, ErrListCorrupt)
			}
			seen[node] = true
			n, err := k.ReadValue(nodeT, node)
			if err != nil {
				return fmt.Errorf("xarray node: %w", err)
			}
			slots, err := n.Field("slots")
			if err != nil {
				return err
			}
			for i := 0; i < int(slots.Type.Len); i++ {
				s, _ := slots.Index(i)
				v, _ := s.Ptr()
				if err := walk(v, depth+1); err != nil {
					return err
				}
			}
			return nil
		case entry&3 != 0: // value or reserved internal entry
			return nil
		}
		return fn(entry)
	}
	return walk(head, 0)
}
