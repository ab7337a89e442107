package monitor

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmwatch/vmwatch/journal"
)

// blockingHook is a webhook receiver that holds each request until the
// client gives up (or 10 s pass), counting requests per alarm at once.
type blockingHook struct {
	*httptest.Server
	hits chan string // the alarm of each request, as it arrives
	mu   sync.Mutex
	now  map[string]int
	max  map[string]int
	all  int
	hold time.Duration
}

func newBlockingHook(t *testing.T, hold time.Duration) *blockingHook {
	h := &blockingHook{hits: make(chan string, 100), now: map[string]int{}, max: map[string]int{}, hold: hold}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var tr struct{ Alarm string }
		b, _ := io.ReadAll(r.Body)
		json.Unmarshal(b, &tr)
		h.mu.Lock()
		h.now[tr.Alarm]++
		h.max[tr.Alarm] = max(h.max[tr.Alarm], h.now[tr.Alarm])
		total := 0
		for _, n := range h.now {
			total += n
		}
		h.all = max(h.all, total)
		h.mu.Unlock()
		h.hits <- tr.Alarm
		select {
		case <-r.Context().Done():
		case <-time.After(h.hold):
		}
		h.mu.Lock()
		h.now[tr.Alarm]--
		h.mu.Unlock()
	}))
	t.Cleanup(h.Close) // registered before the daemon's Stop: runs after it
	return h
}

func (h *blockingHook) wait(t *testing.T) string {
	t.Helper()
	select {
	case a := <-h.hits:
		return a
	case <-time.After(10 * time.Second):
		t.Fatal("the webhook was not called")
		return ""
	}
}

