package linux

import (
	"bytes"
	"errors"
	"fmt"
	"math/bits"
	"sort"
	"strings"
)

// Process is one task as `ps` shows it.
type Process struct {
	Task Addr   `json:"task"`
	PID  int64  `json:"pid"`
	TGID int64  `json:"tgid"`
	PPID int64  `json:"ppid"`
	Comm string `json:"comm"`
	// FullName is a kernel thread's untruncated name (struct kthread's
	// full_name, Linux 6.1+), as /proc shows it.
	FullName  string   `json:"full_name,omitempty"`
	State     string   `json:"state"`
	UID       uint32   `json:"uid"`
	GID       uint32   `json:"gid"`
	EUID      uint32   `json:"euid"`
	StartTime float64  `json:"start_time"` // seconds after boot
	Cmdline   []string `json:"cmdline,omitempty"`
	Kernel    bool     `json:"kernel_thread"`
	Threads   int      `json:"threads,omitempty"`
	Mm        Addr     `json:"mm,omitempty"`
	Cred      Addr     `json:"cred"`
	Parent    Addr     `json:"parent"`
	// PIDNS is the task's PID namespace (the inode number of
	// /proc/PID/ns/pid) and NSPID its pid there, which a process in a
	// container sees as its own.
	PIDNS uint64 `json:"pid_ns,omitempty"`
	NSPID int64  `json:"ns_pid,omitempty"`
	NetNS uint64 `json:"net_ns,omitempty"`
	MntNS uint64 `json:"mnt_ns,omitempty"`
	// Cgroup is the task's cgroup on the unified hierarchy, as the "0::"
	// line of /proc/PID/cgroup shows it.
	Cgroup    string     `json:"cgroup,omitempty"`
	Container *Container `json:"container,omitempty"`
	Errors    []string   `json:"errors,omitempty"`
}

// Limits for walks over hostile memory.
const (
	maxTasks   = 1 << 17
	maxThreads = 1 << 16
	maxCmdline = 64 << 10
	maxFDs     = 1 << 16
	maxModules = 1 << 13
)

// task state letters as /proc shows them, by bit position in
// TASK_REPORT (fs/proc/array.c): R S D T t X Z P, and I for idle
// kernel threads.
const taskStateLetters = "RSDTtXZP"

func taskState(state, exitState uint64) string {
	const taskReport = 0x7f
	const taskIdle = 0x402 // TASK_UNINTERRUPTIBLE | TASK_NOLOAD
	if state == taskIdle && exitState == 0 {
		return "I"
	}
	i := bits.Len64((state | exitState) & taskReport)
	if i >= len(taskStateLetters) {
		return "?"
	}
	return taskStateLetters[i : i+1]
}

// TaskList walks the task list from init_task and returns the address of
// every thread group leader (init_task itself excluded).
func (k *Kernel) TaskList() ([]uint64, error) {
	init, err := k.Symbol("init_task")
	if err != nil {
		return nil, err
	}
	t, err := k.Types.Struct("task_struct")
	if err != nil {
		return nil, err
	}
	off, err := t.FieldOffset("tasks")
	if err != nil {
		return nil, err
	}
	var out []uint64
	err = k.WalkList(init+off, maxTasks, func(node uint64) error {
		out = append(out, node-off)
		return nil
	})
	return out, err
}

// Threads returns the tasks of a thread group (the leader included), from
// signal->thread_head.
func (k *Kernel) Threads(leader Value) ([]uint64, error) {
	sig, err := leader.Field("signal")
	if err != nil {
		return nil, err
	}
	sp, err := sig.Ptr()
	if err != nil || sp == 0 {
		return nil, fmt.Errorf("task %#x has no signal_struct", leader.Addr)
	}
	st, err := k.Types.Struct("signal_struct")
	if err != nil {
		return nil, err
	}
	headOff, err := st.FieldOffset("thread_head")
	if err != nil {
		return nil, err
	}
	nodeOff, err := leader.Type.FieldOffset("thread_node")
	if err != nil {
		return nil, err
	}
	var out []uint64
	err = k.WalkList(sp+headOff, maxThreads, func(node uint64) error {
		out = append(out, node-nodeOff)
		return nil
	})
	return out, err
}

// PSOptions select what Processes returns.
type PSOptions struct {
	Threads   bool // every thread, not only thread group leaders
	NoCmdline bool
}

