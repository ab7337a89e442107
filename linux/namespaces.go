package linux

import (
	"fmt"
	"regexp"
	"strings"
)

// Namespaces and control groups of tasks, as the guest's /proc/PID/ns/*
// and /proc/PID/cgroup show them: a namespace is named by the inode
// number of its ns_common (ns.inum), the number in "pid:[4026531836]".

// Container is the container a process runs in, as its cgroup path names
// it (the runtimes put each container in a cgroup of its own).
type Container struct {
	Runtime string `json:"runtime"` // docker, podman, containerd, cri-o, systemd-nspawn, lxc, kubernetes
	ID      string `json:"id"`
}

// maxPIDLevel is MAX_PID_NS_LEVEL (kernel/pid_namespace.c).
const maxPIDLevel = 32

// nsReader reads namespace and cgroup facts, remembering what it read
// about each object: the processes of a guest share few namespaces and
// cgroups.
type nsReader struct {
	k      *Kernel
	inum   map[uint64]uint64 // namespace object -> ns.inum
	cgpath map[uint64]string // kernfs_node -> path
}

func (k *Kernel) newNSReader() *nsReader {
	return &nsReader{k: k, inum: map[uint64]uint64{}, cgpath: map[uint64]string{}}
}

// nsInum reads the inode number of a namespace object of struct typ
// (its ns_common member "ns").
func (r *nsReader) nsInum(typ string, p uint64) (uint64, error) {
	if p == 0 {
		return 0, fmt.Errorf("NULL %s", typ)
	}
	if v, ok := r.inum[p]; ok {
		return v, nil
	}
	f, err := r.k.ReadField(typ, p, "ns.inum")
	if err != nil {
		return 0, fmt.Errorf("%s at %#x: %w", typ, p, err)
	}
	v, err := f.Uint()
	if err != nil {
		return 0, err
	}
	r.inum[p] = v
	return v, nil
}

// pidNS reads a task's pid in its own PID namespace and that namespace
// (thread_pid->numbers[thread_pid->level]).
func (r *nsReader) pidNS(task Value) (nspid int64, ns uint64, err error) {
	tp, err := task.Field("thread_pid")
	if err != nil {
		return 0, 0, err
	}
	pp, err := tp.Ptr()
	if err != nil || pp == 0 {
		return 0, 0, fmt.Errorf("task %#x has no struct pid", task.Addr)
	}
	pidT, err := r.k.Types.Struct("pid")
	if err != nil {
		return 0, 0, err
	}
	lv, err := r.k.ReadField("pid", pp, "level")
	if err != nil {
		return 0, 0, err
	}
	level, err := lv.Uint()
	if err != nil {
		return 0, 0, err
	}
	if level > maxPIDLevel {
		return 0, 0, fmt.Errorf("struct pid %#x: level %d is over the kernel's limit of %d", pp, level, maxPIDLevel)
	}
	numOff, err := pidT.FieldOffset("numbers")
	if err != nil {
		return 0, 0, err
	}
	upidT, err := r.k.Types.Struct("upid")
	if err != nil {
		return 0, 0, err
	}
	up, err := r.k.ReadValue(upidT, pp+numOff+level*upidT.Size)
	if err != nil {
		return 0, 0, fmt.Errorf("struct pid %#x numbers[%d]: %w", pp, level, err)
	}
	f := &fields{v: up}
	nr, nsp := f.int("nr"), f.ptr("ns")
	if len(f.errs) > 0 {
		return 0, 0, fmt.Errorf("struct pid %#x: %s", pp, strings.Join(f.errs, "; "))
	}
	ns, err = r.nsInum("pid_namespace", nsp)
	return nr, ns, err
}

// taskNS fills in a process's namespaces, cgroup and container.
func (r *nsReader) taskNS(task Value, p *Process) {
	if nr, ns, err := r.pidNS(task); err == nil {
		p.NSPID, p.PIDNS = nr, ns
	} else {
		p.Errors = append(p.Errors, "pid namespace: "+err.Error())
	}
	// a task that has exited has no nsproxy any more
	if np, err := task.Field("nsproxy"); err == nil {
		if nsp, _ := np.Ptr(); nsp != 0 {
			if nv, err := r.k.Object("nsproxy", nsp); err == nil {
				f := &fields{v: nv}
				if p.NetNS, err = r.nsInum("net", f.ptr("net_ns")); err != nil {
					p.Errors = append(p.Errors, "net namespace: "+err.Error())
				}
				if p.MntNS, err = r.nsInum("mnt_namespace", f.ptr("mnt_ns")); err != nil {
					p.Errors = append(p.Errors, "mount namespace: "+err.Error())
				}
			} else {
				p.Errors = append(p.Errors, "nsproxy: "+err.Error())
			}
		}
	}
	if cg, err := r.cgroupPath(task); err == nil {
		p.Cgroup = cg
		p.Container = ContainerOf(cg)
	} else if !p.Kernel {
		p.Errors = append(p.Errors, "cgroup: "+err.Error())
	}
}

// cgroupPath reads a task's cgroup on the unified hierarchy (cgroup v2),
// as the "0::" line of /proc/PID/cgroup shows it: task->cgroups->dfl_cgrp,
// whose kernfs node names the directory under /sys/fs/cgroup.
func (r *nsReader) cgroupPath(task Value) (string, error) {
	cs, err := task.Field("cgroups")
	if err != nil {
		return "", err
	}
	csp, err := cs.Ptr()
	if err != nil || csp == 0 {
		return "", fmt.Errorf("task %#x has no css_set", task.Addr)
	}
	dc, err := r.k.ReadField("css_set", csp, "dfl_cgrp")
	if err != nil {
		return "", err
	}
	cg, err := dc.Ptr()
	if err != nil || cg == 0 {
		return "", fmt.Errorf("css_set %#x has no default cgroup", csp)
	}
	kn, err := r.k.ReadField("cgroup", cg, "kn")
	if err != nil {
		return "", err
	}
	knp, err := kn.Ptr()
	if err != nil || knp == 0 {
		return "", fmt.Errorf("cgroup %#x has no kernfs node", cg)
	}
	return r.kernfsPath(knp)
}

