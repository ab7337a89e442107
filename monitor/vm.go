package monitor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmwatch/vmwatch/detect"
	"github.com/vmwatch/vmwatch/hv"
	"github.com/vmwatch/vmwatch/hv/qmp"
	"github.com/vmwatch/vmwatch/journal"
	"github.com/vmwatch/vmwatch/linux"
	"github.com/vmwatch/vmwatch/target"
)

// VM states.
const (
	StateRunning     = "running"
	StatePaused      = "paused"
	StateStopped     = "stopped"
	StateCrashed     = "crashed"
	StateUnreachable = "unreachable"
	StateStarting    = "starting"
)

// stateOf maps QEMU's run states.
func stateOf(qemu string) string {
	switch qemu {
	case "running":
		return StateRunning
	case "shutdown":
		return StateStopped
	case "internal-error", "guest-panicked":
		return StateCrashed
	case "":
		return StateUnreachable
	}
	return StatePaused
}

// connector opens a VM's monitor: a QMP socket, or libvirt's pass-through.
type connector interface {
	connect(ctx context.Context) (hv.Monitor, error)
	describe() string
}

type qmpConnector struct{ path string }

func (c qmpConnector) connect(ctx context.Context) (hv.Monitor, error) { return qmp.Dial(ctx, c.path) }
func (c qmpConnector) describe() string                                { return "qmp:" + c.path }

// VM is one watched virtual machine.
type VM struct {
	Name     string
	Source   string // "qmp" or "libvirt"
	settings VMSettings
	conn     connector
	d        *Daemon

	// dumpMu orders a QMP memory dump and pause_vm: while QEMU writes a
	// dump it has stopped the guest itself and starts it again when done,
	// so a pause asked for meanwhile is made after the dump
	dumpMu         sync.Mutex
	dumping        bool
	pauseAfterDump bool

	mu        sync.RWMutex
	booting   bool // the last check found the kernel still booting
	state     string
	lastErr   string
	kernel    string
	mon       hv.Monitor
	tg        *target.Target
	k         *linux.Kernel
	banner    string
	open      map[string]detect.Finding
	since     map[string]time.Time // when each open finding was first seen
	alarms    map[string]*AlarmState
	series    *Series
	latest    map[string]float64
	guest     linux.GuestStats
	top       []TopProcess
	procs     []linux.Process
	mods      []linux.Module
	socks     []linux.Socket
	lastCheck time.Time
	checkGen  uint64 // detector runs that updated the open findings
	cycleMs   float64
	baseline  *detect.Baseline
	prevHost  *HostSample
	prevTime  time.Time
	prevCPU   map[int64]float64
	reset     atomic.Bool // a RESET event: the next cycle finds the kernel again
	wake      chan struct{}
	// stepFn is one cycle's work, vm.step; tests replace it (a check that panics)
	stepFn func(context.Context) error
	panics atomic.Uint64 // panics recovered in this VM's loop
	// the last panic journaled, when, and the repeats since (not journaled)
	pmu           sync.Mutex
	lastPanic     string
	lastPanicRec  time.Time
	panicsSkipped uint64
	cancel        context.CancelFunc
	done          chan struct{}
}

// TopProcess is a process with its recent CPU use.
type TopProcess struct {
	linux.ProcessUsage
	CPUPercent float64 `json:"cpu_percent"`
}

func newVM(d *Daemon, name, source string, s VMSettings, c connector) *VM {
	vm := &VM{Name: name, Source: source, settings: s, conn: c, d: d, state: StateStarting,
		open: map[string]detect.Finding{}, since: map[string]time.Time{}, alarms: map[string]*AlarmState{},
		series: NewSeries(s.History.D(), s.MetricsInterval.D()), latest: map[string]float64{},
		prevCPU: map[int64]float64{}, wake: make(chan struct{}, 1), done: make(chan struct{})}
	vm.stepFn = vm.step
	return vm
}

// run is the VM's loop: one cycle per metrics interval, checks every
// check interval, each cycle bounded by the VM's deadline so that a hung
// VM never holds up another (each VM has its own loop).
func (vm *VM) run(ctx context.Context) {
	defer close(vm.done)
	defer vm.disconnect()
	interval := vm.settings.MetricsInterval.D()
	if c := vm.settings.CheckInterval.D(); c < interval {
		interval = c
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		vm.cycle(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-vm.wake:
		}
	}
}