func actionRecords(t *testing.T, j *journal.Journal, vm string) []journal.Record {
	t.Helper()
	recs, err := j.List(context.Background(), journal.Query{VM: vm, Kind: journal.KindAction})
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

func TestSlowWebhookDoesNotDelayTheLoop(t *testing.T) {
	hook := newBlockingHook(t, 60*time.Second)
	d := testDaemon(t, func(c *Config) {
		c.Alarms = []AlarmDef{{Name: "load", Metric: "guest_load1", Warning: f64(1), Actions: []ActionDef{{Webhook: hook.URL}}}}
		c.Actions.ShutdownGrace = Duration(50 * time.Millisecond)
	})
	var cycles atomic.Int64
	addTestVM(d, "web1", func(vm *VM, ctx context.Context) error {
		cycles.Add(1)
		vm.alarmsEval(ctx, time.Now(), map[string]float64{"guest_load1": 5})
		return nil
	})
	hook.wait(t) // the webhook hangs from here on (its tries time out after 10 s each)
	n := cycles.Load()
	// cycles of 20 ms go on while it hangs; inline, the loop would wait 30 s
	waitFor(t, "five more cycles while the webhook hangs", func() bool { return cycles.Load() >= n+5 })
	hook.mu.Lock()
	defer hook.mu.Unlock()
	if hook.now["load"] != 1 {
		t.Fatal("the webhook no longer hangs: the test proves nothing")
	}
}

func TestActionDeadline(t *testing.T) {
	hook := newBlockingHook(t, 10*time.Second)
	d := testDaemon(t, func(c *Config) {
		c.Alarms = []AlarmDef{{Name: "load", Metric: "guest_load1", Warning: f64(1), Actions: []ActionDef{{Webhook: hook.URL}}}}
		c.Actions.Timeouts.Webhook = Duration(200 * time.Millisecond)
	})
	vm := addTestVM(d, "web1", func(vm *VM, ctx context.Context) error { return nil })
	start := time.Now()
	d.enqueueAction(vm, ActionDef{Webhook: hook.URL}, Transition{Alarm: "load", VM: "web1", To: Warning})
	var rec journal.Record
	waitFor(t, "the action's record", func() bool {
		if r := actionRecords(t, d.Journal(), "web1"); len(r) > 0 {
			rec = r[0]
			return true
		}
		return false
	})
	if took := time.Since(start); took > 15*time.Second { // without the deadline: three tries of 10 s
		t.Fatalf("the webhook ran %s with a 200 ms deadline", took)
	}
	var data map[string]any
	json.Unmarshal(rec.Data, &data)
	if e, _ := data["error"].(string); rec.Severity != "warning" || !strings.Contains(e, "deadline") {
		t.Fatalf("record %s %q, data %s", rec.Severity, rec.Message, rec.Data)
	}
	if len(hook.hits) > 1 {
		t.Fatal("the webhook was tried again after its deadline")
	}
}

func TestActionQueueFullDrops(t *testing.T) {
	hook := newBlockingHook(t, 10*time.Second)
	d := testDaemon(t, func(c *Config) {
		c.Actions.Workers, c.Actions.QueueSize = 1, 1
		c.Actions.ShutdownGrace = Duration(50 * time.Millisecond)
	})
	vm := addTestVM(d, "web1", func(vm *VM, ctx context.Context) error { return nil })
	act := ActionDef{Webhook: hook.URL}
	if !d.enqueueAction(vm, act, Transition{Alarm: "a", VM: "web1", To: Warning}) {
		t.Fatal("first action dropped")
	}
	hook.wait(t) // the only worker is busy
	if !d.enqueueAction(vm, act, Transition{Alarm: "b", VM: "web1", To: Warning}) {
		t.Fatal("second action dropped: the queue has room for one")
	}
	done := make(chan bool)
	go func() { done <- d.enqueueAction(vm, act, Transition{Alarm: "c", VM: "web1", To: Critical}) }()
	select {
	case ok := <-done:
		if ok {
			t.Fatal("third action queued beyond the queue's size")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("a full queue blocked the caller")
	}
	var found bool
	for _, r := range actionRecords(t, d.Journal(), "web1") {
		if r.Subject == "c/webhook" && strings.Contains(r.Message, "queue is full") {
			found = true
		}
	}
	if !found {
		t.Fatal("the dropped action is not in the journal")
	}
}

func TestActionsOfOneAlarmDoNotOverlap(t *testing.T) {
	hook := newBlockingHook(t, 500*time.Millisecond)
	d := testDaemon(t, func(c *Config) { c.Actions.Workers = 3 })
	vm := addTestVM(d, "web1", func(vm *VM, ctx context.Context) error { return nil })
	act := ActionDef{Webhook: hook.URL}
	d.enqueueAction(vm, act, Transition{Alarm: "a", VM: "web1", To: Warning})
	d.enqueueAction(vm, act, Transition{Alarm: "a", VM: "web1", To: Critical})
	d.enqueueAction(vm, act, Transition{Alarm: "b", VM: "web1", To: Warning})
	for i := 0; i < 3; i++ {
		hook.wait(t)
	}
	hook.mu.Lock()
	defer hook.mu.Unlock()
	if hook.max["a"] != 1 {
		t.Fatalf("%d actions of alarm a ran at once", hook.max["a"])
	}
	if hook.all < 2 {
		t.Fatal("the actions of another alarm waited for alarm a's")
	}
}

func TestStopCancelsActionsAfterGrace(t *testing.T) {
	hook := newBlockingHook(t, 10*time.Second)
	f := false
	cfg := &Config{StateDir: t.TempDir()}
	cfg.Libvirt.Enabled = &f
	cfg.Journal.Path = filepath.Join(cfg.StateDir, "j.db")
	cfg.SetDefaults()
	cfg.Actions.Workers = 1
	cfg.Actions.ShutdownGrace = Duration(100 * time.Millisecond)
	d, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	vm := addTestVM(d, "web1", func(vm *VM, ctx context.Context) error { return nil })
	d.enqueueAction(vm, ActionDef{Webhook: hook.URL}, Transition{Alarm: "a", VM: "web1", To: Warning})
	hook.wait(t)
	d.enqueueAction(vm, ActionDef{Log: true}, Transition{Alarm: "b", VM: "web1", To: Warning})
	start := time.Now()
	d.Stop()
	if took := time.Since(start); took > 8*time.Second { // the webhook holds 10 s
		t.Fatalf("Stop took %s with a 100 ms grace", took)
	}
	j, err := journal.Open(cfg.Journal.Path, journal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	got := map[string]string{}
	for _, r := range actionRecords(t, j, "web1") {
		got[r.Subject] = r.Message
	}
	if !strings.Contains(got["a/webhook"], "failed") {
		t.Errorf("the running webhook: %q", got["a/webhook"])
	}
	if !strings.Contains(got["b/log"], "not run") {
		t.Errorf("the queued action: %q", got["b/log"])
	}
}
