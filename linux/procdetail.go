package linux

import (
	"errors"
	"fmt"
)

// VMA is one mapping of a process's address space.
type VMA struct {
	Start Addr   `json:"start"`
	End   Addr   `json:"end"`
	Flags uint64 `json:"flags"`
	File  string `json:"file,omitempty"`
	// FileAddr is the struct file mapped, 0 for anonymous memory.
	FileAddr Addr `json:"-"`
	// Addr is the vm_area_struct.
	Addr Addr `json:"-"`
	// Special marks the kernel's own mappings ([vdso], [uprobes]): executable
	// and without a file by design.
	Special bool `json:"special,omitempty"`
}

// Linux VMA permission bits (include/linux/mm.h; the same as PROT_*).
const (
	VMRead  = 0x1
	VMWrite = 0x2
	VMExec  = 0x4
)

// Perms renders rwx like /proc/PID/maps.
func (v VMA) Perms() string {
	b := []byte("---")
	if v.Flags&VMRead != 0 {
		b[0] = 'r'
	}
	if v.Flags&VMWrite != 0 {
		b[1] = 'w'
	}
	if v.Flags&VMExec != 0 {
		b[2] = 'x'
	}
	return string(b)
}

// FileInfo describes an open file or a mapped file.
type FileInfo struct {
	Path    string `json:"path"`
	Deleted bool   `json:"deleted,omitempty"`
	Mode    uint32 `json:"mode"`
	UID     uint32 `json:"uid"`
	Socket  bool   `json:"socket,omitempty"`
	// Link is the name the kernel gives the file (d_path): what
	// readlink /proc/PID/fd/N and /proc/PID/maps show — Path with
	// " (deleted)" for an unlinked file, socket:[INODE], pipe:[INODE],
	// anon_inode:[eventfd] and the like for pseudo files.
	Link  string `json:"link"`
	Inode uint64 `json:"inode"`
	// Dev is the kernel dev_t of the file's super block.
	Dev   uint64 `json:"dev"`
	MntID int64  `json:"mnt_id"`
}

// Setuid reports a set-user-ID file.
func (f FileInfo) Setuid() bool { return f.Mode&0o4000 != 0 }

// limits for process detail walks
const (
	maxVMAs = 1 << 16
	// MAPLE_HEIGHT_MAX is 31 (include/linux/maple_tree.h)
	maxMapleHeight = 31
	maxPathDepth   = 64
	maxEnv         = 64 << 10
)

// FileInfo resolves a struct file: its path (through dentries and mounts,
// like d_path), whether it was deleted, its mode and owner.
func (k *Kernel) FileInfo(file uint64) (FileInfo, error) {
	fv, err := k.Object("file", file)
	if err != nil {
		return FileInfo{}, err
	}
	f := &fields{v: fv}
	dentry := f.ptr("f_path.dentry")
	vfsmnt := f.ptr("f_path.mnt")
	inode := f.ptr("f_inode")
	var fi FileInfo
	if sockOps, ok := k.Syms.Lookup("socket_file_ops"); ok && f.ptr("f_op") == sockOps {
		fi.Socket = true
	}
	nlinkZero := false
	if inode != 0 {
		if iv, err := k.Object("inode", inode); err == nil {
			inf := &fields{v: iv}
			fi.Mode = uint32(inf.uint("i_mode"))
			fi.UID = uint32(inf.uint("i_uid"))
			fi.Inode = inf.uint("i_ino")
			if sb := inf.ptr("i_sb"); sb != 0 {
				if dv, err := k.ReadField("super_block", sb, "s_dev"); err == nil {
					fi.Dev, _ = dv.Uint()
				}
			}
			if iv.Type.HasField("i_nlink") && inf.uint("i_nlink") == 0 {
				nlinkZero = true
			}
		}
	}
	if mT, err := k.Types.Struct("mount"); err == nil {
		if off, err := mT.FieldOffset("mnt"); err == nil && vfsmnt > off {
			if v, err := k.ReadField("mount", vfsmnt-off, "mnt_id"); err == nil {
				fi.MntID, _ = v.Int()
			}
		}
	}
	p, unlinked, err := k.dentryPath(dentry, vfsmnt)
	if err != nil {
		return fi, err
	}
	fi.Path = p
	fi.Deleted = nlinkZero || unlinked
	fi.Link = p
	if unlinked {
		fi.Link += " (deleted)"
	}
	if d, err := k.Object("dentry", dentry); err == nil {
		root := uint64(0)
		if r, err := k.ReadField("vfsmount", vfsmnt, "mnt_root"); err == nil {
			root, _ = r.Ptr()
		}
		if name, ok := k.pseudoPath(d, root, inode); ok {
			fi.Link = name
		}
	}
	return fi, nil
}

