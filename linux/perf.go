package linux

import (
	"fmt"
	"strings"
)

// Perf events: every event in a CPU's or a task's perf_event_context, with
// its function pointers (overflow_handler, orig_overflow_handler, destroy,
// clock). A module's perf_event_create_kernel_counter (a sampling timer, a
// hardware breakpoint on a kernel address) runs its handler on every
// overflow; the kernel's own handlers (perf_event_output_*, the watchdog,
// ptrace's breakpoints, BPF's) are kernel text.

const maxPerfEvents = 1 << 14

// PerfEvents reads the function pointers of every perf event. Object is
// "perf event (cpu N)" or "perf event (pid P)".
func (k *Kernel) PerfEvents() ([]OpsPointer, error) {
	evT, err := k.Types.Struct("perf_event")
	if err != nil {
		return nil, err
	}
	entryOff, err := evT.FieldOffset("event_entry")
	if err != nil {
		return nil, err
	}
	ctxT, err := k.Types.Struct("perf_event_context")
	if err != nil {
		return nil, err
	}
	listOff, err := ctxT.FieldOffset("event_list")
	if err != nil {
		return nil, err
	}
	cpuT, err := k.Types.Struct("perf_cpu_context")
	if err != nil {
		return nil, err
	}
	ctxOff, err := cpuT.FieldOffset("ctx")
	if err != nil {
		return nil, err
	}
	var out []OpsPointer
	var errs []string
	note := func(err error) {
		if len(errs) < 16 {
			errs = append(errs, err.Error())
		}
	}
	seen := map[uint64]bool{}
	events := 0
	walk := func(ctx uint64, object string) {
		if ctx == 0 || seen[ctx] {
			return
		}
		seen[ctx] = true
		err := k.WalkList(ctx+listOff, maxPerfEvents, func(n uint64) error {
			if events++; events > maxPerfEvents {
				return fmt.Errorf("more than %d perf events", maxPerfEvents)
			}
			ps, err := k.FuncPointers("perf_event", n-entryOff)
			if err != nil {
				return err
			}
			for i := range ps {
				ps[i].Object = object
			}
			out = append(out, ps...)
			return nil
		})
		if err != nil {
			note(fmt.Errorf("%s: %w", object, err))
		}
	}
	offs, err := k.CPUs()
	if err != nil {
		return nil, err
	}
	if a, ok := k.Syms.Lookup("perf_cpu_context"); ok {
		// Linux 6.2 on: one perf_cpu_context per CPU
		for i, o := range offs {
			walk(a+o+ctxOff, fmt.Sprintf("perf event (cpu %d)", i))
		}
	} else if head, ok := k.Syms.Lookup("pmus"); ok {
		// before: each pmu has its per-CPU contexts (shared between pmus
		// of one kind)
		pmuT, err := k.Types.Struct("pmu")
		if err != nil {
			return nil, err
		}
		entOff, err := pmuT.FieldOffset("entry")
		if err != nil {
			return nil, err
		}
		err = k.WalkList(head, 1024, func(n uint64) error {
			v, err := k.ReadField("pmu", n-entOff, "pmu_cpu_context")
			if err != nil {
				return err
			}
			pc, _ := v.Ptr()
			if pc == 0 {
				return nil
			}
			for i, o := range offs {
				walk(pc+o+ctxOff, fmt.Sprintf("perf event (cpu %d)", i))
			}
			return nil
		})
		if err != nil {
			note(fmt.Errorf("pmus: %w", err))
		}
	}
	// every thread's own contexts
	tasks, terr := k.ProcessTasks(nil)
	if terr != nil {
		note(terr)
	}
	for _, t := range tasks {
		ths, _ := k.Threads(t)
		for _, th := range ths {
			tv, err := k.Object("task_struct", th)
			if err != nil {
				continue
			}
			f := &fields{v: tv}
			object := fmt.Sprintf("perf event (pid %d)", f.int("pid"))
			cv, err := tv.Field("perf_event_ctxp")
			if err != nil {
				continue
			}
			if cv.Type.Kind == KindArray {
				for i := 0; i < int(min(cv.Type.Len, 8)); i++ {
					if e, err := cv.Index(i); err == nil {
						p, _ := e.Ptr()
						walk(p, object)
					}
				}
			} else {
				p, _ := cv.Ptr()
				walk(p, object)
			}
		}
	}
	if len(errs) > 0 {
		return out, fmt.Errorf("perf events: %s", strings.Join(errs, "; "))
	}
	return out, nil
}