// poke runs a cycle soon (a lifecycle event arrived).
func (vm *VM) poke() {
	select {
	case vm.wake <- struct{}{}:
	default:
	}
}

func (vm *VM) setErr(err error) {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if err == nil {
		vm.lastErr = ""
	} else {
		vm.lastErr = err.Error()
	}
}

func (vm *VM) disconnect() {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if vm.tg != nil {
		vm.tg.Close()
	}
	if vm.mon != nil {
		vm.mon.Close()
	}
	vm.tg, vm.k, vm.mon = nil, nil, nil
}

func (vm *VM) cycle(parent context.Context) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(parent, vm.settings.Deadline.D())
	defer cancel()
	err := vm.guarded(ctx, "cycle", vm.stepFn)
	if err != nil && parent.Err() == nil {
		vm.d.log.Debug("VM cycle", "vm", vm.Name, "err", err)
	}
	vm.setErr(err)
	vm.mu.Lock()
	vm.cycleMs = float64(time.Since(start).Microseconds()) / 1000
	vm.mu.Unlock()
}

// guarded runs f and turns a panic in it into that VM's error: the guest's
// memory, and the kernel types read from it, are the attacker's, so a
// parser that trusts one of them too far must cost one cycle of one VM,
// never the daemon. The panic is logged with its stack, journaled and
// counted; the loop goes on at the next interval.
func (vm *VM) guarded(ctx context.Context, where string, f func(context.Context) error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = vm.recovered(ctx, where, r, debug.Stack())
		}
	}()
	return f(ctx)
}

// recovered records a recovered panic and returns it as an error. A guest
// that makes every cycle panic the same way must not flood the journal (and
// push older records out through retention): a repeat of the last panic is
// journaled at most every panicRepeat, with the count of those in between.
func (vm *VM) recovered(ctx context.Context, where string, r any, stack []byte) error {
	n := vm.panics.Add(1)
	vm.d.panics.Add(1)
	err := fmt.Errorf("panic in %s (recovered): %v", where, r)
	now := time.Now()
	vm.pmu.Lock()
	repeat := err.Error() == vm.lastPanic && now.Sub(vm.lastPanicRec) < panicRepeat
	skipped := vm.panicsSkipped // repeats of the last journaled panic since
	if repeat {
		vm.panicsSkipped++
	} else {
		vm.lastPanic, vm.lastPanicRec, vm.panicsSkipped = err.Error(), now, 0
	}
	vm.pmu.Unlock()
	if repeat {
		vm.d.log.Warn("VM panic recovered again", "vm", vm.Name, "in", where, "panic", fmt.Sprint(r), "count", n)
		return err
	}
	vm.d.log.Error("VM panic recovered", "vm", vm.Name, "in", where, "panic", fmt.Sprint(r), "count", n, "stack", string(stack))
	data, _ := json.Marshal(map[string]any{"in": where, "panic": fmt.Sprint(r), "count": n, "repeats_not_journaled": skipped, "stack": string(stack)})
	vm.d.record(ctx, journal.Record{VM: vm.Name, Kind: journal.KindDaemon, Severity: "high", Subject: "panic",
		Message: fmt.Sprintf("VM %s: %v", vm.Name, err), Data: data})
	return err
}

// panicRepeat is how often the same panic of one VM is journaled again.
const panicRepeat = 10 * time.Minute

// Panics is how many panics the VM's loop recovered from.
func (vm *VM) Panics() uint64 { return vm.panics.Load() }