// dentryPath builds a path from a dentry up through its mounts.
func (k *Kernel) dentryPath(dentry, vfsmnt uint64) (string, bool, error) {
	mT, err := k.Types.Struct("mount")
	if err != nil {
		return "", false, err
	}
	mntOff, err := mT.FieldOffset("mnt")
	if err != nil {
		return "", false, err
	}
	mount := vfsmnt - mntOff
	var parts []string
	unlinked := false
	for depth := 0; depth < maxPathDepth && dentry != 0; depth++ {
		d, err := k.Object("dentry", dentry)
		if err != nil {
			return "", false, err
		}
		df := &fields{v: d}
		mv, err := k.ReadValue(mT, mount)
		if err != nil {
			return "", false, err
		}
		mf := &fields{v: mv}
		if dentry == mf.ptr("mnt.mnt_root") {
			parent := mf.ptr("mnt_parent")
			if parent == mount || parent == 0 {
				break // the root of the mount tree
			}
			dentry, mount = mf.ptr("mnt_mountpoint"), parent
			continue
		}
		name := ""
		if np := df.ptr("d_name.name"); np != 0 {
			name, _ = k.ReadCString(np, 256)
		}
		if depth == 0 && df.ptr("d_hash.pprev") == 0 {
			unlinked = true
		}
		parts = append(parts, name)
		parent := df.ptr("d_parent")
		if parent == dentry || parent == 0 {
			break // a pseudo file system's dentry (pipe, socket, memfd)
		}
		dentry = parent
	}
	return joinReversed(parts), unlinked, nil
}

// Exe resolves a process's executable (mm->exe_file).
func (k *Kernel) Exe(mm uint64) (FileInfo, error) {
	ef, err := k.ReadField("mm_struct", mm, "exe_file")
	if err != nil {
		return FileInfo{}, err
	}
	p, _ := ef.Ptr()
	if p == 0 {
		return FileInfo{}, fmt.Errorf("no executable")
	}
	return k.FileInfo(p)
}

// Environ reads a process's environment from its memory.
func (k *Kernel) Environ(mmAddr uint64) ([]string, error) {
	return k.userStrings(mmAddr, "env_start", "env_end", maxEnv)
}

// VMAs lists a process's mappings: the maple tree (Linux 6.1+) or the
// linked list of older kernels. With paths, mapped files are resolved to
// their paths (more reads).
func (k *Kernel) VMAs(mmAddr uint64, paths bool) ([]VMA, error) {
	mm, err := k.Object("mm_struct", mmAddr)
	if err != nil {
		return nil, err
	}
	f := &fields{v: mm}
	vdso := uint64(0)
	if mm.Type.HasField("context.vdso") {
		vdso = f.ptr("context.vdso")
	}
	var addrs []uint64
	switch {
	case mm.Type.HasField("mm_mt"):
		root := f.ptr("mm_mt.ma_root")
		addrs, err = k.mapleEntries(root)
	case mm.Type.HasField("mmap"):
		vt, e := k.Types.Struct("vm_area_struct")
		if e != nil {
			return nil, e
		}
		nextOff, e := vt.FieldOffset("vm_next")
		if e != nil {
			return nil, e
		}
		for v := f.ptr("mmap"); v != 0 && len(addrs) < maxVMAs; {
			addrs = append(addrs, v)
			v, err = k.Uint64(v + nextOff)
			if err != nil {
				break
			}
		}
	default:
		return nil, fmt.Errorf("mm_struct has neither mm_mt nor mmap")
	}
	vt, e := k.Types.Struct("vm_area_struct")
	if e != nil {
		return nil, e
	}
	var special [2]uint64
	special[0], _ = k.Syms.Lookup("special_mapping_vmops")
	special[1], _ = k.Syms.Lookup("legacy_special_mapping_vmops") // before 6.11
	out := make([]VMA, 0, len(addrs))
	for _, a := range addrs {
		v, e := k.ReadValue(vt, a)
		if e != nil {
			continue
		}
		vf := &fields{v: v}
		m := VMA{Start: Addr(vf.uint("vm_start")), End: Addr(vf.uint("vm_end")), Flags: vf.uint("vm_flags"), Addr: Addr(a)}
		if file := vf.ptr("vm_file"); file != 0 {
			m.FileAddr = Addr(file)
			if paths {
				if fi, e := k.FileInfo(file); e == nil {
					m.File = fi.Path
				}
			}
		}
		// the kernel's own mappings ([vdso], [uprobes]) are "special
		// mappings": their vm_ops identify them from the moment they exist,
		// while mm->context.vdso is set only after exec maps the vDSO
		ops := vf.ptr("vm_ops")
		m.Special = ops != 0 && (ops == special[0] || ops == special[1]) || vdso != 0 && uint64(m.Start) == vdso
		out = append(out, m)
	}
	return out, err
}

