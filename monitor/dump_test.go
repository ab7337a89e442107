package monitor

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"
)

// dumpMonitor is a QMP monitor whose detached dump runs until finish is
// closed; it records the commands it gets.
type dumpMonitor struct {
	mu     sync.Mutex
	cmds   []string
	finish chan struct{}
	begun  chan struct{}
}

func (m *dumpMonitor) Run(_ context.Context, cmd string, _ any) (json.RawMessage, error) {
	m.mu.Lock()
	m.cmds = append(m.cmds, cmd)
	m.mu.Unlock()
	switch cmd {
	case "dump-guest-memory":
		close(m.begun)
	case "query-dump":
		select {
		case <-m.finish:
			return json.RawMessage(`{"status":"completed","completed":10,"total":10}`), nil
		default:
			return json.RawMessage(`{"status":"active","completed":1,"total":10}`), nil
		}
	}
	return json.RawMessage(`{}`), nil
}
func (m *dumpMonitor) HMP(context.Context, string) (string, error) { return "", nil }
func (m *dumpMonitor) PID() int                                    { return 0 }
func (m *dumpMonitor) Close() error                                { return nil }

func (m *dumpMonitor) commands() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, c := range m.cmds {
		if c != "query-dump" {
			out = append(out, c)
		}
	}
	return strings.Join(out, " ")
}

// TestPauseDuringDump: QEMU stops a running guest for a dump and starts it
// again when the dump ends, so a pause_vm that comes during the dump is
// made after it (a stop sent meanwhile would be undone); a second dump is
// refused while one is written.
func TestPauseDuringDump(t *testing.T) {
	d := testDaemon(t, nil)
	vm := addTestVM(d, "web1", func(vm *VM, ctx context.Context) error { return nil })
	m := &dumpMonitor{finish: make(chan struct{}), begun: make(chan struct{})}
	vm.mu.Lock()
	vm.mon = m
	vm.mu.Unlock()
	ctx := context.Background()
	done := make(chan error, 1)
	go func() { done <- vm.dumpMemory(ctx, t.TempDir()+"/mem.elf") }()
	<-m.begun
	if err := vm.pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := vm.dumpMemory(ctx, t.TempDir()+"/again.elf"); err == nil || !strings.Contains(err.Error(), "another memory dump") {
		t.Errorf("a second dump during the first: %v", err)
	}
	if got := m.commands(); got != "dump-guest-memory" {
		t.Errorf("during the dump QEMU got %q, want only the dump (the stop waits)", got)
	}
	close(m.finish)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the dump did not end")
	}
	if got := m.commands(); got != "dump-guest-memory stop" {
		t.Errorf("QEMU got %q, want the dump and then the stop", got)
	}
	// with no dump running, pause stops at once
	if err := vm.pause(ctx); err != nil || m.commands() != "dump-guest-memory stop stop" {
		t.Errorf("pause with no dump: %v, commands %q", err, m.commands())
	}
}
