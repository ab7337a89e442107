package linux

import (
	"errors"
	"fmt"
	"strings"
)

// Who traces whom: a traced task has PT_PTRACED in task->ptrace and its
// tracer in task->parent (real_parent stays the process that forked it),
// the pair /proc/PID/status shows as TracerPid.

// Ptrace is one traced thread and its tracer.
type Ptrace struct {
	TID        int64  `json:"tid"`
	PID        int64  `json:"pid"`
	Comm       string `json:"comm"`
	TracerTID  int64  `json:"tracer_tid"`
	TracerPID  int64  `json:"tracer_pid"`
	TracerComm string `json:"tracer_comm"`
	// Seized is PTRACE_SEIZE rather than PTRACE_ATTACH (or TRACEME).
	Seized bool `json:"seized"`
	// Options are the PTRACE_O_* options the tracer set.
	Options []string `json:"options,omitempty"`
	Task    Addr     `json:"task"`
	Tracer  Addr     `json:"tracer"`
}

// task->ptrace bits (include/linux/ptrace.h)
const (
	ptPtraced  = 0x1
	ptSeized   = 0x10000
	ptOptShift = 3
)

// ptraceOptions are PTRACE_O_* (include/uapi/linux/ptrace.h), shifted
// into task->ptrace by PT_OPT_FLAG_SHIFT.
var ptraceOptions = []flagName{
	{1 << 0, "TRACESYSGOOD"}, {1 << 1, "TRACEFORK"}, {1 << 2, "TRACEVFORK"}, {1 << 3, "TRACECLONE"},
	{1 << 4, "TRACEEXEC"}, {1 << 5, "TRACEVFORKDONE"}, {1 << 6, "TRACEEXIT"}, {1 << 7, "TRACESECCOMP"},
	{1 << 20, "EXITKILL"}, {1 << 21, "SUSPEND_SECCOMP"},
}

// Ptraces lists every traced thread of the task list's processes.
func (k *Kernel) Ptraces() ([]Ptrace, error) {
	leaders, walkErr := k.TaskList()
	if walkErr != nil && len(leaders) == 0 {
		return nil, walkErr
	}
	tt, err := k.Types.Struct("task_struct")
	if err != nil {
		return nil, err
	}
	var out []Ptrace
	var errs []error
	seen := map[uint64]bool{} // threads read, across thread groups
	for _, a := range leaders {
		lv, err := k.ReadValue(tt, a)
		if err != nil {
			continue
		}
		ths, err := k.Threads(lv)
		if err != nil && len(errs) < 16 {
			errs = append(errs, fmt.Errorf("threads of task %#x: %w", a, err))
			ths = []uint64{a}
		}
		for _, th := range ths {
			if seen[th] {
				continue
			}
			seen[th] = true
			v := lv
			if th != a {
				if v, err = k.ReadValue(tt, th); err != nil {
					continue
				}
			}
			f := &fields{v: v}
			flags := f.uint("ptrace")
			if len(f.errs) > 0 {
				return out, fmt.Errorf("task %#x: %s", th, strings.Join(f.errs, "; "))
			}
			if flags&ptPtraced == 0 {
				continue
			}
			p := Ptrace{TID: f.int("pid"), PID: f.int("tgid"), Comm: f.str("comm"), Seized: flags&ptSeized != 0, Task: Addr(th)}
			for _, o := range ptraceOptions {
				if flags>>ptOptShift&o.flag != 0 {
					p.Options = append(p.Options, o.name)
				}
			}
			tracer := f.ptr("parent")
			p.Tracer = Addr(tracer)
			if tv, err := k.ReadValue(tt, tracer); err == nil {
				tf := &fields{v: tv}
				p.TracerTID, p.TracerPID, p.TracerComm = tf.int("pid"), tf.int("tgid"), tf.str("comm")
			} else {
				errs = append(errs, fmt.Errorf("tracer of tid %d: %w", p.TID, err))
			}
			out = append(out, p)
		}
	}
	return out, errors.Join(append(errs, walkErr)...)
}
