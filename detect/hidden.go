package detect

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/vmwatch/vmwatch/linux"
)

// confirmDelay is how long a detector waits before it reads again to
// confirm a difference between two views of a running guest (a task
// being created or reaped is briefly in one view and not the other).
var confirmDelay = 40 * time.Millisecond

type hiddenTask struct {
	task  uint64
	pid   int64
	views []string
}

// allThreads walks the task list and every thread group. A list that
// changes while it is walked (processes starting and exiting) breaks the
// walk; it is read again, a few times, until one walk is whole: comparing
// a partial list with other views would report what it missed as hidden.
func allThreads(k *linux.Kernel) ([]linux.Process, error) {
	var err error
	for try := 0; try < 8; try++ {
		var ts []linux.Process
		ts, err = k.Processes(linux.PSOptions{Threads: true, NoCmdline: true})
		if err == nil {
			complete := true
			for _, t := range ts {
				if len(t.Errors) > 0 {
					complete = false
				}
			}
			if complete {
				return ts, nil
			}
			err = fmt.Errorf("task %d: %s", ts[0].PID, "unreadable")
		}
		time.Sleep(5 * time.Millisecond)
		k.Flush()
	}
	return nil, fmt.Errorf("the task list kept changing while it was read: %w", err)
}

// taskDiscrepancies compares the task list (all threads) with the PID
// table and the run queues.
func taskDiscrepancies(k *linux.Kernel) (map[uint64]*hiddenTask, error) {
	threads, err := allThreads(k)
	if err != nil {
		return nil, err
	}
	listed := map[uint64]bool{}
	for _, t := range threads {
		listed[uint64(t.Task)] = true
	}
	if it, ok := k.Syms.Lookup("init_task"); ok {
		listed[it] = true
	}
	out := map[uint64]*hiddenTask{}
	add := func(task uint64, pid int64, view string) {
		h := out[task]
		if h == nil {
			h = &hiddenTask{task: task, pid: pid}
			out[task] = h
		}
		h.views = append(h.views, view)
	}
	pids, perr := k.PIDTable()
	for _, p := range pids {
		if !listed[uint64(p.Task)] {
			add(uint64(p.Task), p.PID, "PID table")
		}
	}
	rq, rerr := k.RunQueues()
	for _, r := range rq {
		if !listed[uint64(r.Task)] {
			pid, err := k.ReadField("task_struct", uint64(r.Task), "pid")
			if err != nil {
				continue
			}
			n, _ := pid.Int()
			if n == 0 {
				continue // a CPU's idle task
			}
			view := fmt.Sprintf("run queue of CPU %d", r.CPU)
			if r.Current {
				view = fmt.Sprintf("running on CPU %d", r.CPU)
			}
			add(uint64(r.Task), n, view)
		}
	}
	if perr != nil {
		return out, fmt.Errorf("PID table: %w", perr)
	}
	if rerr != nil {
		return out, fmt.Errorf("run queues: %w", rerr)
	}
	return out, err
}

func hiddenProcesses(s *Snapshot) ([]Finding, error) {
	first, err := taskDiscrepancies(s.K)
	if len(first) == 0 {
		return nil, err
	}
	// Read again: what was only being created or reaped is gone by now.
	time.Sleep(confirmDelay)
	s.K.Flush()
	second, err := taskDiscrepancies(s.K)
	var out []Finding
	for task, h := range second {
		if f := first[task]; f == nil || f.pid != h.pid {
			continue // gone, or a new task in a reused slot
		}
		tv, rerr := s.K.Object("task_struct", task)
		comm, tgid := "?", int64(0)
		if rerr == nil {
			if c, e := tv.Field("comm"); e == nil {
				comm = c.Str()
			}
			if t, e := tv.Field("tgid"); e == nil {
				tgid, _ = t.Int()
			}
		}
		sort.Strings(h.views)
		ev := Evidence{
			PIDs:      []int64{h.pid},
			Processes: []string{fmt.Sprintf("%d %s", h.pid, comm)},
			Addresses: []AddrEvidence{{Role: "task_struct", Address: linux.Addr(task)}},
			Expected:  "in the task list (init_task.tasks)",
			Found:     "only in " + strings.Join(h.views, ", "),
			Details:   map[string]any{"tgid": tgid},
		}
		out = append(out, s.finding("hidden-process", fmt.Sprintf("Process %d (%s) is hidden from the task list", h.pid, comm), Critical, "T1014",
			fmt.Sprintf("%d", h.pid),
			fmt.Sprintf("Task %d (%s) exists in the kernel's %s but was unlinked from the task list, so tools inside the guest do not see it: a rootkit hides it. Investigate the process and the module that hid it; take a memory dump before acting.", h.pid, comm, strings.Join(h.views, " and ")),
			ev))
	}
	return out, err
}

