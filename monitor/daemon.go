package monitor

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmwatch/vmwatch/detect"
	"github.com/vmwatch/vmwatch/journal"
)

// Daemon watches a host's VMs.
type Daemon struct {
	cfg   *Config
	log   *slog.Logger
	j     *journal.Journal
	rules *detect.RuleSet
	yara  detect.Scanner

	mu   sync.RWMutex
	vms  map[string]*VM
	ctx  context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup

	started time.Time
	// bootstraps bounds how many VMs find their kernel at once (each reads
	// its kernel image, tens of megabytes, into memory for a moment)
	bootstraps chan struct{}
	// checks bounds how many VMs run their detectors at once: they are
	// CPU-bound, and each holds a copy of its kernel's text while it runs
	checks chan struct{}

	// Stop runs once: a second call (a signal during shutdown) must not
	// write to or close the closed journal
	stopOnce sync.Once
	// panics counts the panics recovered in VM loops (VMs removed since included)
	panics atomic.Uint64
	// vmHook, when set (tests), sees each new VM before its loop starts
	vmHook func(*VM)

	// actions is the queue of alarm actions, served off the VM loops
	actions *actionQueue

	bmu     sync.Mutex
	bstatus map[string]BackupStatus // scheduled backups by domain
}

// New prepares a daemon: it opens the journal and loads the rules.
func New(cfg *Config, log *slog.Logger) (*Daemon, error) {
	if log == nil {
		log = slog.Default()
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	cfg.Actions.setDefaults() // a Config made in code may not have had SetDefaults
	var key []byte
	if cfg.Journal.KeyFile != "" {
		b, err := os.ReadFile(cfg.Journal.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("journal key: %w", err)
		}
		key = b
	}
	j, err := journal.Open(cfg.Journal.Path, journal.Options{Key: key})
	if err != nil {
		return nil, err
	}
	rules, err := detect.DefaultRules()
	if err != nil {
		j.Close()
		return nil, err
	}
	for _, f := range cfg.Rules {
		if err := rules.LoadFile(f); err != nil {
			j.Close()
			return nil, err
		}
	}
	d := &Daemon{cfg: cfg, log: log, j: j, rules: rules, vms: map[string]*VM{}, bootstraps: make(chan struct{}, 2), checks: make(chan struct{}, max(2, runtime.GOMAXPROCS(0))),
		actions: newActionQueue(cfg.Actions.QueueSize)}
	if cfg.Yara != "" {
		if d.yara, err = detect.CompileYara(cfg.Yara); err != nil {
			j.Close()
			return nil, err
		}
	}
	return d, nil
}

// Panics is how many panics the daemon recovered from in VM loops and
// alarm actions since it started.
func (d *Daemon) Panics() uint64 { return d.panics.Load() }

// Journal is the daemon's journal.
func (d *Daemon) Journal() *journal.Journal { return d.j }

// Config is the daemon's configuration.
func (d *Daemon) Config() *Config { return d.cfg }

// Start starts watching the configured VMs (and libvirt's, when enabled).
func (d *Daemon) Start(ctx context.Context) error {
	d.ctx, d.stop = context.WithCancel(ctx)
	d.started = time.Now()
	d.startActions()
	data, _ := json.Marshal(map[string]any{"pid": os.Getpid(), "listen": d.cfg.Listen, "vms": len(d.cfg.VMs)})
	d.record(d.ctx, journal.Record{Kind: journal.KindDaemon, Severity: "info", Subject: "start", Message: "vmwatch serve started", Data: data})
	for _, v := range d.cfg.VMs {
		d.AddVM(v.Name, "qmp", v.VMSettings, qmpConnector{v.QMP})
	}
	if err := d.startLibvirt(d.ctx); err != nil {
		return err
	}
	d.wg.Add(2)
	go func() {
		defer d.wg.Done()
		d.retention(d.ctx)
	}()
	go func() {
		defer d.wg.Done()
		d.backups(d.ctx)
	}()
	return nil
}

// AddVM starts watching a VM; a VM of that name already watched is kept.
func (d *Daemon) AddVM(name, source string, s VMSettings, c connector) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.vms[name]; ok || d.ctx == nil || d.ctx.Err() != nil {
		return
	}
	vm := newVM(d, name, source, s.over(d.cfg.Defaults), c)
	ctx, cancel := context.WithCancel(d.ctx)
	vm.cancel = cancel
	d.vms[name] = vm
	if d.vmHook != nil {
		d.vmHook(vm)
	}
	data, _ := json.Marshal(map[string]string{"source": source, "monitor": c.describe()})
	d.record(ctx, journal.Record{VM: name, Kind: journal.KindLifecycle, Severity: "info", Subject: "added", Message: fmt.Sprintf("watching VM %s (%s)", name, c.describe()), Data: data})
	d.log.Info("watching VM", "vm", name, "via", c.describe())
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		vm.run(ctx)
	}()
}

// RemoveVM stops watching a VM.
func (d *Daemon) RemoveVM(name, why string) {
	d.mu.Lock()
	vm, ok := d.vms[name]
	delete(d.vms, name)
	d.mu.Unlock()
	if !ok {
		return
	}
	vm.cancel()
	<-vm.done
	d.record(d.ctx, journal.Record{VM: name, Kind: journal.KindLifecycle, Severity: "info", Subject: "removed", Message: fmt.Sprintf("no longer watching VM %s: %s", name, why)})
	d.log.Info("VM dropped", "vm", name, "why", why)
}

// VMs returns the watched VMs by name.
func (d *Daemon) VMs() []*VM {
	d.mu.RLock()
	defer d.mu.RUnlock()
	out := make([]*VM, 0, len(d.vms))
	for _, v := range d.vms {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// VM returns a watched VM.
func (d *Daemon) VM(name string) (*VM, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	v, ok := d.vms[name]
	return v, ok
}

// Stop stops every VM loop, lets the queued alarm actions finish for the
// shutdown grace (cancelling them after it), writes a last record and
// closes the journal.
func (d *Daemon) Stop() {
	d.stopOnce.Do(func() {
		if d.stop != nil {
			d.stop()
		}
		d.wg.Wait()
		d.stopActions()
		d.record(context.Background(), journal.Record{Kind: journal.KindDaemon, Severity: "info", Subject: "stop", Message: "vmwatch serve stopped"})
		d.j.Close()
	})
}

// record appends to the journal, logging a failure (the record is lost
// only if the disk refuses it).
func (d *Daemon) record(ctx context.Context, r journal.Record) {
	if _, err := d.j.Append(context.WithoutCancel(ctx), r); err != nil {
		d.log.Error("journal write failed", "kind", r.Kind, "vm", r.VM, "err", err)
	}
}

// retention trims the journal by age and size every hour.
func (d *Daemon) retention(ctx context.Context) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		if n, err := d.j.Retain(ctx, d.cfg.Journal.MaxAge.D(), d.cfg.Journal.MaxRecords); err != nil {
			d.log.Warn("journal retention", "err", err)
		} else if n > 0 {
			d.log.Info("journal retention", "deleted", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