// Processes lists processes from the task list.
func (k *Kernel) Processes(opt PSOptions) ([]Process, error) {
	leaders, walkErr := k.TaskList()
	if walkErr != nil && len(leaders) == 0 {
		return nil, walkErr
	}
	tt, err := k.Types.Struct("task_struct")
	if err != nil {
		return nil, err
	}
	var out []Process
	tgidOf := map[uint64]int64{}
	nsr := k.newNSReader()
	for _, a := range leaders {
		v, err := k.ReadValue(tt, a)
		if err != nil {
			out = append(out, Process{Task: Addr(a), Errors: []string{err.Error()}})
			continue
		}
		p := k.process(v, !opt.NoCmdline)
		nsr.taskNS(v, &p)
		tgidOf[a] = p.TGID
		if opt.Threads {
			ths, err := k.Threads(v)
			if err != nil {
				p.Errors = append(p.Errors, err.Error())
			}
			p.Threads = len(ths)
			out = append(out, p)
			for _, th := range ths {
				if th == a {
					continue
				}
				tv, err := k.ReadValue(tt, th)
				if err != nil {
					out = append(out, Process{Task: Addr(th), TGID: p.TGID, Errors: []string{err.Error()}})
					continue
				}
				tp := k.process(tv, false)
				nsr.taskNS(tv, &tp)
				tp.Cmdline = p.Cmdline
				out = append(out, tp)
			}
			continue
		}
		if ths, err := k.Threads(v); err == nil {
			p.Threads = len(ths)
		}
		out = append(out, p)
	}
	// ppid: the parent's tgid, from the tasks already read when possible
	for i := range out {
		p := &out[i]
		if p.Parent == 0 {
			continue
		}
		if tg, ok := tgidOf[uint64(p.Parent)]; ok {
			p.PPID = tg
			continue
		}
		tg, err := k.ReadField("task_struct", uint64(p.Parent), "tgid")
		if err == nil {
			p.PPID, err = tg.Int()
		}
		if err != nil {
			p.Errors = append(p.Errors, "ppid: "+err.Error())
		}
	}
	if walkErr != nil {
		return out, walkErr
	}
	return out, nil
}

// process reads the fields of one task.
func (k *Kernel) process(v Value, cmdline bool) Process {
	f := &fields{v: v}
	p := Process{Task: Addr(v.Addr)}
	p.PID = f.int("pid")
	p.TGID = f.int("tgid")
	p.Comm = f.str("comm")
	state := "state"
	if v.Type.HasField("__state") {
		state = "__state"
	}
	p.State = taskState(f.uint(state), f.uint("exit_state"))
	for _, name := range []string{"start_boottime", "real_start_time", "start_time"} {
		if v.Type.HasField(name) {
			p.StartTime = float64(f.uint(name)) / 1e9
			break
		}
	}
	p.Parent = Addr(f.ptr("real_parent"))
	p.Cred = Addr(f.ptr("real_cred"))
	p.Mm = Addr(f.ptr("mm"))
	p.Kernel = p.Mm == 0 && p.State != "Z" && p.State != "X"
	// A kernel thread whose name did not fit in comm keeps it whole in
	// struct kthread; /proc shows one or the other depending on the kernel
	// version and whether it is a workqueue worker. PF_KTHREAD is a task
	// flag (include/linux/sched.h).
	const pfKthread = 0x200000
	if flags := f.uint("flags"); flags&pfKthread != 0 {
		p.FullName = k.kthreadName(v)
	}
	if p.Cred != 0 {
		if c, err := k.Object("cred", uint64(p.Cred)); err == nil {
			cf := &fields{v: c}
			p.UID = uint32(cf.uint("uid"))
			p.GID = uint32(cf.uint("gid"))
			p.EUID = uint32(cf.uint("euid"))
			f.errs = append(f.errs, cf.errs...)
		} else {
			f.note(fmt.Errorf("cred: %w", err))
		}
	}
	if cmdline && p.Mm != 0 {
		args, err := k.Cmdline(uint64(p.Mm))
		if err != nil {
			f.note(fmt.Errorf("cmdline: %w", err))
		} else {
			p.Cmdline = args
		}
	}
	p.Errors = f.errs
	return p
}

// kthreadName reads struct kthread's full_name for a kernel thread whose
// name did not fit in comm.
func (k *Kernel) kthreadName(task Value) string {
	field := "worker_private"
	if !task.Type.HasField(field) {
		return ""
	}
	kt, err := task.Field(field)
	if err != nil {
		return ""
	}
	ktp, err := kt.Ptr()
	if err != nil || ktp == 0 {
		return ""
	}
	fn, err := k.ReadField("kthread", ktp, "full_name")
	if err != nil {
		return ""
	}
	np, err := fn.Ptr()
	if err != nil || np == 0 {
		return ""
	}
	name, err := k.ReadCString(np, 256)
	if err != nil {
		return ""
	}
	return name
}

