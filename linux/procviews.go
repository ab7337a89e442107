package linux

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// This file holds the per-process views that /proc shows for one process:
// its mappings (/proc/PID/maps), its descriptors (/proc/PID/fd and fdinfo),
// its environment and its capabilities. Each is rebuilt from the kernel's
// own objects the way fs/proc renders them, so that its output can be
// compared line by line with the guest's.

// ErrNoProcess is returned for a pid that names no process in the task list.
var ErrNoProcess = errors.New("no such process in the task list")

// Mapping is one line of /proc/PID/maps.
type Mapping struct {
	Start  Addr   `json:"start"`
	End    Addr   `json:"end"`
	Perms  string `json:"perms"` // rwxp / rwxs
	Offset uint64 `json:"offset"`
	// Dev is the device of the mapped file's super block as major:minor in
	// hex, "00:00" for anonymous memory.
	Dev   string `json:"dev"`
	Inode uint64 `json:"inode"`
	// Path is the file (with " (deleted)" when it was unlinked, as /proc
	// prints it) or the kernel's name for the mapping: [heap], [stack],
	// [vdso], [vvar], [vsyscall], [anon:NAME]; empty for other anonymous
	// memory.
	Path    string   `json:"path,omitempty"`
	Deleted bool     `json:"deleted,omitempty"`
	Errors  []string `json:"errors,omitempty"`
	// File is the mapped struct file (0 for anonymous memory).
	File Addr `json:"-"`
}

// VM_MAYSHARE (include/linux/mm.h): a shared mapping, "s" in /proc's perms.
const vmMayShare = 0x80

// Line renders the mapping exactly as fs/proc/task_mmu.c does
// (show_vma_header_prefix, then the name padded to column 73).
func (m Mapping) Line() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%08x-%08x %s %08x %s %d ", uint64(m.Start), uint64(m.End), m.Perms, m.Offset, m.Dev, m.Inode)
	if m.Path != "" {
		// seq_setwidth(m, 25 + sizeof(void *) * 6 - 1); seq_pad(m, ' ')
		for b.Len() < 72 {
			b.WriteByte(' ')
		}
		b.WriteByte(' ')
		b.WriteString(m.Path)
	}
	return b.String()
}

// devString renders a kernel dev_t (12 bits major, 20 bits minor) as
// /proc does: %02x:%02x.
func devString(dev uint64) string {
	return fmt.Sprintf("%02x:%02x", dev>>20, dev&0xfffff)
}

// Maps lists a process's mappings as /proc/PID/maps shows them, the
// vsyscall page last.
func (k *Kernel) Maps(task Value) ([]Mapping, error) {
	mmp, err := task.Field("mm")
	if err != nil {
		return nil, err
	}
	mmAddr, err := mmp.Ptr()
	if err != nil {
		return nil, err
	}
	if mmAddr == 0 {
		return nil, nil // a kernel thread or a zombie: /proc shows nothing
	}
	mm, err := k.Object("mm_struct", mmAddr)
	if err != nil {
		return nil, err
	}
	mf := &fields{v: mm}
	startBrk, brk, startStack := mf.uint("start_brk"), mf.uint("brk"), mf.uint("start_stack")
	vmas, walkErr := k.VMAs(mmAddr, false)
	vt, err := k.Types.Struct("vm_area_struct")
	if err != nil {
		return nil, err
	}
	out := make([]Mapping, 0, len(vmas)+1)
	for _, v := range vmas {
		m := Mapping{Start: v.Start, End: v.End, Perms: vmaPerms(v.Flags), Dev: "00:00"}
		note := func(err error) {
			if err != nil && len(m.Errors) < 4 {
				m.Errors = append(m.Errors, err.Error())
			}
		}
		vv, err := k.ReadValue(vt, uint64(v.Addr))
		if err != nil {
			note(err)
			out = append(out, m)
			continue
		}
		vf := &fields{v: vv}
		var anonName string
		if vv.Type.HasField("anon_name") && (v.FileAddr == 0 || !anonNameShared(vt)) {
			if p := vf.ptr("anon_name"); p != 0 {
				anonName, err = k.anonVMAName(p)
				note(err)
			}
		}
		if v.FileAddr != 0 {
			m.File = v.FileAddr
			m.Offset = vf.uint("vm_pgoff") << 12
			fi, err := k.FileInfo(uint64(v.FileAddr))
			note(err)
			m.Dev, m.Inode = devString(fi.Dev), fi.Inode
			if anonName != "" {
				m.Path = "[anon_shmem:" + anonName + "]"
			} else {
				m.Path, m.Deleted = fi.Link, fi.Deleted
			}
		} else {
			switch {
			case v.Special:
				name, err := k.specialName(vf.ptr("vm_private_data"))
				note(err)
				m.Path = name
			case uint64(v.Start) <= brk && uint64(v.End) >= startBrk:
				m.Path = "[heap]"
			case uint64(v.Start) <= startStack && uint64(v.End) >= startStack:
				m.Path = "[stack]"
			case anonName != "":
				m.Path = "[anon:" + anonName + "]"
			}
		}
		m.Errors = append(m.Errors, vf.errs...)
		out = append(out, m)
	}
	if g, ok := k.gateMapping(); ok {
		out = append(out, g)
	}
	return out, walkErr
}

