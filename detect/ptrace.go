package detect

import (
	"fmt"
	"path"
	"slices"
	"strings"
)

// debuggers are the programs whose business is tracing others.
var debuggers = []string{"gdb", "gdbserver", "lldb", "lldb-server", "strace", "ltrace", "rr", "valgrind", "perf", "crash", "criu"}

// ptraceTracers reports traced processes: one finding per tracer and
// tracee process. A tracer that is not a debugger is how code is injected
// into another process, its system calls hidden or its secrets read
// (MITRE T1055.008); a debugger is reported low, as a thing to know.
func ptraceTracers(s *Snapshot) ([]Finding, error) {
	links, err := s.K.Ptraces()
	if links == nil && err != nil {
		return nil, err
	}
	// the tracers' programs (only theirs: a detail read costs a walk of
	// the process's memory map)
	tracers := map[int64]bool{}
	for _, l := range links {
		tracers[l.TracerPID] = true
	}
	exe := map[int64]string{}
	if ps, perr := s.Processes(); perr == nil {
		for _, p := range ps {
			if !tracers[p.PID] {
				continue
			}
			if d := s.Detail(p); d.ExeErr == nil {
				exe[p.PID] = d.Exe.Path
			}
		}
	}
	type pair struct{ tracer, tracee int64 }
	seen := map[pair]bool{}
	var out []Finding
	for _, l := range links {
		pr := pair{l.TracerPID, l.PID}
		if seen[pr] {
			continue
		}
		seen[pr] = true
		name := l.TracerComm
		if e, ok := exe[l.TracerPID]; ok {
			name = path.Base(e)
		}
		how := "attached to"
		if l.Seized {
			how = "seized"
		}
		ev := Evidence{PIDs: []int64{l.PID, l.TracerPID},
			Processes: []string{fmt.Sprintf("%d %s", l.PID, l.Comm), fmt.Sprintf("%d %s", l.TracerPID, l.TracerComm)},
			Found:     fmt.Sprintf("%d (%s, %s) %s %d (%s), options %s", l.TracerPID, l.TracerComm, orUnknown(exe[l.TracerPID]), how, l.PID, l.Comm, orNone(l.Options)),
			Expected:  "no tracer, or a debugger (" + strings.Join(debuggers, ", ") + ")"}
		key := fmt.Sprintf("%d:%d", l.TracerPID, l.PID)
		if slices.Contains(debuggers, name) || slices.Contains(debuggers, l.TracerComm) {
			out = append(out, s.finding("ptrace-debugger", fmt.Sprintf("Process %d (%s) is traced by the debugger %s (%d)", l.PID, l.Comm, name, l.TracerPID), Low, "T1055.008", key,
				fmt.Sprintf("%s (%d) traces process %d (%s). A debugger can read and change everything in the process it traces; make sure someone is debugging it.", name, l.TracerPID, l.PID, l.Comm), ev))
			continue
		}
		out = append(out, s.finding("ptrace-tracer", fmt.Sprintf("Process %d (%s) is traced by %s (%d), which is not a debugger", l.PID, l.Comm, name, l.TracerPID), High, "T1055.008", key,
			fmt.Sprintf("Process %d (%s, %s) traces process %d (%s) with ptrace. Only debuggers and tracers do that; malware uses ptrace to inject code into another process, to read its memory (keys, passwords) or to hide what it does.", l.TracerPID, l.TracerComm, orUnknown(exe[l.TracerPID]), l.PID, l.Comm), ev))
	}
	return out, err
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ",")
}
