package linux

import (
	"fmt"
	"strings"
)

// The operations behind /proc: every proc_dir_entry under proc_root and
// under each network namespace's /proc/net, with the tables the kernel
// calls when the entry is opened, read or listed — file_operations of a
// directory, proc_ops of a file, the seq_operations that print
// /proc/net/tcp line by line, a single_show, a write handler, the
// inode_operations. A rootkit that hides connections swaps the show of
// tcp4_seq_ops; one that hides processes or files swaps the iterate of a
// directory's operations.

// limits of the /proc walk
const (
	maxProcEntries    = 1 << 14 // under proc_root
	maxProcNetEntries = 1 << 12 // under each namespace's /proc/net
	maxProcDepth      = 12
)

// S_IFMT and S_IFDIR of include/uapi/linux/stat.h
const (
	sIFMT  = 0o170000
	sIFDIR = 0o040000
)

// ProcOps reads the function pointers of every /proc entry's operations.
// Object is the entry's path ("/proc/net/tcp"; an entry of another network
// namespace than the first has its inode number appended).
func (k *Kernel) ProcOps() ([]OpsPointer, error) {
	root, err := k.Symbol("proc_root")
	if err != nil {
		return nil, err
	}
	w, err := k.newProcWalker()
	if err != nil {
		return nil, err
	}
	// each root has its own budget: entries forged under /proc cannot
	// use up the walk before /proc/net/tcp
	w.budget = maxProcEntries
	w.walk(root, "/proc", "", 0, true)
	nets, netErr := k.netNamespaces()
	if netErr != nil {
		w.note(netErr)
	}
	nsr := k.newNSReader()
	for i, n := range nets {
		pv, err := k.ReadField("net", n, "proc_net")
		if err != nil {
			w.note(err)
			continue
		}
		p, _ := pv.Ptr()
		if p == 0 {
			continue
		}
		suffix := ""
		if i > 0 {
			inum, _ := nsr.nsInum("net", n)
			suffix = fmt.Sprintf(" (net namespace %d)", inum)
		}
		w.budget = maxProcNetEntries
		w.walk(p, "/proc/net", suffix, 0, true) // a directory with no mode (fs/proc/proc_net.c)
	}
	if w.full {
		w.note(fmt.Errorf("more than %d function pointers: the rest not read", maxTTYPointers))
	}
	if len(w.errs) > 0 {
		return w.out, fmt.Errorf("/proc operations: %s", strings.Join(w.errs, "; "))
	}
	return w.out, nil
}

type procWalker struct {
	k        *Kernel
	pdeT     *Type
	nodeOff  uint64          // subdir_node in proc_dir_entry
	seqProcs map[uint64]bool // proc_ops whose entries hold seq_operations
	oneProcs map[uint64]bool // proc_ops whose entries hold a single_show
	seen     map[uint64]bool // entries
	tables   map[uint64]bool // operations tables read
	budget   int             // entries left to read under the current root
	full     bool            // the pointers reached their cap
	out      []OpsPointer
	errs     []string
}

func (k *Kernel) newProcWalker() (*procWalker, error) {
	t, err := k.Types.Struct("proc_dir_entry")
	if err != nil {
		return nil, err
	}
	off, err := t.FieldOffset("subdir_node")
	if err != nil {
		return nil, err
	}
	w := &procWalker{k: k, pdeT: t, nodeOff: off, seqProcs: map[uint64]bool{}, oneProcs: map[uint64]bool{},
		seen: map[uint64]bool{}, tables: map[uint64]bool{}}
	// which member of the seq_ops/single_show union an entry uses follows
	// from its proc_ops (fs/proc/generic.c, fs/proc/proc_net.c)
	for _, s := range []string{"proc_seq_ops", "proc_net_seq_ops"} {
		if a, ok := k.Syms.Lookup(s); ok {
			w.seqProcs[a] = true
		}
	}
	for _, s := range []string{"proc_single_ops", "proc_net_single_ops"} {
		if a, ok := k.Syms.Lookup(s); ok {
			w.oneProcs[a] = true
		}
	}
	return w, nil
}

func (w *procWalker) note(err error) {
	if len(w.errs) < 16 {
		w.errs = append(w.errs, err.Error())
	} else if len(w.errs) == 16 {
		w.errs = append(w.errs, "more errors left out")
	}
}

// table adds the function pointers of an operations table once.
func (w *procWalker) table(object, structName string, a uint64) {
	if a == 0 || w.tables[a] {
		return
	}
	if len(w.out) >= maxTTYPointers {
		w.full = true
		return
	}
	w.tables[a] = true
	ps, err := w.k.FuncPointers(structName, a)
	if err != nil {
		w.note(fmt.Errorf("%s: %w", object, err))
		return
	}
	for i := range ps {
		ps[i].Object = object
	}
	w.out = append(w.out, ps...)
}

// walk reads an entry, with the operations of a directory (by its mode,
// or a root the caller knows is one) or of a file, and its children.
func (w *procWalker) walk(pde uint64, path, suffix string, depth int, dir bool) {
	if w.seen[pde] {
		return
	}
	if w.budget <= 0 {
		w.note(fmt.Errorf("%s: over the budget of entries, not read", path))
		return
	}
	w.seen[pde] = true
	w.budget--
	v, err := w.k.ReadValue(w.pdeT, pde)
	if err != nil {
		w.note(fmt.Errorf("%s: %w", path, err))
		return
	}
	f := &fields{v: v}
	object := path + suffix
	dir = dir || f.uint("mode")&sIFMT == sIFDIR
	w.table(object, "inode_operations", f.ptr("proc_iops"))
	ops := f.ptr("proc_ops")
	if dir {
		w.table(object, "file_operations", ops)
	} else {
		w.table(object, "proc_ops", ops)
	}
	switch union := f.ptr("seq_ops"); {
	case union == 0:
	case w.seqProcs[ops]:
		w.table(object, "seq_operations", union)
	case w.oneProcs[ops]:
		w.out = append(w.out, OpsPointer{Object: object, Struct: "proc_dir_entry", Member: "single_show", Func: Addr(union), Table: Addr(pde)})
	}
	if wr := f.ptr("write"); wr != 0 {
		w.out = append(w.out, OpsPointer{Object: object, Struct: "proc_dir_entry", Member: "write", Func: Addr(wr), Table: Addr(pde)})
	}
	if len(f.errs) > 0 {
		w.note(fmt.Errorf("%s: %s", path, strings.Join(f.errs, "; ")))
	}
	// children are read whenever there are some: a directory's mode is
	// the guest's to forge
	top := f.ptr("subdir.rb_node")
	if top == 0 || depth >= maxProcDepth || w.budget <= 0 {
		return
	}
	nodes, err := w.k.rbInOrder(top, w.budget)
	if err != nil {
		w.note(fmt.Errorf("%s: %w", path, err))
	}
	for _, n := range nodes {
		child := n - w.nodeOff
		name := "?"
		if nv, err := w.k.ReadField("proc_dir_entry", child, "name"); err == nil {
			if np, _ := nv.Ptr(); np != 0 {
				if s, err := w.k.ReadCString(np, 256); err == nil {
					name = safeName(s)
				}
			}
		}
		w.walk(child, path+"/"+name, suffix, depth+1, false)
	}
}

// safeName keeps a name read from the guest printable: bytes outside
// printable ASCII become '?', and a '/' cannot fake a deeper path.
func safeName(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c > 0x7e || c == '/' {
			b[i] = '?'
		}
	}
	return string(b)
}
