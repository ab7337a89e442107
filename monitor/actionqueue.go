package monitor

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"github.com/vmwatch/vmwatch/journal"
)

// Alarm actions run off the VM's loop: a webhook that hangs (three tries
// of 10 s and the waits between them) or a memory dump (minutes) must not
// stop that VM's checks. alarmsEval puts each action into a bounded queue
// that a few workers owned by the daemon serve, each action under its own
// deadline. The queue never blocks the loop: when it is full, the action
// is dropped, logged and journaled. The actions of one VM and alarm run one
// at a time and in the order they were queued (pause_vm before
// capture_evidence, as the alarm lists them; a later transition after an
// earlier one), so a slow action never overlaps the next one of its alarm.

// actionJob is one action of one alarm transition.
type actionJob struct {
	vm     *VM
	act    ActionDef
	tr     Transition
	key    string // the VM and the alarm: one job per key at a time
	queued time.Time
}

type actionQueue struct {
	mu     sync.Mutex
	cond   *sync.Cond
	jobs   []actionJob
	busy   map[string]bool
	max    int
	closed bool

	// ctx is the actions' parent: cancelled when the shutdown grace ends
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	run    bool // workers started
}

func newActionQueue(max int) *actionQueue {
	q := &actionQueue{busy: map[string]bool{}, max: max}
	q.cond = sync.NewCond(&q.mu)
	q.ctx, q.cancel = context.WithCancel(context.Background())
	return q
}

// push queues a job; false when the queue is full or shut.
func (q *actionQueue) push(j actionJob) (bool, int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed || len(q.jobs) >= q.max {
		return false, len(q.jobs)
	}
	q.jobs = append(q.jobs, j)
	q.cond.Broadcast()
	return true, len(q.jobs)
}

// next takes the oldest job whose key is not running, waiting for one;
// ok is false when the queue is shut and empty. cancelled is true for a
// job taken after the grace ended: it is not to be run.
func (q *actionQueue) next() (j actionJob, cancelled, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for {
		for i, c := range q.jobs {
			if q.busy[c.key] {
				continue
			}
			q.jobs = append(q.jobs[:i:i], q.jobs[i+1:]...)
			q.busy[c.key] = true
			return c, q.ctx.Err() != nil, true
		}
		if q.closed && len(q.jobs) == 0 {
			return actionJob{}, false, false
		}
		q.cond.Wait()
	}
}

func (q *actionQueue) done(key string) {
	q.mu.Lock()
	delete(q.busy, key)
	q.cond.Broadcast()
	q.mu.Unlock()
}

// Len is how many actions wait.
func (q *actionQueue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.jobs)
}

// startActions starts the action workers.
func (d *Daemon) startActions() {
	q := d.actions
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.run || q.closed {
		return
	}
	q.run = true
	for i := 0; i < d.cfg.Actions.Workers; i++ {
		q.wg.Add(1)
		go func() {
			defer q.wg.Done()
			for {
				j, cancelled, ok := q.next()
				if !ok {
					return
				}
				if cancelled {
					d.actionNotRun(j, "high", "cancelled: the daemon stopped before it ran")
				} else {
					d.runJob(j)
				}
				q.done(j.key)
			}
		}()
	}
}

// stopActions lets queued and running actions finish for the shutdown
// grace, then cancels the running ones and journals those not run.
func (d *Daemon) stopActions() {
	q := d.actions
	q.mu.Lock()
	q.closed = true
	started := q.run
	q.cond.Broadcast()
	q.mu.Unlock()
	if !started {
		// no worker: journal what was queued as not run
		q.cancel()
		q.mu.Lock()
		jobs := q.jobs
		q.jobs = nil
		q.mu.Unlock()
		for _, j := range jobs {
			d.actionNotRun(j, "high", "cancelled: the daemon stopped before it ran")
		}
		return
	}
	idle := make(chan struct{})
	go func() { q.wg.Wait(); close(idle) }()
	select {
	case <-idle:
	case <-time.After(d.cfg.Actions.ShutdownGrace.D()):
		d.log.Warn("alarm actions still running at shutdown: cancelling them", "queued", q.Len())
		q.cancel()
		q.mu.Lock()
		q.cond.Broadcast()
		q.mu.Unlock()
		<-idle
	}
	q.cancel()
}

// enqueueAction queues an action for the workers; it never blocks. A full
// queue drops the action, with a log line and a journal record.
func (d *Daemon) enqueueAction(vm *VM, a ActionDef, tr Transition) bool {
	j := actionJob{vm: vm, act: a, tr: tr, key: vm.Name + "\x00" + tr.Alarm, queued: time.Now()}
	ok, n := d.actions.push(j)
	if !ok {
		why := fmt.Sprintf("dropped: the action queue is full (%d waiting)", n)
		if n < d.cfg.Actions.QueueSize {
			why = "dropped: the daemon is stopping"
		}
		d.actionNotRun(j, "high", why)
	}
	return ok
}

// actionNotRun logs and journals an action that was not carried out.
func (d *Daemon) actionNotRun(j actionJob, sev, why string) {
	lvl := slog.LevelError
	if sev == "info" {
		lvl = slog.LevelInfo
	}
	d.log.Log(context.Background(), lvl, "alarm action not run", "vm", j.vm.Name, "alarm", j.tr.Alarm, "action", j.act.kind(), "level", j.tr.To.String(), "why", why)
	data, _ := json.Marshal(map[string]any{"action": j.act.kind(), "alarm": j.tr.Alarm, "level": j.tr.To.String(), "error": why})
	d.record(context.Background(), journal.Record{VM: j.vm.Name, Kind: journal.KindAction, Severity: sev, Subject: j.tr.Alarm + "/" + j.act.kind(),
		Message: fmt.Sprintf("%s for alarm %s (%s) not run: %s", j.act.kind(), j.tr.Alarm, j.tr.To, why), Data: data})
}

// runJob runs one action under its deadline; a panic in it is that VM's,
// recovered and counted like one in its loop.
func (d *Daemon) runJob(j actionJob) {
	ctx, cancel := context.WithTimeout(d.actions.ctx, d.cfg.Actions.Timeouts.of(j.act.kind()))
	defer cancel()
	defer func() {
		if r := recover(); r != nil {
			j.vm.recovered(ctx, "action "+j.act.kind()+" of alarm "+j.tr.Alarm, r, debug.Stack())
		}
	}()
	d.runAction(ctx, j.vm, j.act, j.tr, time.Since(j.queued))
}