// hiddenProcessScan searches physical memory for live task structures that
// neither the task list nor the PID table knows. The guest runs on while
// memory is scanned, so every candidate is checked again against fresh
// views, twice, before it is reported.
func hiddenProcessScan(s *Snapshot) ([]Finding, error) {
	found, err := s.K.ScanTasks()
	if err != nil && len(found) == 0 {
		return nil, err
	}
	known := func() (map[uint64]bool, map[uint64]bool) {
		s.K.Flush()
		listed, inIDR := map[uint64]bool{}, map[uint64]bool{}
		threads, terr := allThreads(s.K)
		if terr != nil && err == nil {
			err = terr
		}
		for _, t := range threads {
			listed[uint64(t.Task)] = true
		}
		if it, ok := s.K.Syms.Lookup("init_task"); ok {
			listed[it] = true
		}
		pids, _ := s.K.PIDTable()
		for _, p := range pids {
			inIDR[uint64(p.Task)] = true
		}
		return listed, inIDR
	}
	cands := found
	var inIDR map[uint64]bool
	for round := 0; round < 2 && len(cands) > 0; round++ {
		if round > 0 {
			time.Sleep(confirmDelay)
		}
		var listed map[uint64]bool
		listed, inIDR = known()
		var still []linux.ScannedTask
		for _, t := range cands {
			if listed[uint64(t.Task)] || t.PID == 0 {
				continue
			}
			if round > 0 {
				// the same task, not a new one in a reused slot
				if now, alive := s.K.TaskAlive(uint64(t.Task)); !alive || now.PID != t.PID || now.Comm != t.Comm {
					continue
				}
			}
			still = append(still, t)
		}
		cands = still
	}
	var out []Finding
	for _, t := range cands {
		where := "in no list and not in the PID table"
		if inIDR[uint64(t.Task)] {
			where = "in the PID table but not in the task list"
		}
		out = append(out, s.finding("hidden-process", fmt.Sprintf("Process %d (%s) is hidden from the task list", t.PID, t.Comm), Critical, "T1014",
			fmt.Sprintf("%d", t.PID),
			fmt.Sprintf("A live task structure for %d (%s) was found by scanning physical memory; it is %s. A rootkit hides it.", t.PID, t.Comm, where),
			Evidence{PIDs: []int64{t.PID}, Processes: []string{fmt.Sprintf("%d %s", t.PID, t.Comm)},
				Addresses: []AddrEvidence{{Role: "task_struct", Address: t.Task}}, Expected: "in the task list", Found: "only in physical memory (" + where + ")"}))
	}
	return out, err
}

func hiddenModules(s *Snapshot) ([]Finding, error) {
	find := func() (list, sysfs, scan []linux.Module, err error) {
		list, err1 := s.K.Modules()
		sysfs, err2 := s.K.SysfsModules()
		scan, err3 := s.K.ScanModules()
		for _, e := range []error{err1, err2, err3} {
			if e != nil && err == nil {
				err = e
			}
		}
		return
	}
	type disc struct {
		m     linux.Module
		where []string
		sev   Severity
	}
	compare := func(list, sysfs, scan []linux.Module) map[linux.Addr]*disc {
		in := func(ms []linux.Module) map[linux.Addr]linux.Module {
			out := map[linux.Addr]linux.Module{}
			for _, m := range ms {
				out[m.Addr] = m
			}
			return out
		}
		l, sy, sc := in(list), in(sysfs), in(scan)
		out := map[linux.Addr]*disc{}
		for a, m := range sc {
			if _, ok := l[a]; !ok {
				d := &disc{m: m, where: []string{"module memory"}, sev: Critical}
				if _, ok := sy[a]; ok {
					d.where = append(d.where, "sysfs")
				}
				out[a] = d
			}
		}
		for a, m := range sy {
			if _, ok := l[a]; !ok && out[a] == nil {
				out[a] = &disc{m: m, where: []string{"sysfs"}, sev: Critical}
			}
		}
		for a, m := range l {
			if _, ok := sy[a]; !ok && m.State == "Live" {
				out[a] = &disc{m: m, where: []string{"the module list, not sysfs"}, sev: High}
			}
		}
		return out
	}
	l1, sy1, sc1, err := find()
	first := compare(l1, sy1, sc1)
	if len(first) == 0 {
		return nil, err
	}
	time.Sleep(confirmDelay)
	s.K.Flush()
	l2, sy2, sc2, err := find()
	var out []Finding
	for a, d := range compare(l2, sy2, sc2) {
		if first[a] == nil {
			continue
		}
		m := d.m
		ev := Evidence{Modules: []string{m.Name}, Addresses: []AddrEvidence{{Role: "struct module", Address: m.Addr}, {Role: "code", Address: m.Base}},
			Expected: "in the module list and in /sys/module", Found: "in " + strings.Join(d.where, " and "),
			Details: map[string]any{"size": m.Size, "state": m.State}}
		if d.sev == Critical {
			out = append(out, s.finding("hidden-module", fmt.Sprintf("Kernel module %s is hidden from the module list", m.Name), Critical, "T1014", m.Name,
				fmt.Sprintf("Module %s (code at %v, %d bytes) is loaded but unlinked from the kernel's module list, so lsmod and /proc/modules inside the guest do not show it: a rootkit hides itself this way. Treat the guest's kernel as compromised; dump memory for analysis and restore from a clean backup.", m.Name, m.Base, m.Size),
				ev))
		} else {
			out = append(out, s.finding("hidden-module", fmt.Sprintf("Kernel module %s is missing from sysfs", m.Name), High, "T1014", m.Name,
				fmt.Sprintf("Module %s is in the module list but removed from /sys/module, which only a module that hides itself does.", m.Name), ev))
		}
	}
	return out, err
}