func (vm *VM) step(ctx context.Context) error {
	now := time.Now()
	if vm.mon == nil {
		m, err := vm.conn.connect(ctx)
		if err != nil {
			vm.setState(ctx, StateUnreachable, err.Error())
			return err
		}
		vm.mu.Lock()
		vm.mon = m
		vm.mu.Unlock()
		if c, ok := m.(*qmp.Client); ok {
			go vm.watchEvents(c)
		}
	}
	_, status, err := hv.Status(ctx, vm.mon)
	if err != nil {
		vm.disconnect()
		vm.setState(ctx, StateUnreachable, err.Error())
		return err
	}
	state := stateOf(status)
	if status == "save-vm" && vm.ownDump() {
		// our own evidence dump stops the guest for its length: not a
		// pause of the VM's (it resumes by itself, unless pause_vm ran)
		state = vm.currentState()
	}
	vm.setState(ctx, state, "QEMU reports "+status)
	metrics := map[string]float64{}
	if state == StateRunning || state == StatePaused {
		if err := vm.ensureKernel(ctx); err != nil {
			vm.alarmsEval(ctx, now, metrics)
			return err
		}
		vm.collect(ctx, now, metrics)
		if now.Sub(vm.lastCheck) >= vm.settings.CheckInterval.D()-time.Second/2 {
			if err := vm.check(ctx); err != nil {
				vm.d.log.Debug("check", "vm", vm.Name, "err", err)
			}
			vm.lastCheck = now
		}
	}
	vm.series.Add(now, metrics)
	vm.mu.Lock()
	vm.latest = metrics
	vm.mu.Unlock()
	vm.alarmsEval(ctx, now, metrics)
	return nil
}

// watchEvents wakes the loop on lifecycle events.
func (vm *VM) watchEvents(c *qmp.Client) {
	for ev := range c.Events() {
		switch ev.Event {
		case "SHUTDOWN", "RESET", "STOP", "RESUME", "GUEST_PANICKED", "POWERDOWN":
			vm.d.log.Info("QEMU event", "vm", vm.Name, "event", ev.Event)
			if ev.Event == "RESET" {
				vm.reset.Store(true)
			}
			vm.poke()
		}
	}
}

// setState records a change of state in the journal.
func (vm *VM) setState(ctx context.Context, state, why string) {
	vm.mu.Lock()
	old := vm.state
	vm.state = state
	vm.mu.Unlock()
	if old == state {
		return
	}
	data, _ := json.Marshal(map[string]string{"from": old, "to": state, "reason": why})
	sev := "info"
	if state == StateCrashed {
		sev = "critical"
	}
	vm.d.record(ctx, journal.Record{VM: vm.Name, Kind: journal.KindLifecycle, Severity: sev, Subject: state,
		Message: fmt.Sprintf("VM %s is %s (was %s)", vm.Name, state, old), Data: data})
	lvl := slog.LevelInfo
	if state == StateUnreachable || state == StateCrashed {
		lvl = slog.LevelWarn // the operator should look: QEMU gone, or its socket wrong
	}
	vm.d.log.Log(ctx, lvl, "VM state", "vm", vm.Name, "from", old, "to", state, "reason", why)
	if state != StateRunning && state != StatePaused {
		vm.mu.Lock()
		if vm.tg != nil {
			vm.tg.Close()
		}
		vm.tg, vm.k = nil, nil
		vm.mu.Unlock()
	}
}

// ensureKernel opens the guest's memory and finds its kernel, once per
// boot: a changed banner (or a failed read) means a new boot.
func (vm *VM) ensureKernel(ctx context.Context) error {
	if vm.reset.Swap(false) && vm.k != nil {
		vm.mu.Lock()
		vm.tg.Close()
		vm.tg, vm.k = nil, nil
		vm.mu.Unlock()
	}
	if vm.k != nil {
		vm.k.Flush()
		same, err := vm.sameBoot()
		if same {
			return nil
		}
		vm.d.log.Info("guest kernel changed; finding it again", "vm", vm.Name, "why", errText(err, "the kernel banner differs (a reboot)"))
		vm.mu.Lock()
		vm.tg.Close()
		vm.tg, vm.k = nil, nil
		vm.mu.Unlock()
	}
	select {
	case vm.d.bootstraps <- struct{}{}:
		defer func() { <-vm.d.bootstraps }()
	case <-ctx.Done():
		return ctx.Err()
	}
	tg, err := target.FromMonitor(ctx, vm.Name, vm.mon, target.Options{})
	if err != nil {
		return err
	}
	k, err := linux.Open(tg.Mem, linux.Options{CPUs: tg.CPUs})
	if err != nil {
		tg.Close()
		return fmt.Errorf("find the kernel: %w", err)
	}
	vm.mu.Lock()
	vm.tg, vm.k, vm.banner, vm.kernel = tg, k, k.Banner, k.Release
	vm.baseline = nil
	vm.mu.Unlock()
	vm.d.log.Info("kernel found", "vm", vm.Name, "release", k.Release)
	return nil
}