// anonNameShared reports a vm_area_struct whose anon_name shares a union
// with the file mappings' interval tree node (shared), as before Linux 6.2:
// there it names anonymous memory only.
func anonNameShared(vt *Type) bool {
	a, err1 := vt.FieldOffset("anon_name")
	s, err2 := vt.FieldOffset("shared")
	return err1 == nil && err2 == nil && a == s
}

func vmaPerms(flags uint64) string {
	b := []byte(VMA{Flags: flags}.Perms() + "p")
	if flags&vmMayShare != 0 {
		b[3] = 's'
	}
	return string(b)
}

// specialName is the name of a special mapping ([vdso], [vvar],
// [uprobes]): vm_private_data points to its struct vm_special_mapping.
func (k *Kernel) specialName(sm uint64) (string, error) {
	if sm == 0 {
		return "", fmt.Errorf("special mapping without vm_special_mapping")
	}
	np, err := k.ReadField("vm_special_mapping", sm, "name")
	if err != nil {
		return "", err
	}
	p, err := np.Ptr()
	if err != nil || p == 0 {
		return "", fmt.Errorf("special mapping %#x has no name", sm)
	}
	return k.ReadCString(p, 64)
}

// anonVMAName reads a struct anon_vma_name (prctl PR_SET_VMA_ANON_NAME):
// a kref followed by the name.
func (k *Kernel) anonVMAName(p uint64) (string, error) {
	t, err := k.Types.Struct("anon_vma_name")
	if err != nil {
		return "", err
	}
	off, err := t.FieldOffset("name")
	if err != nil {
		return "", err
	}
	// ANON_VMA_NAME_MAX_LEN is 80 (include/linux/mm.h)
	return k.ReadCString(p+off, 80)
}

// gateMapping is the vsyscall page that /proc/PID/maps of every 64-bit
// process ends with (arch/x86/entry/vsyscall: gate_vma, not in the mm's
// tree), unless the kernel runs with vsyscall=none.
func (k *Kernel) gateMapping() (Mapping, bool) {
	addr, ok := k.Syms.Lookup("gate_vma")
	if !ok {
		return Mapping{}, false
	}
	// static enum { EMULATE, XONLY, NONE } vsyscall_mode: the enum has no
	// name, so BTF has no constants for it
	if mode, ok := k.Syms.Lookup("vsyscall_mode"); ok {
		var b [4]byte
		if _, err := k.AS.ReadAt(b[:], int64(mode)); err != nil || binary.LittleEndian.Uint32(b[:]) == 2 {
			return Mapping{}, false
		}
	}
	v, err := k.Object("vm_area_struct", addr)
	if err != nil {
		return Mapping{}, false
	}
	f := &fields{v: v}
	m := Mapping{Start: Addr(f.uint("vm_start")), End: Addr(f.uint("vm_end")), Perms: vmaPerms(f.uint("vm_flags")),
		Dev: "00:00", Path: "[vsyscall]"}
	if len(f.errs) > 0 || m.End <= m.Start {
		return Mapping{}, false
	}
	return m, true
}

// FD is one open file descriptor as /proc/PID/fd and /proc/PID/fdinfo
// show it.
type FD struct {
	FD int `json:"fd"`
	// Type is the file's type as lsof names it: REG, DIR, CHR, BLK, FIFO,
	// SOCK, LNK, or a_inode for an anonymous inode (eventfd, epoll, ...).
	Type string `json:"type"`
	// Path is what readlink /proc/PID/fd/N gives: a path (with
	// " (deleted)"), socket:[INODE], pipe:[INODE], anon_inode:NAME, ...
	Path    string `json:"path"`
	Deleted bool   `json:"deleted,omitempty"`
	// Flags are the open flags as fdinfo shows them (O_CLOEXEC included
	// when the descriptor is close-on-exec).
	Flags  uint32   `json:"flags"`
	Pos    int64    `json:"pos"`
	Inode  uint64   `json:"inode"`
	MntID  int64    `json:"mnt_id"`
	File   Addr     `json:"file"`
	Errors []string `json:"errors,omitempty"`
}

// o_CLOEXEC (uapi asm-generic/fcntl.h)
const oCloexec = 0o2000000

