package detect

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/vmwatch/vmwatch/linux"
)

// Options for Run.
type Options struct {
	VM string
	// Scan enables the detectors that search all of physical memory.
	Scan bool
	// Only limits the run to these detector ids (all when empty).
	Only []string
	// Rules are user rules evaluated over the views.
	Rules *RuleSet
	// Yara scans kernel and process memory when set.
	Yara Scanner
	// Baseline is the known-good state of kernel code for the integrity check.
	Baseline *Baseline
	// Now gives the time findings carry (time.Now by default).
	Now func() time.Time
}

// Report is the result of one run.
type Report struct {
	VM       string          `json:"vm"`
	Time     time.Time       `json:"time"`
	Findings []Finding       `json:"findings"`
	Errors   []DetectorError `json:"errors,omitempty"`
	Timings  []Timing        `json:"timings"`
}

// DetectorError is a detector that could not finish.
type DetectorError struct {
	Detector string `json:"detector"`
	Error    string `json:"error"`
}

// Timing is how long a detector took.
type Timing struct {
	Detector string  `json:"detector"`
	Ms       float64 `json:"ms"`
}

// Max returns the highest severity in the report, and false if there are no findings.
func (r *Report) Max() (Severity, bool) {
	if len(r.Findings) == 0 {
		return Info, false
	}
	m := Info
	for _, f := range r.Findings {
		if f.Severity > m {
			m = f.Severity
		}
	}
	return m, true
}

// Detector is one check.
type Detector struct {
	ID    string
	Title string
	// Scan marks detectors that read all of physical memory.
	Scan bool
	Run  func(s *Snapshot) ([]Finding, error)
}

// Detectors lists every built-in detector, in the order they run.
func Detectors() []Detector {
	return []Detector{
		{ID: "hidden-process", Title: "Processes missing from the task list", Run: hiddenProcesses},
		{ID: "hidden-process-scan", Title: "Task structures in memory that no list knows", Scan: true, Run: hiddenProcessScan},
		{ID: "hidden-module", Title: "Modules missing from the module list", Run: hiddenModules},
		{ID: "syscall-table", Title: "System call table entries that point elsewhere", Run: syscallTables},
		{ID: "syscall-dispatch", Title: "System call dispatch (x64_sys_call) that calls elsewhere", Run: syscallDispatch},
		{ID: "idt", Title: "Interrupt handlers outside the kernel", Run: idtHandlers},
		{ID: "kernel-integrity", Title: "Kernel code that changed", Run: kernelIntegrity},
		{ID: "kernel-hooks", Title: "ftrace, kprobe and eBPF hooks", Run: kernelHooks},
		{ID: "kernel-callbacks", Title: "Netfilter hooks, notifier callbacks, terminal and /proc operations, tracepoint probes, LSM hooks and perf events outside the kernel's own code", Run: kernelCallbacks},
		{ID: "credentials", Title: "Stolen or shared credentials", Run: credentials},
		{ID: "process-anomalies", Title: "Masquerading, fileless, injected and reverse-shell processes", Run: processAnomalies},
		{ID: "ptrace", Title: "Processes traced by a program that is not a debugger", Run: ptraceTracers},
		{ID: "rules", Title: "User rules", Run: runRules},
		{ID: "yara", Title: "YARA signatures in kernel and process memory", Run: runYara},
	}
}

// Snapshot holds the views the detectors share, each read once.
type Snapshot struct {
	K    *linux.Kernel
	Opt  Options
	Time time.Time

	procsOnce sync.Once
	procs     []linux.Process
	procsErr  error

	threadsOnce sync.Once
	threads     []linux.Process
	threadsErr  error

	modsOnce sync.Once
	mods     []linux.Module
	modsErr  error

	sockOnce sync.Once
	socks    []linux.Socket
	socksErr error

	detailMu sync.Mutex
	details  map[linux.Addr]*ProcDetail

	sitesOnce sync.Once
	sites     *linux.SiteCheck
	sitesErr  error
}

// Sites are the kernel's run-time patch sites with what its mechanisms
// may write there now (see linux.SiteCheck).
func (s *Snapshot) Sites() (*linux.SiteCheck, error) {
	s.sitesOnce.Do(func() {
		sites, err := s.K.PatchSites()
		s.sites = s.K.NewSiteCheck(sites)
		s.sitesErr = errors.Join(err, s.sites.Err())
	})
	return s.sites, s.sitesErr
}