// sameBoot tells whether the kernel found earlier still runs: its banner
// reads the same. A kernel whose kallsyms lack linux_banner (no data
// symbols) had no banner at the start either; there only QEMU's RESET event
// tells a reboot, and the kernel is kept rather than found again (and its
// baseline lost) every cycle.
func (vm *VM) sameBoot() (bool, error) {
	a, ok := vm.k.Syms.Lookup("linux_banner")
	if !ok {
		return vm.banner == "", errors.New("kernel symbol linux_banner is gone from kallsyms")
	}
	b, err := vm.k.ReadCString(a, 512)
	if err != nil {
		return false, fmt.Errorf("read linux_banner at %#x: %w", a, err)
	}
	return strings.TrimSpace(b) == vm.banner, nil
}

func errText(err error, otherwise string) string {
	if err != nil {
		return err.Error()
	}
	return otherwise
}

// collect reads host- and guest-side metrics.
func (vm *VM) collect(ctx context.Context, now time.Time, m map[string]float64) {
	hs, err := hostSample(ctx, vm.mon.PID(), vm.mon)
	if err == nil {
		m["cpu_seconds"] = hs.CPUSeconds
		m["qemu_rss_bytes"] = float64(hs.RSS)
		if hs.Balloon > 0 {
			m["balloon_bytes"] = float64(hs.Balloon)
		}
		var delay float64
		for _, v := range hs.VCPUDelay {
			delay += v
		}
		m["vcpu_delay_seconds"] = delay
		for name, b := range hs.Block {
			m["block_read_bytes:"+name] = float64(b.ReadBytes)
			m["block_write_bytes:"+name] = float64(b.WriteBytes)
			m["block_read_requests:"+name] = float64(b.ReadOps)
			m["block_write_requests:"+name] = float64(b.WriteOps)
			m["block_read_seconds:"+name] = float64(b.ReadTimeNs) / 1e9
			m["block_write_seconds:"+name] = float64(b.WriteTimeNs) / 1e9
		}
		if p := vm.prevHost; p != nil {
			dt := now.Sub(vm.prevTime).Seconds()
			if dt > 0 && hs.VCPUs > 0 {
				m["cpu_usage_percent"] = clamp((hs.CPUSeconds-p.CPUSeconds)/dt/float64(hs.VCPUs)*100, 0, 100)
				var pd float64
				for _, v := range p.VCPUDelay {
					pd += v
				}
				m["vcpu_delay_percent"] = clamp((delay-pd)/dt/float64(hs.VCPUs)*100, 0, 100)
			}
		}
		vm.prevHost, vm.prevTime = &hs, now
		m["vcpus"] = float64(hs.VCPUs)
	}
	if ls, ok := vm.conn.(interface {
		stats(context.Context) (map[string]any, error)
	}); ok {
		if lst, err := ls.stats(ctx); err == nil {
			libvirtMetrics(lst, m)
		}
	}
	st, err := vm.k.Stats()
	if err == nil {
		m["guest_memory_total_bytes"] = float64(st.MemTotal)
		m["guest_memory_free_bytes"] = float64(st.MemFree)
		m["guest_memory_available_bytes"] = float64(st.MemAvailable)
		m["guest_memory_cached_bytes"] = float64(st.Cached)
		if st.MemTotal > 0 {
			m["guest_memory_used_percent"] = float64(st.MemTotal-min(st.MemAvailable, st.MemTotal)) / float64(st.MemTotal) * 100
		}
		m["guest_load1"], m["guest_load5"], m["guest_load15"] = st.Load[0], st.Load[1], st.Load[2]
		m["guest_tasks"] = float64(st.Threads)
		m["guest_uptime_seconds"] = st.Uptime
	}
	ps, perr := vm.k.Processes(linux.PSOptions{})
	processCount(m, ps, perr)
	var top []TopProcess
	cur := map[int64]float64{}
	for _, p := range ps {
		u, err := vm.k.Usage(p)
		if err != nil {
			continue
		}
		cur[p.PID] = u.CPUTime
		tp := TopProcess{ProcessUsage: u}
		if prev, ok := vm.prevCPU[p.PID]; ok && !vm.prevTime.IsZero() {
			if dt := vm.settings.MetricsInterval.D().Seconds(); dt > 0 {
				tp.CPUPercent = clamp((u.CPUTime-prev)/dt*100, 0, 100*m["vcpus"]+1)
			}
		}
		top = append(top, tp)
	}
	sort.Slice(top, func(i, j int) bool {
		if top[i].CPUPercent != top[j].CPUPercent {
			return top[i].CPUPercent > top[j].CPUPercent
		}
		return top[i].RSS > top[j].RSS
	})
	if len(top) > 20 {
		top = top[:20]
	}
	mods, _ := vm.k.Modules()
	socks, _ := vm.k.Sockets()
	vm.mu.Lock()
	vm.guest, vm.top, vm.prevCPU = st, top, cur
	vm.procs, vm.mods, vm.socks = ps, mods, socks
	vm.mu.Unlock()
}

