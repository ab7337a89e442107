package linux

import (
	"encoding/binary"
	"fmt"
)

// maxCPUs bounds per-CPU walks.
const maxCPUs = 8192

// CPUs returns the per-CPU offsets of the possible CPUs (__per_cpu_offset,
// nr_cpu_ids long).
func (k *Kernel) CPUs() ([]uint64, error) {
	n := uint64(1)
	if a, ok := k.Syms.Lookup("nr_cpu_ids"); ok {
		b := make([]byte, 4)
		if _, err := k.AS.ReadAt(b, int64(a)); err == nil {
			n = uint64(binary.LittleEndian.Uint32(b))
		}
	}
	if n == 0 || n > maxCPUs {
		return nil, fmt.Errorf("nr_cpu_ids is %d", n)
	}
	base, err := k.Symbol("__per_cpu_offset")
	if err != nil {
		return nil, err
	}
	b := make([]byte, 8*n)
	if _, err := k.AS.ReadAt(b, int64(base)); err != nil {
		return nil, fmt.Errorf("__per_cpu_offset: %w", err)
	}
	out := make([]uint64, n)
	for i := range out {
		out[i] = binary.LittleEndian.Uint64(b[8*i:])
	}
	return out, nil
}

// PerCPU returns the address of a per-CPU variable on each CPU.
func (k *Kernel) PerCPU(name string) ([]uint64, error) {
	sym, err := k.Symbol(name)
	if err != nil {
		return nil, err
	}
	offs, err := k.CPUs()
	if err != nil {
		return nil, err
	}
	out := make([]uint64, len(offs))
	for i, o := range offs {
		out[i] = sym + o
	}
	return out, nil
}

// RunQueueTask is a task the scheduler knows about on a CPU.
type RunQueueTask struct {
	CPU     int  `json:"cpu"`
	Task    Addr `json:"task"`
	Current bool `json:"current"`
}

// maxRunnable bounds the run-queue tree walk.
const maxRunnable = 1 << 16

// RunQueues lists the task running on each CPU (rq->curr) and the runnable
// tasks queued in each CPU's CFS tree, from the scheduler's own structures.
func (k *Kernel) RunQueues() ([]RunQueueTask, error) {
	rqs, err := k.PerCPU("runqueues")
	if err != nil {
		return nil, err
	}
	rqT, err := k.Types.Struct("rq")
	if err != nil {
		return nil, err
	}
	var out []RunQueueTask
	for cpu, a := range rqs {
		rq, err := k.ReadValue(rqT, a)
		if err != nil {
			return out, fmt.Errorf("run queue of CPU %d: %w", cpu, err)
		}
		f := &fields{v: rq}
		if cur := f.ptr("curr"); cur != 0 {
			out = append(out, RunQueueTask{CPU: cpu, Task: Addr(cur), Current: true})
		}
		cfs, err := rq.Field("cfs")
		if err != nil {
			continue
		}
		ts, err := k.cfsTasks(cfs, 0)
		if err != nil {
			return out, fmt.Errorf("CFS tree of CPU %d: %w", cpu, err)
		}
		for _, t := range ts {
			out = append(out, RunQueueTask{CPU: cpu, Task: Addr(t)})
		}
	}
	return out, nil
}

// cfsTasks walks a cfs_rq's red-black tree of sched_entities; group
// entities (my_q set) lead into their own cfs_rq.
func (k *Kernel) cfsTasks(cfs Value, depth int) ([]uint64, error) {
	if depth > 8 {
		return nil, fmt.Errorf("task group nesting deeper than 8: %w", ErrListCorrupt)
	}
	root, err := cfs.Field("tasks_timeline.rb_root.rb_node")
	if err != nil {
		return nil, err
	}
	rootp, _ := root.Ptr()
	seT, err := k.Types.Struct("sched_entity")
	if err != nil {
		return nil, err
	}
	nodeOff, err := seT.FieldOffset("run_node")
	if err != nil {
		return nil, err
	}
	tT, _ := k.Types.Struct("task_struct")
	seOff, err := tT.FieldOffset("se")
	if err != nil {
		return nil, err
	}
	rbT, err := k.Types.Struct("rb_node")
	if err != nil {
		return nil, err
	}
	var out []uint64
	seen := map[uint64]bool{}
	stack := []uint64{rootp}
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if n == 0 {
			continue
		}
		if seen[n] || len(seen) > maxRunnable {
			return out, fmt.Errorf("run queue tree node %#x reached twice: %w", n, ErrListCorrupt)
		}
		seen[n] = true
		node, err := k.ReadValue(rbT, n)
		if err != nil {
			return out, err
		}
		nf := &fields{v: node}
		stack = append(stack, nf.ptr("rb_left"), nf.ptr("rb_right"))
		se := n - nodeOff
		myq, err := k.ReadField("sched_entity", se, "my_q")
		if err == nil {
			if q, _ := myq.Ptr(); q != 0 {
				if cq, err := k.Object("cfs_rq", q); err == nil {
					sub, err := k.cfsTasks(cq, depth+1)
					out = append(out, sub...)
					if err != nil {
						return out, err
					}
				}
				continue
			}
		}
		out = append(out, se-seOff)
	}
	return out, nil
}
