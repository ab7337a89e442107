package monitor

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmwatch/vmwatch/hv"
	"github.com/vmwatch/vmwatch/journal"
)

// fakeConn is a connector that never reaches a monitor; tests replace the
// VM's step.
type fakeConn struct{}

func (fakeConn) connect(context.Context) (hv.Monitor, error) { return nil, errors.New("fake") }
func (fakeConn) describe() string                            { return "fake:" }

// testDaemon is a started daemon with no VMs, libvirt off, a temporary
// journal; edit lets a test change the configuration first.
func testDaemon(t *testing.T, edit func(*Config)) *Daemon {
	t.Helper()
	f := false
	cfg := &Config{StateDir: t.TempDir()}
	cfg.Libvirt.Enabled = &f
	cfg.Journal.Path = filepath.Join(cfg.StateDir, "j.db")
	if edit != nil {
		edit(cfg)
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	d, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Stop)
	return d
}

func fastSettings() VMSettings {
	b := false
	return VMSettings{CheckInterval: Duration(20 * time.Millisecond), MetricsInterval: Duration(20 * time.Millisecond),
		History: Duration(time.Minute), Baseline: &b}
}

// addTestVM adds a VM whose cycle is step.
func addTestVM(d *Daemon, name string, step func(vm *VM, ctx context.Context) error) *VM {
	d.vmHook = func(vm *VM) { vm.stepFn = func(ctx context.Context) error { return step(vm, ctx) } }
	d.AddVM(name, "test", fastSettings(), fakeConn{})
	d.vmHook = nil
	vm, _ := d.VM(name)
	return vm
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPanicInOneVMIsThatVMsError(t *testing.T) {
	d := testDaemon(t, nil)
	var badCycles, goodCycles atomic.Int64
	// a check that trusts a forged guest structure too far
	check := func() { var s []int; _ = s[7] }
	bad := addTestVM(d, "bad", func(vm *VM, ctx context.Context) error {
		if badCycles.Add(1)%2 == 1 {
			check()
		}
		return nil
	})
	addTestVM(d, "good", func(vm *VM, ctx context.Context) error { goodCycles.Add(1); return nil })

	waitFor(t, "cycles after the panic", func() bool { return badCycles.Load() >= 4 && goodCycles.Load() >= 4 })
	if d.Panics() < 1 || bad.Panics() < 1 {
		t.Fatalf("panics: daemon %d, vm %d", d.Panics(), bad.Panics())
	}
	if good, _ := d.VM("good"); good.Panics() != 0 || good.Info().Error != "" {
		t.Fatalf("the other VM was touched: %d panics, error %q", good.Panics(), good.Info().Error)
	}
	// the error shows while the panicking cycle is the last one
	waitFor(t, "the panic shown as the VM's error", func() bool {
		e := bad.Info().Error
		return strings.Contains(e, "panic") && strings.Contains(e, "index out of range")
	})
	if bad.Info().Panics < 1 {
		t.Fatal("VMInfo.Panics not set")
	}
	recs, err := d.Journal().List(context.Background(), journal.Query{VM: "bad", Kind: journal.KindDaemon})
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, r := range recs {
		if r.Subject == "panic" && strings.Contains(string(r.Data), "stack") && strings.Contains(r.Message, "index out of range") {
			found = true
		}
	}
	if !found {
		t.Fatalf("no panic record in the journal: %+v", recs)
	}
	// the same panic every other cycle is journaled once, not every time
	if n := len(recs); n != 1 || bad.Panics() < 2 {
		t.Fatalf("%d panic records for %d panics of the same kind", n, bad.Panics())
	}
}

// TestStopTwice: a second Stop (a signal during shutdown) neither writes to
// nor closes the closed journal: one stop record, no journal error logged.
func TestStopTwice(t *testing.T) {
	f := false
	cfg := &Config{StateDir: t.TempDir()}
	cfg.Libvirt.Enabled = &f
	cfg.Journal.Path = filepath.Join(cfg.StateDir, "j.db")
	cfg.SetDefaults()
	var logs bytes.Buffer
	d, err := New(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	d.Stop()
	d.Stop()
	if strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("the second Stop logged an error:\n%s", logs.String())
	}
	j, err := journal.Open(cfg.Journal.Path, journal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	recs, err := j.List(context.Background(), journal.Query{Kind: journal.KindDaemon})
	if err != nil {
		t.Fatal(err)
	}
	stops := 0
	for _, r := range recs {
		if r.Subject == "stop" {
			stops++
		}
	}
	if stops != 1 {
		t.Errorf("%d stop records after two Stops, want 1", stops)
	}
}