// processCount sets guest_processes only from a complete walk of the task
// list: a failed or partial walk leaves the metric absent (as the README
// promises for a value that could not be read) rather than a count that
// lies — 0, or the part of the list read before it broke.
func processCount(m map[string]float64, ps []linux.Process, err error) {
	if err != nil {
		delete(m, "guest_processes")
		return
	}
	m["guest_processes"] = float64(len(ps))
}

func clamp(v, lo, hi float64) float64 { return max(lo, min(hi, v)) }

// check runs the detectors and keeps findings open while they hold.
func (vm *VM) check(ctx context.Context) error {
	opt := detect.Options{VM: vm.Name, Rules: vm.d.rules, Yara: vm.d.yara}
	if vm.settings.Baseline != nil && *vm.settings.Baseline {
		// a kernel still booting writes its own text and rodata: detect
		// neither records a baseline of it nor runs until it has booted
		if vm.baseline == nil {
			if b, err := vm.loadOrRecordBaseline(); err == nil {
				vm.baseline = b
			} else if !errors.Is(err, detect.ErrBooting) {
				vm.d.log.Warn("kernel baseline", "vm", vm.Name, "err", err)
			}
		}
		opt.Baseline = vm.baseline
	}
	rep, err := vm.runDetectors(ctx, opt)
	vm.mu.Lock()
	vm.booting = errors.Is(err, detect.ErrBooting)
	vm.mu.Unlock()
	if err != nil {
		return err
	}
	now := map[string]detect.Finding{}
	for _, f := range rep.Findings {
		now[f.Key] = f
	}
	vm.mu.Lock()
	prev := vm.open
	vm.open = now
	vm.checkGen++
	vm.lastCheck = time.Now()
	since := map[string]time.Time{}
	for k, f := range now {
		if t, ok := vm.since[k]; ok {
			since[k] = t
		} else {
			since[k] = f.Time
		}
	}
	vm.since = since
	vm.mu.Unlock()
	keys := make([]string, 0, len(now))
	for k := range now {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if _, was := prev[k]; !was {
			f := now[k]
			data, _ := json.Marshal(f)
			vm.d.record(ctx, journal.Record{VM: vm.Name, Kind: journal.KindFindingOpened, Severity: f.Severity.String(), Subject: k, Message: f.Title, Data: data})
		}
	}
	for k, f := range prev {
		if _, still := now[k]; !still {
			data, _ := json.Marshal(f)
			vm.d.record(ctx, journal.Record{VM: vm.Name, Kind: journal.KindFindingClosed, Severity: f.Severity.String(), Subject: k, Message: "no longer found: " + f.Title, Data: data})
		}
	}
	if len(rep.Errors) > 0 {
		var e []string
		for _, x := range rep.Errors {
			e = append(e, x.Detector+": "+x.Error)
		}
		return errors.New(strings.Join(e, "; "))
	}
	return nil
}

// runDetectors runs the detectors under the daemon's bound; the slot is
// given back by a defer, so a detector that panics does not keep it.
func (vm *VM) runDetectors(ctx context.Context, opt detect.Options) (*detect.Report, error) {
	select {
	case vm.d.checks <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-vm.d.checks }()
	return detect.Run(ctx, vm.k, opt)
}

