package linux

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// The mount table of each mount namespace, as /proc/PID/mountinfo shows it
// (fs/proc_namespace.c, show_mountinfo): the namespace's own list of
// mounts (a list_head before Linux 6.8, a red-black tree after), each
// mount's place in the tree above it, its super block and its flags.

// Mount is one line of /proc/PID/mountinfo.
type Mount struct {
	ID       int64 `json:"mount_id"`
	ParentID int64 `json:"parent_id"`
	// Dev is the super block's device as major:minor in decimal.
	Dev string `json:"dev"`
	// Root is the directory of the file system mounted here (not "/" for
	// a bind mount of a subdirectory).
	Root string `json:"root"`
	// MountPoint is the path as the namespace's reader sees it (relative
	// to its root); for a mount outside that root (Visible false, which
	// mountinfo leaves out) the path from the top of the mount tree.
	MountPoint string `json:"mount_point"`
	Visible    bool   `json:"visible"`
	// Options are the per-mount options (rw or ro, nosuid, nodev, noexec,
	// noatime, nodiratime, relatime, nosymfollow, idmapped).
	Options string `json:"options"`
	// Propagation are mountinfo's optional fields: shared:N, master:N,
	// unbindable.
	Propagation []string `json:"propagation,omitempty"`
	FSType      string   `json:"fstype"`
	Source      string   `json:"source"`
	// SuperOptions are the super block's generic options (rw or ro, sync,
	// dirsync, mand, lazytime); the options a file system adds through its
	// show_options method are not read.
	SuperOptions string   `json:"super_options"`
	Addr         Addr     `json:"addr"`
	Errors       []string `json:"errors,omitempty"`
}

// Line renders the mount as a mountinfo line, with the kernel's escapes
// (space, tab, newline and backslash as \ooo).
func (m Mount) Line() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d %d %s %s %s %s", m.ID, m.ParentID, m.Dev, mangle(m.Root), mangle(m.MountPoint), m.Options)
	for _, p := range m.Propagation {
		b.WriteByte(' ')
		b.WriteString(p)
	}
	fmt.Fprintf(&b, " - %s %s %s", mangle(m.FSType), mangle(m.Source), m.SuperOptions)
	return b.String()
}