// maxCgroupDepth bounds the walk up a kernfs tree.
const maxCgroupDepth = 64

// kernfsPath builds the path of a kernfs node from its root ("/" for the
// root itself), like kernfs_path.
func (r *nsReader) kernfsPath(kn uint64) (string, error) {
	if p, ok := r.cgpath[kn]; ok {
		return p, nil
	}
	knT, err := r.k.Types.Struct("kernfs_node")
	if err != nil {
		return "", err
	}
	parentField := "parent"
	if !knT.HasField(parentField) {
		parentField = "__parent" // Linux 6.15+
	}
	var parts []string
	seen := map[uint64]bool{}
	for n := kn; n != 0; {
		if seen[n] || len(parts) > maxCgroupDepth {
			return "", fmt.Errorf("kernfs node %#x: parent chain loops or is deeper than %d: %w", kn, maxCgroupDepth, ErrListCorrupt)
		}
		seen[n] = true
		v, err := r.k.ReadValue(knT, n)
		if err != nil {
			return "", err
		}
		f := &fields{v: v}
		parent := f.ptr(parentField)
		name := f.ptr("name")
		if len(f.errs) > 0 {
			return "", fmt.Errorf("kernfs node %#x: %s", n, strings.Join(f.errs, "; "))
		}
		if parent == 0 {
			break // the root's name is not part of the path
		}
		s, err := r.k.ReadCString(name, 256)
		if err != nil {
			return "", fmt.Errorf("kernfs node %#x name: %w", n, err)
		}
		parts = append(parts, s)
		n = parent
	}
	var b strings.Builder
	for i := len(parts) - 1; i >= 0; i-- {
		b.WriteString("/")
		b.WriteString(parts[i])
	}
	p := b.String()
	if p == "" {
		p = "/"
	}
	r.cgpath[kn] = p
	return p, nil
}

// The cgroup names container runtimes give their containers.
var containerPatterns = []struct {
	runtime string
	re      *regexp.Regexp
}{
	{"docker", regexp.MustCompile(`(?:^|/)docker-([0-9a-f]{64})\.scope(?:/|$)`)},
	{"docker", regexp.MustCompile(`(?:^|/)docker/([0-9a-f]{64})(?:/|$)`)},
	{"podman", regexp.MustCompile(`(?:^|/)libpod-([0-9a-f]{64})\.scope(?:/|$)`)},
	{"podman", regexp.MustCompile(`(?:^|/)libpod_parent/libpod-([0-9a-f]{64})(?:/|$)`)},
	{"cri-o", regexp.MustCompile(`(?:^|/)crio-([0-9a-f]{64})\.scope(?:/|$)`)},
	{"containerd", regexp.MustCompile(`(?:^|/)cri-containerd-([0-9a-f]{64})\.scope(?:/|$)`)},
	{"kubernetes", regexp.MustCompile(`(?:^|/)kubepods[^/]*/(?:[^/]+/)*?(?:pod[^/]+/)([0-9a-f]{64})(?:/|$)`)},
	{"systemd-nspawn", regexp.MustCompile(`(?:^|/)machine\.slice/machine-([^/]+)\.scope(?:/|$)`)},
	{"lxc", regexp.MustCompile(`(?:^|/)lxc\.payload\.([^/]+)(?:/|$)`)},
	{"lxc", regexp.MustCompile(`(?:^|/)lxc/([^/]+)(?:/|$)`)},
}

// ContainerOf names the container of a cgroup path, or nil. systemd
// escapes "-" in unit names as \x2d; the name of an nspawn machine is
// unescaped.
func ContainerOf(cgroup string) *Container {
	for _, p := range containerPatterns {
		if m := p.re.FindStringSubmatch(cgroup); m != nil {
			id := m[1]
			if p.runtime == "systemd-nspawn" {
				id = strings.ReplaceAll(id, `\x2d`, "-")
			}
			return &Container{Runtime: p.runtime, ID: id}
		}
	}
	return nil
}

// InitNamespaces are the inode numbers of the first namespaces (those of
// init, the "host" of the guest's containers).
type InitNamespaces struct {
	PID uint64 `json:"pid_ns"`
	Net uint64 `json:"net_ns"`
	Mnt uint64 `json:"mnt_ns,omitempty"`
}

// InitNamespaces reads init_pid_ns and init_net (and init's mount
// namespace).
func (k *Kernel) InitNamespaces() (InitNamespaces, error) {
	r := k.newNSReader()
	var out InitNamespaces
	pid, err := k.Symbol("init_pid_ns")
	if err != nil {
		return out, err
	}
	if out.PID, err = r.nsInum("pid_namespace", pid); err != nil {
		return out, err
	}
	net, err := k.Symbol("init_net")
	if err != nil {
		return out, err
	}
	if out.Net, err = r.nsInum("net", net); err != nil {
		return out, err
	}
	if a, ok := k.Syms.Lookup("init_nsproxy"); ok {
		if m, err := k.ReadField("nsproxy", a, "mnt_ns"); err == nil {
			if mp, _ := m.Ptr(); mp != 0 {
				out.Mnt, _ = r.nsInum("mnt_namespace", mp)
			}
		}
	}
	return out, nil
}