// mapleEntries returns the entries of a maple tree (the VMAs of an mm).
// lib/maple_tree.c: a node pointer ("enode") carries the node's type in
// bits 3-6 (enum maple_type: maple_dense, maple_leaf_64, maple_range_64,
// maple_arange_64) and flags in bits 0-2; the node is the pointer with
// its low 8 bits cleared. The root is marked as an internal entry (bit 1);
// the child pointers in the slots of range and arange nodes are enodes
// without that mark. Slot i of a node covers the indexes up to pivot i;
// the last slot's limit is the node's own maximum (its parent's pivot).
// A pivot of 0 after the first slot, or one that reaches the node's
// maximum, ends the node's data: what lies behind it (a node's metadata,
// stale slots) is not an entry.
func (k *Kernel) mapleEntries(root uint64) ([]uint64, error) {
	nodeT, err := k.Types.Struct("maple_node")
	if err != nil {
		return nil, err
	}
	leaf, err1 := k.Types.EnumConstant("maple_leaf_64")
	r64, err2 := k.Types.EnumConstant("maple_range_64")
	a64, err3 := k.Types.EnumConstant("maple_arange_64")
	if err1 != nil || err2 != nil || err3 != nil {
		return nil, fmt.Errorf("maple tree node types: %w", errors.Join(err1, err2, err3))
	}
	var out []uint64
	seen := map[uint64]bool{}
	entry := func(e uint64) {
		if e&7 == 0 && k.IsKernelPtr(e) && len(out) <= maxVMAs {
			out = append(out, e)
		}
	}
	var walk func(enode, max uint64, depth int) error
	walk = func(enode, max uint64, depth int) error {
		if depth > maxMapleHeight {
			return fmt.Errorf("maple tree deeper than %d levels: %w", maxMapleHeight, ErrListCorrupt)
		}
		node := enode &^ 0xff
		typ := int64(enode>>3) & 0xf
		if !k.IsKernelPtr(node) {
			return fmt.Errorf("maple node pointer %#x is not a kernel address: %w", enode, ErrListCorrupt)
		}
		if seen[node] || len(seen) > maxVMAs {
			return fmt.Errorf("maple node %#x reached twice: %w", node, ErrListCorrupt)
		}
		seen[node] = true
		v, err := k.ReadValue(nodeT, node)
		if err != nil {
			return fmt.Errorf("maple node %#x: %w", node, err)
		}
		var slots, pivots Value
		switch typ {
		case leaf, r64:
			slots, err = v.Field("mr64.slot")
			if err == nil {
				pivots, err = v.Field("mr64.pivot")
			}
		case a64:
			slots, err = v.Field("ma64.slot")
			if err == nil {
				pivots, err = v.Field("ma64.pivot")
			}
		default:
			return fmt.Errorf("maple node %#x of unknown type %d: %w", node, typ, ErrListCorrupt)
		}
		if err != nil {
			return err
		}
		n := int(slots.Type.Len)
		if n == 0 || pivots.Type.Len+1 < uint64(n) {
			return fmt.Errorf("maple node %#x: %d slots but %d pivots", node, n, pivots.Type.Len)
		}
		for i := 0; i < n; i++ {
			limit := max
			if i < n-1 {
				pv, err := pivots.Index(i)
				if err != nil {
					return err
				}
				if limit, err = pv.Uint(); err != nil {
					return err
				}
				if i > 0 && limit == 0 {
					break // unused slots
				}
			}
			sv, err := slots.Index(i)
			if err != nil {
				return err
			}
			p, err := sv.Ptr()
			if err != nil {
				return err
			}
			if p != 0 {
				if typ == leaf {
					entry(p)
				} else if err := walk(p, limit, depth+1); err != nil {
					return err
				}
			}
			if limit >= max {
				break // the node's last range
			}
		}
		return nil
	}
	switch {
	case root == 0:
	case root&3 == 2 && root > 4096: // xa_is_node: a tree of nodes
		err = walk(root, ^uint64(0), 0)
	default: // a single entry stored in the root
		entry(root)
	}
	if len(out) > maxVMAs {
		out = out[:maxVMAs]
	}
	return dedupe(out), err
}

func dedupe(a []uint64) []uint64 {
	seen := make(map[uint64]bool, len(a))
	out := a[:0]
	for _, x := range a {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}