// FDs lists a process's open file descriptors.
func (k *Kernel) FDs(task Value) ([]FD, error) {
	files, err := k.Files(task)
	if files == nil {
		return nil, err
	}
	out := make([]FD, 0, len(files))
	for _, of := range files {
		d := FD{FD: of.FD, File: Addr(of.File)}
		fv, e := k.Object("file", of.File)
		if e != nil {
			d.Errors = []string{e.Error()}
			out = append(out, d)
			continue
		}
		ff := &fields{v: fv}
		d.Flags = uint32(ff.uint("f_flags"))
		if of.CloseOnExec {
			d.Flags |= oCloexec
		}
		d.Pos = ff.int("f_pos")
		fi, e := k.FileInfo(of.File)
		if e != nil {
			ff.note(e)
		}
		d.Path, d.Deleted, d.Inode, d.MntID = fi.Link, fi.Deleted, fi.Inode, fi.MntID
		d.Type = fileType(fi.Mode)
		d.Errors = ff.errs
		out = append(out, d)
	}
	return out, err
}

// fileType names an inode's S_IFMT bits (uapi linux/stat.h) as lsof does.
func fileType(mode uint32) string {
	switch mode & 0o170000 {
	case 0o140000:
		return "SOCK"
	case 0o120000:
		return "LNK"
	case 0o100000:
		return "REG"
	case 0o060000:
		return "BLK"
	case 0o040000:
		return "DIR"
	case 0o020000:
		return "CHR"
	case 0o010000:
		return "FIFO"
	case 0:
		return "a_inode"
	}
	return "unknown"
}

// Capabilities are a process's capability sets, as the Cap* lines of
// /proc/PID/status show them.
type Capabilities struct {
	Inheritable uint64 `json:"inheritable"`
	Permitted   uint64 `json:"permitted"`
	Effective   uint64 `json:"effective"`
	Bounding    uint64 `json:"bounding"`
	Ambient     uint64 `json:"ambient"`
}

// Caps reads the capability sets of a task's credentials (task->real_cred,
// which /proc reads). kernel_cap_t is two 32-bit words before Linux 6.3 and
// one 64-bit word since: in little-endian memory both are the same 8 bytes.
func (k *Kernel) Caps(task Value) (Capabilities, error) {
	cp, err := task.Field("real_cred")
	if err != nil {
		return Capabilities{}, err
	}
	cred, err := cp.Deref()
	if err != nil {
		return Capabilities{}, fmt.Errorf("cred of task %#x: %w", task.Addr, err)
	}
	var c Capabilities
	var errs []error
	for _, s := range []struct {
		field string
		dst   *uint64
	}{{"cap_inheritable", &c.Inheritable}, {"cap_permitted", &c.Permitted}, {"cap_effective", &c.Effective},
		{"cap_bset", &c.Bounding}, {"cap_ambient", &c.Ambient}} {
		f, err := cred.Field(s.field)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		b := f.Bytes()
		if len(b) != 8 {
			errs = append(errs, fmt.Errorf("cred %s is %d bytes, want 8", s.field, len(b)))
			continue
		}
		*s.dst = binary.LittleEndian.Uint64(b)
	}
	return c, errors.Join(errs...)
}

// capNames are the capabilities by bit (uapi linux/capability.h).
var capNames = []string{"chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid",
	"setpcap", "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw", "ipc_lock", "ipc_owner",
	"sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct", "sys_admin", "sys_boot", "sys_nice",
	"sys_resource", "sys_time", "sys_tty_config", "mknod", "lease", "audit_write", "audit_control", "setfcap",
	"mac_override", "mac_admin", "syslog", "wake_alarm", "block_suspend", "audit_read", "perfmon", "bpf",
	"checkpoint_restore"}

// CapNames names the bits of a capability set (cap_sys_admin, ...);
// unknown bits as cap_N.
func CapNames(set uint64) []string {
	var out []string
	for i := 0; i < 64; i++ {
		if set&(1<<i) == 0 {
			continue
		}
		if i < len(capNames) {
			out = append(out, "cap_"+capNames[i])
		} else {
			out = append(out, "cap_"+strconv.Itoa(i))
		}
	}
	return out
}

// pseudoNames are the d_dname methods of the kernel's pseudo file systems
// (fs/d_path.c: d_path asks the dentry for its name when it has one); each
// renders the name the way its kernel function does.
type pseudoNamer func(k *Kernel, name string, inode, ino uint64) string