// Processes are the thread group leaders of the task list.
func (s *Snapshot) Processes() ([]linux.Process, error) {
	s.procsOnce.Do(func() { s.procs, s.procsErr = s.K.Processes(linux.PSOptions{}) })
	return s.procs, s.procsErr
}

// Threads are all tasks reachable from the task list.
func (s *Snapshot) Threads() ([]linux.Process, error) {
	s.threadsOnce.Do(func() { s.threads, s.threadsErr = s.K.Processes(linux.PSOptions{Threads: true, NoCmdline: true}) })
	return s.threads, s.threadsErr
}

// Modules are the module list.
func (s *Snapshot) Modules() ([]linux.Module, error) {
	s.modsOnce.Do(func() { s.mods, s.modsErr = s.K.Modules() })
	return s.mods, s.modsErr
}

// Sockets are the sockets processes hold.
func (s *Snapshot) Sockets() ([]linux.Socket, error) {
	s.sockOnce.Do(func() { s.socks, s.socksErr = s.K.Sockets() })
	return s.socks, s.socksErr
}

// finding fills the common fields.
func (s *Snapshot) finding(id, title string, sev Severity, attack, key, explanation string, ev Evidence) Finding {
	return Finding{ID: id, Title: title, Severity: sev, Attack: attack, VM: s.Opt.VM, Time: s.Time, Evidence: ev, Explanation: explanation, Key: id + ":" + key}
}

// addr describes an address with its symbol or module.
func (s *Snapshot) addr(role string, a uint64) AddrEvidence {
	e := AddrEvidence{Role: role, Address: linux.Addr(a)}
	if s.K.KernelText(a) || s.K.Loc.TextStart <= a && a < s.K.Loc.ImageEnd {
		e.Symbol = s.K.Syms.Describe(a)
	}
	if mods, err := s.Modules(); err == nil {
		if m, ok := linux.InModule(mods, a); ok {
			e.Module = m.Name
		}
	}
	return e
}

// ErrBooting is Run's (and RecordBaseline's) answer while the guest kernel
// has not finished booting (system_state below SYSTEM_RUNNING).
var ErrBooting = errors.New("the guest kernel is still booting (system_state is below SYSTEM_RUNNING): its code is not in its final, patched form yet and its init memory is not freed, so the detectors would report the kernel's own boot-time code as hooks; check again once it has booted")

// Run runs the detectors once over a kernel.
func Run(ctx context.Context, k *linux.Kernel, opt Options) (*Report, error) {
	now := time.Now
	if opt.Now != nil {
		now = opt.Now
	}
	s := &Snapshot{K: k, Opt: opt, Time: now().UTC(), details: map[linux.Addr]*ProcDetail{}}
	r := &Report{VM: opt.VM, Time: s.Time, Findings: []Finding{}}
	only := map[string]bool{}
	for _, id := range opt.Only {
		only[id] = true
	}
	known := map[string]bool{}
	for _, d := range Detectors() {
		known[d.ID] = true
	}
	for id := range only {
		if !known[id] {
			return nil, fmt.Errorf("unknown detector %q", id)
		}
	}
	// a kernel still booting runs code it has not patched into its final
	// form yet (alternatives jump to .altinstr_aux) and has not freed its
	// init memory: every detector would take that for an attack
	if booted, err := k.Booted(); err == nil && !booted {
		return nil, ErrBooting
	}
	for _, d := range Detectors() {
		if len(only) > 0 && !only[d.ID] {
			continue
		}
		if d.Scan && !opt.Scan && !only[d.ID] {
			continue
		}
		if err := ctx.Err(); err != nil {
			return r, err
		}
		t0 := time.Now()
		fs, err := d.Run(s)
		r.Timings = append(r.Timings, Timing{d.ID, float64(time.Since(t0).Microseconds()) / 1000})
		r.Findings = append(r.Findings, fs...)
		if err != nil {
			r.Errors = append(r.Errors, DetectorError{d.ID, err.Error()})
		}
	}
	sortFindings(r.Findings)
	return r, nil
}

// IDs returns the detector ids, sorted.
func IDs() []string {
	var out []string
	for _, d := range Detectors() {
		out = append(out, d.ID)
	}
	sort.Strings(out)
	return out
}