// UserSpace returns the address space of a process from its mm_struct.
func (k *Kernel) UserSpace(mm Value) (*UserMemory, error) {
	pgd, err := mm.Field("pgd")
	if err != nil {
		return nil, err
	}
	va, err := pgd.Ptr()
	if err != nil {
		return nil, err
	}
	m, err := k.AS.Translate(va)
	if err != nil {
		return nil, fmt.Errorf("page table of mm %#x at %#x: %w", mm.Addr, va, err)
	}
	as, err := k.AS.WithRoot(m.Phys &^ 0xfff)
	if err != nil {
		return nil, err
	}
	return &UserMemory{as: as}, nil
}

// UserMemory reads a process's virtual memory.
type UserMemory struct {
	as interface {
		ReadAt([]byte, int64) (int, error)
	}
}

// ReadAt reads user memory at va.
func (u *UserMemory) ReadAt(p []byte, va int64) (int, error) { return u.as.ReadAt(p, va) }

// Cmdline reads a process's command line from its memory as the guest's
// /proc/PID/cmdline gives it (fs/proc/base.c, get_mm_cmdline): the
// NUL-separated strings of the argument area — unless the process has
// overwritten the area's last byte, as setproctitle does (sshd, nginx,
// postgres): then the title is the one string from arg_start to its first
// NUL, which may run on into the environment area when that area follows
// the arguments directly.
func (k *Kernel) Cmdline(mmAddr uint64) ([]string, error) {
	mm, err := k.Object("mm_struct", mmAddr)
	if err != nil {
		return nil, err
	}
	f := &fields{v: mm}
	argStart, argEnd := f.uint("arg_start"), f.uint("arg_end")
	envStart, envEnd := f.uint("env_start"), f.uint("env_end")
	if len(f.errs) > 0 {
		return nil, errors.New(strings.Join(f.errs, "; "))
	}
	if argEnd <= argStart {
		return nil, nil
	}
	if envStart != argEnd || envEnd < envStart {
		envEnd = argEnd
	}
	um, err := k.UserSpace(mm)
	if err != nil {
		return nil, err
	}
	var last [1]byte
	if n, _ := um.ReadAt(last[:], int64(argEnd-1)); n == 1 && last[0] != 0 {
		title, err := um.readTitle(argStart, min(envEnd, argStart+maxCmdline))
		if title == "" && err != nil {
			return nil, err
		}
		return []string{title}, nil
	}
	return um.strings(argStart, argEnd, maxCmdline)
}

// readTitle reads the string at start up to its NUL, or up to end, a page
// at a time (the environment area may end in a page that is not there).
func (u *UserMemory) readTitle(start, end uint64) (string, error) {
	var out []byte
	for a := start; a < end; {
		n := min(end-a, 4096-a%4096)
		buf := make([]byte, n)
		got, err := u.ReadAt(buf, int64(a))
		if i := bytes.IndexByte(buf[:got], 0); i >= 0 {
			return string(append(out, buf[:i]...)), nil
		}
		out = append(out, buf[:got]...)
		if err != nil {
			return string(out), err
		}
		a += n
	}
	return string(out), nil
}

// userStrings reads the NUL-separated strings between two mm_struct
// fields (arg_start/arg_end, env_start/env_end) from the process's memory,
// at most max bytes.
func (k *Kernel) userStrings(mmAddr uint64, startField, endField string, max uint64) ([]string, error) {
	mm, err := k.Object("mm_struct", mmAddr)
	if err != nil {
		return nil, err
	}
	f := &fields{v: mm}
	start, end := f.uint(startField), f.uint(endField)
	if len(f.errs) > 0 {
		return nil, errors.New(strings.Join(f.errs, "; "))
	}
	if end <= start {
		return nil, nil
	}
	um, err := k.UserSpace(mm)
	if err != nil {
		return nil, err
	}
	return um.strings(start, end, max)
}

// strings reads the NUL-separated strings in [start, end), at most max bytes.
func (u *UserMemory) strings(start, end, max uint64) ([]string, error) {
	if end <= start {
		return nil, nil
	}
	if end-start > max {
		end = start + max
	}
	buf := make([]byte, end-start)
	n, err := u.ReadAt(buf, int64(start))
	if n == 0 && err != nil {
		return nil, err
	}
	buf = bytes.TrimRight(buf[:n], "\x00")
	if len(buf) == 0 {
		return nil, nil
	}
	return strings.Split(string(buf), "\x00"), nil
}

// SortProcesses orders by pid.
func SortProcesses(ps []Process) {
	sort.SliceStable(ps, func(i, j int) bool {
		if ps[i].TGID != ps[j].TGID {
			return ps[i].TGID < ps[j].TGID
		}
		return ps[i].PID < ps[j].PID
	})
}