// mangle escapes as fs/proc_namespace.c's mangle does.
func mangle(s string) string {
	if !strings.ContainsAny(s, " \t\n\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case ' ', '\t', '\n', '\\':
			fmt.Fprintf(&b, "\\%03o", c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// MountNamespace is one mount namespace and its mounts.
type MountNamespace struct {
	Inum uint64 `json:"ns"`
	Addr Addr   `json:"addr"`
	// PIDs are the processes in the namespace; Reader is the one whose
	// root decides what is visible (the pid asked for, else the first).
	PIDs   []int64  `json:"pids"`
	Reader int64    `json:"reader"`
	Mounts []Mount  `json:"mounts"`
	Errors []string `json:"errors,omitempty"`
}

// mount flags (include/linux/mount.h) and super block flags
// (include/linux/fs.h) that mountinfo shows
const (
	mntReadonly   = 0x40
	mntShared     = 0x1000
	mntUnbindable = 0x2000
	sbRdonly      = 1
	// maxMounts bounds a namespace's mounts (the kernel's default
	// fs.mount-max is 100000)
	maxMounts = 100000
)

// flagName names one bit of a flags word.
type flagName struct {
	flag uint64
	name string
}

var mntOptNames = []flagName{
	{0x01, ",nosuid"}, {0x02, ",nodev"}, {0x04, ",noexec"}, {0x08, ",noatime"},
	{0x10, ",nodiratime"}, {0x20, ",relatime"}, {0x80, ",nosymfollow"},
}

var sbOptNames = []flagName{
	{16, ",sync"}, {128, ",dirsync"}, {64, ",mand"}, {1 << 25, ",lazytime"},
}

// Mounts lists the mount namespaces of the given processes (of every
// process when none is given), each with its mounts in mountinfo's order.
// Visibility is decided by the root of the process asked for, or of the
// namespace's first process.
func (k *Kernel) Mounts(pids []int64) ([]MountNamespace, error) {
	tasks, taskErr := k.ProcessTasks(pids)
	if len(tasks) == 0 {
		return nil, taskErr
	}
	all := tasks
	if len(pids) > 0 {
		// every process, to name all the members of the namespaces asked for
		all, _ = k.ProcessTasks(nil)
	}
	nsr := k.newNSReader()
	byNS := map[uint64]*MountNamespace{}
	var order []uint64
	roots := map[uint64]fsRoot{}
	add := func(t Value, reader bool) {
		ns, err := k.taskMntNS(t)
		if err != nil || ns == 0 {
			return // a task that exited, or a kernel thread without nsproxy
		}
		pid, _ := TaskIdentity(t)
		m, ok := byNS[ns]
		if !ok {
			if !reader {
				return
			}
			m = &MountNamespace{Addr: Addr(ns), Reader: -1}
			if m.Inum, err = nsr.nsInum("mnt_namespace", ns); err != nil {
				m.Errors = append(m.Errors, err.Error())
			}
			byNS[ns] = m
			order = append(order, ns)
		}
		if reader && m.Reader < 0 {
			if r, err := k.taskRoot(t); err == nil {
				m.Reader = pid
				roots[ns] = r
			}
		}
		if !slices.Contains(m.PIDs, pid) {
			m.PIDs = append(m.PIDs, pid)
		}
	}
	for _, t := range tasks {
		add(t, true)
	}
	if len(pids) > 0 {
		for _, t := range all {
			add(t, false)
		}
	}
	out := make([]MountNamespace, 0, len(order))
	total := 0
	for _, ns := range order {
		m := byNS[ns]
		slices.Sort(m.PIDs)
		if total >= maxMounts {
			m.Errors = append(m.Errors, fmt.Sprintf("more than %d mounts in all: not read", maxMounts))
			out = append(out, *m)
			continue
		}
		mounts, err := k.nsMounts(ns, roots[ns])
		total += len(mounts)
		m.Mounts = mounts
		if err != nil {
			m.Errors = append(m.Errors, err.Error())
		}
		out = append(out, *m)
	}
	return out, taskErr
}

// taskMntNS is task->nsproxy->mnt_ns (0 when the task has no nsproxy).
func (k *Kernel) taskMntNS(t Value) (uint64, error) {
	np, err := t.Field("nsproxy")
	if err != nil {
		return 0, err
	}
	nsp, _ := np.Ptr()
	if nsp == 0 {
		return 0, nil
	}
	v, err := k.ReadField("nsproxy", nsp, "mnt_ns")
	if err != nil {
		return 0, err
	}
	return v.Ptr()
}

// fsRoot is a process's root directory: a mount and a dentry.
type fsRoot struct{ mount, dentry uint64 }

// taskRoot is task->fs->root, with the vfsmount turned into its mount.
func (k *Kernel) taskRoot(t Value) (fsRoot, error) {
	fsv, err := t.Field("fs")
	if err != nil {
		return fsRoot{}, err
	}
	fsp, _ := fsv.Ptr()
	if fsp == 0 {
		return fsRoot{}, errors.New("task has no fs_struct")
	}
	rv, err := k.ReadField("fs_struct", fsp, "root")
	if err != nil {
		return fsRoot{}, err
	}
	f := &fields{v: rv}
	vfs, d := f.ptr("mnt"), f.ptr("dentry")
	if len(f.errs) > 0 || vfs == 0 || d == 0 {
		return fsRoot{}, fmt.Errorf("fs_struct %#x has no root", fsp)
	}
	off, err := k.mountOffset()
	if err != nil {
		return fsRoot{}, err
	}
	return fsRoot{mount: vfs - off, dentry: d}, nil
}

// mountOffset is the offset of the vfsmount inside struct mount.
func (k *Kernel) mountOffset() (uint64, error) {
	mT, err := k.Types.Struct("mount")
	if err != nil {
		return 0, err
	}
	return mT.FieldOffset("mnt")
}

// nsMounts reads a namespace's mounts in the order mountinfo gives them.
func (k *Kernel) nsMounts(ns uint64, root fsRoot) ([]Mount, error) {
	nsT, err := k.Types.Struct("mnt_namespace")
	if err != nil {
		return nil, err
	}
	mT, err := k.Types.Struct("mount")
	if err != nil {
		return nil, err
	}
	var addrs []uint64
	var walkErr error
	switch {
	case nsT.HasField("list"): // before Linux 6.8
		headOff, err := nsT.FieldOffset("list")
		if err != nil {
			return nil, err
		}
		nodeOff, err := mT.FieldOffset("mnt_list")
		if err != nil {
			return nil, err
		}
		walkErr = k.WalkList(ns+headOff, maxMounts, func(n uint64) error {
			addrs = append(addrs, n-nodeOff)
			return nil
		})
	default: // an rb-tree ordered by mount id
		rv, err := k.ReadField("mnt_namespace", ns, "mounts.rb_node")
		if err != nil {
			return nil, err
		}
		top, _ := rv.Ptr()
		nodeOff, err := mT.FieldOffset("mnt_node")
		if err != nil {
			return nil, err
		}
		var nodes []uint64
		nodes, walkErr = k.rbInOrder(top, maxMounts)
		for _, n := range nodes {
			addrs = append(addrs, n-nodeOff)
		}
	}
	if walkErr != nil {
		walkErr = fmt.Errorf("mount namespace %#x: %w", ns, walkErr)
	}
	r := k.newMountReader()
	out := make([]Mount, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, r.mount(a, root))
	}
	return out, walkErr
}

// rbInOrder walks a red-black tree from its top node and returns its
// nodes in order (leftmost first), at most limit of them.
func (k *Kernel) rbInOrder(top uint64, limit int) ([]uint64, error) {
	rbT, err := k.Types.Struct("rb_node")
	if err != nil {
		return nil, err
	}
	var out, stack []uint64
	seen := map[uint64]bool{}
	n := top
	for n != 0 || len(stack) > 0 {
		for n != 0 {
			if seen[n] || len(seen) >= limit {
				return out, fmt.Errorf("rb-tree node %#x reached twice or more than %d nodes: %w", n, limit, ErrListCorrupt)
			}
			seen[n] = true
			stack = append(stack, n)
			v, err := k.ReadValue(rbT, n)
			if err != nil {
				return out, fmt.Errorf("rb-tree node %#x: %w", n, err)
			}
			f := &fields{v: v}
			n = f.ptr("rb_left")
		}
		n = stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		out = append(out, n)
		v, err := k.ReadValue(rbT, n)
		if err != nil {
			return out, fmt.Errorf("rb-tree node %#x: %w", n, err)
		}
		f := &fields{v: v}
		n = f.ptr("rb_right")
	}
	return out, nil
}

// mountReader reads mounts, remembering super blocks and the few symbols
// it compares with.
type mountReader struct {
	k       *Kernel
	mT      *Type
	off     uint64 // of the vfsmount in struct mount
	sbs     map[uint64]superInfo
	nopIDs  []uint64 // the idmaps of a mount that is not idmapped
	idField string   // mnt_idmap (6.3+) or mnt_userns
}

type superInfo struct {
	dev, fstype, opts string
	err               error
}

func (k *Kernel) newMountReader() *mountReader {
	r := &mountReader{k: k, sbs: map[uint64]superInfo{}}
	r.mT, _ = k.Types.Struct("mount")
	r.off, _ = k.mountOffset()
	if vt, err := k.Types.Struct("vfsmount"); err == nil {
		switch {
		case vt.HasField("mnt_idmap"):
			r.idField = "mnt_idmap"
			if a, ok := k.Syms.Lookup("nop_mnt_idmap"); ok {
				r.nopIDs = append(r.nopIDs, a)
			}
		case vt.HasField("mnt_userns"):
			r.idField = "mnt_userns"
			if a, ok := k.Syms.Lookup("init_user_ns"); ok {
				r.nopIDs = append(r.nopIDs, a)
			}
		}
	}
	return r
}

// mount reads one mount as mountinfo shows it.
func (r *mountReader) mount(a uint64, root fsRoot) Mount {
	m := Mount{Addr: Addr(a)}
	if r.mT == nil {
		m.Errors = append(m.Errors, "no struct mount in the kernel's types")
		return m
	}
	v, err := r.k.ReadValue(r.mT, a)
	if err != nil {
		m.Errors = append(m.Errors, err.Error())
		return m
	}
	f := &fields{v: v}
	m.ID = f.int("mnt_id")
	parent := f.ptr("mnt_parent")
	mntRoot := f.ptr("mnt.mnt_root")
	sb := f.ptr("mnt.mnt_sb")
	flags := f.uint("mnt.mnt_flags")
	devname := f.ptr("mnt_devname")
	group := f.int("mnt_group_id")
	master := f.ptr("mnt_master")
	if r.idField != "" && len(r.nopIDs) > 0 {
		if id := f.ptr("mnt." + r.idField); id != 0 && !slices.Contains(r.nopIDs, id) {
			defer func() { m.Options += ",idmapped" }()
		}
	}
	m.Errors = append(m.Errors, f.errs...)
	m.ParentID = m.ID
	if parent != 0 && parent != a {
		if pv, err := r.k.ReadValue(r.mT, parent); err == nil {
			pf := &fields{v: pv}
			m.ParentID = pf.int("mnt_id")
		} else {
			m.Errors = append(m.Errors, "parent: "+err.Error())
		}
	}
	if mntRoot != 0 {
		if p, err := r.k.dentryInSB(mntRoot); err == nil {
			m.Root = p
		} else {
			m.Errors = append(m.Errors, "root: "+err.Error())
		}
	}
	if p, vis, err := r.k.mountPath(a, root); err == nil {
		m.MountPoint, m.Visible = p, vis
	} else {
		m.Errors = append(m.Errors, "mount point: "+err.Error())
	}
	m.Options = "rw"
	if flags&mntReadonly != 0 {
		m.Options = "ro"
	}
	for _, o := range mntOptNames {
		if flags&o.flag != 0 {
			m.Options += o.name
		}
	}
	if flags&mntShared != 0 {
		m.Propagation = append(m.Propagation, "shared:"+strconv.FormatInt(group, 10))
	}
	if master != 0 {
		if mv, err := r.k.ReadField("mount", master, "mnt_group_id"); err == nil {
			g, _ := mv.Int()
			m.Propagation = append(m.Propagation, "master:"+strconv.FormatInt(g, 10))
		} else {
			m.Errors = append(m.Errors, "master: "+err.Error())
		}
	}
	if flags&mntUnbindable != 0 {
		m.Propagation = append(m.Propagation, "unbindable")
	}
	m.Source = "none"
	if devname != 0 {
		if s, err := r.k.ReadCString(devname, 4096); err == nil {
			m.Source = s
		} else {
			m.Errors = append(m.Errors, "source: "+err.Error())
		}
	}
	si := r.super(sb)
	m.Dev, m.FSType, m.SuperOptions = si.dev, si.fstype, si.opts
	if si.err != nil {
		m.Errors = append(m.Errors, "super block: "+si.err.Error())
	}
	return m
}

// super reads a super block's device, type and generic options.
func (r *mountReader) super(sb uint64) superInfo {
	if si, ok := r.sbs[sb]; ok {
		return si
	}
	si := superInfo{dev: "0:0", opts: "rw"}
	defer func() { r.sbs[sb] = si }()
	if sb == 0 {
		si.err = errors.New("NULL")
		return si
	}
	v, err := r.k.Object("super_block", sb)
	if err != nil {
		si.err = err
		return si
	}
	f := &fields{v: v}
	dev := f.uint("s_dev")
	sflags := f.uint("s_flags")
	typ := f.ptr("s_type")
	sub := f.ptr("s_subtype")
	if len(f.errs) > 0 {
		si.err = errors.New(strings.Join(f.errs, "; "))
		return si
	}
	si.dev = strconv.FormatUint(dev>>20, 10) + ":" + strconv.FormatUint(dev&0xfffff, 10)
	if sflags&sbRdonly != 0 {
		si.opts = "ro"
	}
	for _, o := range sbOptNames {
		if sflags&o.flag != 0 {
			si.opts += o.name
		}
	}
	if typ != 0 {
		if np, err := r.k.ReadField("file_system_type", typ, "name"); err == nil {
			if p, _ := np.Ptr(); p != 0 {
				si.fstype, err = r.k.ReadCString(p, 64)
				if err != nil {
					si.err = err
				}
			}
		}
	}
	if sub != 0 {
		if s, err := r.k.ReadCString(sub, 64); err == nil && s != "" {
			si.fstype += "." + s
		}
	}
	return si
}

// dentryInSB is a dentry's path from the root of its file system, as
// dentry_path shows it.
func (k *Kernel) dentryInSB(dentry uint64) (string, error) {
	var parts []string
	for d := dentry; ; {
		if len(parts) > maxPathDepth {
			return "", fmt.Errorf("dentry %#x is deeper than %d: %w", dentry, maxPathDepth, ErrListCorrupt)
		}
		v, err := k.Object("dentry", d)
		if err != nil {
			return "", err
		}
		f := &fields{v: v}
		parent := f.ptr("d_parent")
		if parent == d || parent == 0 {
			break
		}
		name := ""
		if np := f.ptr("d_name.name"); np != 0 {
			name, _ = k.ReadCString(np, 256)
		}
		parts = append(parts, name)
		d = parent
	}
	return joinReversed(parts), nil
}

// joinReversed makes a path of names listed from the leaf up.
func joinReversed(parts []string) string {
	if len(parts) == 0 {
		return "/"
	}
	var b strings.Builder
	for i := len(parts) - 1; i >= 0; i-- {
		b.WriteByte('/')
		b.WriteString(parts[i])
	}
	return b.String()
}

// mountPath is the path of a mount's root as a process with the given
// root sees it (seq_path_root): visible is false when the walk up reaches
// the top of the mount tree without passing that root, and the path is
// then the one from the top.
func (k *Kernel) mountPath(mount uint64, root fsRoot) (string, bool, error) {
	mT, err := k.Types.Struct("mount")
	if err != nil {
		return "", false, err
	}
	var parts []string
	mv, err := k.ReadValue(mT, mount)
	if err != nil {
		return "", false, err
	}
	mf := &fields{v: mv}
	dentry := mf.ptr("mnt.mnt_root")
	for steps := 0; ; steps++ {
		if steps > 4*maxPathDepth || len(parts) > maxPathDepth {
			return "", false, fmt.Errorf("mount %#x: path deeper than %d: %w", mount, maxPathDepth, ErrListCorrupt)
		}
		if root.mount != 0 && mount == root.mount && dentry == root.dentry {
			return joinReversed(parts), true, nil
		}
		if dentry == mf.ptr("mnt.mnt_root") {
			parent := mf.ptr("mnt_parent")
			if parent == mount || parent == 0 {
				return joinReversed(parts), root.mount == 0, nil
			}
			dentry = mf.ptr("mnt_mountpoint")
			mount = parent
			if mv, err = k.ReadValue(mT, mount); err != nil {
				return "", false, err
			}
			mf = &fields{v: mv}
			continue
		}
		d, err := k.Object("dentry", dentry)
		if err != nil {
			return "", false, err
		}
		df := &fields{v: d}
		name := ""
		if np := df.ptr("d_name.name"); np != 0 {
			name, _ = k.ReadCString(np, 256)
		}
		parent := df.ptr("d_parent")
		if parent == dentry || parent == 0 {
			// the root of a file system that is not this mount's root: a
			// walk gone astray (a moved or detached mount)
			return joinReversed(parts), false, nil
		}
		parts = append(parts, name)
		dentry = parent
	}
}