var pseudoNames = map[string]pseudoNamer{
	"sockfs_dname": func(_ *Kernel, _ string, _, ino uint64) string { return "socket:[" + strconv.FormatUint(ino, 10) + "]" },
	"pipefs_dname": func(_ *Kernel, _ string, _, ino uint64) string { return "pipe:[" + strconv.FormatUint(ino, 10) + "]" },
	"anon_inodefs_dname": func(_ *Kernel, name string, _, _ uint64) string {
		return "anon_inode:" + name
	},
	// alloc_file_pseudo's files (memfd, SysV shared memory): "/NAME (deleted)"
	"simple_dname": func(_ *Kernel, name string, _, _ uint64) string { return "/" + name + " (deleted)" },
	// pidfds from Linux 6.9 on
	"pidfs_dname": func(_ *Kernel, _ string, _, _ uint64) string { return "anon_inode:[pidfd]" },
	"ns_dname":    nsDname,
}

// nsDname renders a namespace file (/proc/PID/ns/*, kept open): NAME:[INODE],
// the name from the namespace's operations (inode->i_private is its
// ns_common).
func nsDname(k *Kernel, _ string, inode, ino uint64) string {
	name := "ns"
	if iv, err := k.Object("inode", inode); err == nil {
		f := &fields{v: iv}
		if nsc := f.ptr("i_private"); nsc != 0 {
			if ops, err := k.ReadField("ns_common", nsc, "ops"); err == nil {
				if op, _ := ops.Ptr(); op != 0 {
					if np, err := k.ReadField("proc_ns_operations", op, "name"); err == nil {
						if p, _ := np.Ptr(); p != 0 {
							if s, err := k.ReadCString(p, 32); err == nil {
								name = s
							}
						}
					}
				}
			}
		}
	}
	return name + ":[" + strconv.FormatUint(ino, 10) + "]"
}

// dnameFuncs maps the addresses of the d_dname methods to their renderers.
func (k *Kernel) dnameFuncs() map[uint64]pseudoNamer {
	k.dnameOnce.Do(func() {
		k.dnames = map[uint64]pseudoNamer{}
		for name, fn := range pseudoNames {
			if a, ok := k.Syms.Lookup(name); ok {
				k.dnames[a] = fn
			}
		}
	})
	return k.dnames
}

// pseudoPath gives a dentry's name when its d_op has a d_dname method, as
// d_path does unless the dentry is the root of its mount.
func (k *Kernel) pseudoPath(d Value, mntRoot, inode uint64) (string, bool) {
	df := &fields{v: d}
	ops := df.ptr("d_op")
	if ops == 0 || d.Addr == mntRoot && df.ptr("d_parent") == d.Addr {
		return "", false
	}
	dn, err := k.ReadField("dentry_operations", ops, "d_dname")
	if err != nil {
		return "", false
	}
	fn, _ := dn.Ptr()
	if fn == 0 {
		return "", false
	}
	namer, ok := k.dnameFuncs()[fn]
	if !ok {
		return "", false
	}
	name := ""
	if np := df.ptr("d_name.name"); np != 0 {
		name, _ = k.ReadCString(np, 256)
	}
	ino := uint64(0)
	if inode != 0 {
		if v, err := k.ReadField("inode", inode, "i_ino"); err == nil {
			ino, _ = v.Uint()
		}
	}
	return namer(k, name, inode, ino), true
}

// ProcessTasks returns the task_structs of the processes with the given
// pids, or of every process when none is given, in task list order. Pids
// that name no process are reported in the error (wrapping ErrNoProcess)
// beside the tasks that were found.
func (k *Kernel) ProcessTasks(pids []int64) ([]Value, error) {
	leaders, walkErr := k.TaskList()
	if walkErr != nil && len(leaders) == 0 {
		return nil, walkErr
	}
	tt, err := k.Types.Struct("task_struct")
	if err != nil {
		return nil, err
	}
	want := map[int64]bool{}
	for _, p := range pids {
		want[p] = false
	}
	var out []Value
	for _, a := range leaders {
		v, err := k.ReadValue(tt, a)
		if err != nil {
			continue
		}
		f := &fields{v: v}
		pid := f.int("tgid")
		if len(f.errs) > 0 {
			continue
		}
		if _, ok := want[pid]; len(pids) > 0 && !ok {
			continue
		}
		want[pid] = true
		out = append(out, v)
	}
	var missing []string
	for _, p := range pids {
		if !want[p] {
			missing = append(missing, strconv.FormatInt(p, 10))
			want[p] = true // once
		}
	}
	var errs []error
	if len(missing) > 0 {
		errs = append(errs, fmt.Errorf("pid %s: %w", strings.Join(missing, ", "), ErrNoProcess))
	}
	if walkErr != nil {
		errs = append(errs, walkErr)
	}
	return out, errors.Join(errs...)
}

// TaskIdentity is the pid and name of a task, for the per-process views.
func TaskIdentity(task Value) (pid int64, comm string) {
	f := &fields{v: task}
	return f.int("tgid"), f.str("comm")
}