// loadOrRecordBaseline keeps one baseline per VM and kernel build in the
// state directory: recorded at the first check, compared afterwards.
func (vm *VM) loadOrRecordBaseline() (*detect.Baseline, error) {
	dir := filepath.Join(vm.d.cfg.StateDir, "baselines")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := filepath.Join(dir, safeName(vm.Name)+"-"+safeName(vm.k.Release)+".baseline")
	if b, err := detect.LoadBaseline(p); err == nil && b.Banner == vm.k.Banner {
		b.Compact(p)
		return b, nil
	}
	b, err := detect.RecordBaseline(vm.k)
	if err != nil {
		return nil, err
	}
	if err := b.Save(p); err != nil {
		return nil, err
	}
	b.Compact(p)
	vm.d.log.Info("kernel baseline recorded", "vm", vm.Name, "file", p)
	return b, nil
}

func safeName(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == ' ' || r == 0 {
			return '_'
		}
		return r
	}, s)
}

// alarmsEval evaluates every alarm for the VM and acts on changes.
func (vm *VM) alarmsEval(ctx context.Context, now time.Time, metrics map[string]float64) {
	vm.mu.RLock()
	in := alarmInput{now: now, metrics: metrics, state: vm.state, checkGen: vm.checkGen}
	for _, f := range vm.open {
		in.findings = append(in.findings, f)
	}
	vm.mu.RUnlock()
	sort.Slice(in.findings, func(i, j int) bool { return in.findings[i].Key < in.findings[j].Key })
	for i := range vm.d.cfg.Alarms {
		a := &vm.d.cfg.Alarms[i]
		if !a.appliesTo(vm.Name) {
			continue
		}
		vm.mu.Lock()
		st := vm.alarms[a.Name]
		if st == nil {
			st = &AlarmState{Alarm: a.Name, Level: Green, Since: now}
			vm.alarms[a.Name] = st
		}
		old := st.Level
		fresh := a.fresh(st, in)
		lvl, msg := a.evaluate(st, in)
		st.Message = msg
		prevHeld := st.held
		if lvl != old {
			st.Level, st.Since, st.held = lvl, now, 0
		}
		if fresh && lvl > Green {
			st.held++
		}
		// disruptive actions of an earlier change: run once confirmed,
		// dropped when the level moved before
		var confirmed, unconfirmed []ActionDef
		ptr := st.pendingTr
		if len(st.pending) > 0 {
			switch {
			case lvl != old:
				unconfirmed = st.pending
				st.pending = nil
			case st.held >= a.confirmChecks():
				confirmed = st.pending
				st.pending = nil
			}
		}
		held := st.held
		vm.mu.Unlock()
		for _, act := range unconfirmed {
			vm.d.actionNotRun(actionJob{vm: vm, act: act, tr: ptr}, "info", fmt.Sprintf("not confirmed: the alarm left %s after %d of %d checks (confirm_checks)", ptr.To, prevHeld, a.confirmChecks()))
		}
		for _, act := range confirmed {
			vm.d.log.Info("alarm confirmed: disruptive action queued", "vm", vm.Name, "alarm", a.Name, "action", act.kind(), "checks", held)
			vm.d.enqueueAction(vm, act, ptr)
		}
		if lvl == old {
			continue
		}
		tr := Transition{Alarm: a.Name, VM: vm.Name, From: old, To: lvl, Message: msg, Time: now}
		if a.Finding != nil {
			tr.Findings = in.findings
		}
		data, _ := json.Marshal(tr)
		vm.d.record(ctx, journal.Record{VM: vm.Name, Kind: journal.KindAlarm, Severity: lvl.String(), Subject: a.Name,
			Message: fmt.Sprintf("alarm %s: %s -> %s: %s", a.Name, old, lvl, msg), Data: data})
		var wait []ActionDef
		for _, act := range a.Actions {
			if !act.runsOn(lvl) {
				continue
			}
			if act.disruptive() && lvl > Green && held < a.confirmChecks() {
				wait = append(wait, act)
				continue
			}
			vm.d.enqueueAction(vm, act, tr) // never blocks the loop
		}
		if len(wait) > 0 {
			vm.mu.Lock()
			st.pending, st.pendingTr = wait, tr
			vm.mu.Unlock()
			vm.d.log.Info("alarm raised: disruptive actions wait for confirmation", "vm", vm.Name, "alarm", a.Name, "level", lvl.String(), "confirm_checks", a.confirmChecks())
		}
	}
}

// pause stops the VM's vCPUs.
func (vm *VM) pause(ctx context.Context) error {
	m := vm.monitor()
	if m == nil {
		return errors.New("no monitor")
	}
	vm.dumpMu.Lock()
	defer vm.dumpMu.Unlock()
	if vm.dumping {
		vm.pauseAfterDump = true
		vm.d.log.Info("pause_vm during a memory dump: QEMU holds the guest stopped until the dump ends, then it is paused", "vm", vm.Name)
		return nil
	}
	_, err := m.Run(ctx, "stop", nil)
	return err
}

func (vm *VM) ownDump() bool {
	vm.dumpMu.Lock()
	defer vm.dumpMu.Unlock()
	return vm.dumping
}

func (vm *VM) currentState() string {
	vm.mu.RLock()
	defer vm.mu.RUnlock()
	return vm.state
}

func (vm *VM) monitor() hv.Monitor {
	vm.mu.RLock()
	defer vm.mu.RUnlock()
	return vm.mon
}

// cutNetwork takes every NIC's link down (QMP set_link), the NICs named
// by HMP `info network`.
func (vm *VM) cutNetwork(ctx context.Context) ([]string, error) {
	m := vm.monitor()
	if m == nil {
		return nil, errors.New("no monitor")
	}
	out, err := m.HMP(ctx, "info network")
	if err != nil {
		return nil, err
	}
	var nics []string
	for _, l := range strings.Split(out, "\n") {
		if l == "" || l[0] == ' ' || l[0] == '\\' || l[0] == '\t' {
			continue
		}
		name, rest, ok := strings.Cut(l, ": ")
		if ok && strings.Contains(rest, "type=nic") {
			nics = append(nics, strings.TrimSpace(name))
		}
	}
	if len(nics) == 0 {
		return nil, errors.New("the VM has no network card")
	}
	var errs []error
	for _, n := range nics {
		if _, err := m.Run(ctx, "set_link", map[string]any{"name": n, "up": false}); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", n, err))
		}
	}
	return nics, errors.Join(errs...)
}

// dumpMemory writes an ELF core of the guest (dump-guest-memory).
func (vm *VM) dumpMemory(ctx context.Context, path string) error {
	m := vm.monitor()
	if m == nil {
		return errors.New("no monitor")
	}
	// a libvirt domain's QEMU runs as another user and cannot open a path
	// here: libvirtd opens it and passes QEMU the descriptor
	if d, ok := m.(interface {
		DumpMemory(ctx context.Context, path string) error
	}); ok {
		return d.DumpMemory(ctx, path)
	}
	// detached: a dump in the foreground holds QEMU's monitor for its
	// whole length, so the state probes time out meanwhile and the VM is
	// taken for unreachable (and its monitor connection closed under the
	// dump)
	vm.dumpMu.Lock()
	if vm.dumping {
		vm.dumpMu.Unlock()
		return errors.New("another memory dump of this VM is being written (by another alarm's capture_evidence); QEMU writes one at a time")
	}
	vm.dumping = true
	vm.dumpMu.Unlock()
	defer func() {
		vm.dumpMu.Lock()
		defer vm.dumpMu.Unlock()
		vm.dumping = false
		if vm.pauseAfterDump {
			vm.pauseAfterDump = false
			// QEMU has resumed the guest it stopped for the dump
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			if _, err := m.Run(sctx, "stop", nil); err != nil {
				vm.d.log.Error("pause_vm after the memory dump failed", "vm", vm.Name, "err", err)
			}
		}
	}()
	if _, err := m.Run(ctx, "dump-guest-memory", map[string]any{"paging": false, "protocol": "file:" + path, "detach": true}); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("memory dump to %s did not finish: %w (QEMU goes on writing it)", path, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
		raw, err := m.Run(ctx, "query-dump", nil)
		if err != nil {
			return fmt.Errorf("memory dump to %s: %w", path, err)
		}
		var st struct {
			Status    string `json:"status"`
			Completed int64  `json:"completed"`
			Total     int64  `json:"total"`
		}
		if err := json.Unmarshal(raw, &st); err != nil {
			return fmt.Errorf("memory dump to %s: query-dump answered %.200q: %w", path, raw, err)
		}
		switch st.Status {
		case "completed":
			return nil
		case "active":
		case "failed":
			return fmt.Errorf("QEMU reports that the memory dump to %s failed (after %d of %d bytes); see QEMU's log", path, st.Completed, st.Total)
		default:
			return fmt.Errorf("memory dump to %s: QEMU reports dump status %q", path, st.Status)
		}
	}
}
