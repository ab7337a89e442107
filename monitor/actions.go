package monitor

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmwatch/vmwatch/detect"
	"github.com/vmwatch/vmwatch/journal"
)

// ActionDef is something to do when an alarm changes state. Exactly one
// of the fields is set.
type ActionDef struct {
	Log     bool     `yaml:"log" json:"log,omitempty"`
	Webhook string   `yaml:"webhook" json:"webhook,omitempty"`
	Command []string `yaml:"command" json:"command,omitempty"`
	// Response actions (for findings): pause the VM's vCPUs, take its
	// network links down, and capture evidence (a memory dump and the
	// findings, hashed into the journal).
	PauseVM         bool `yaml:"pause_vm" json:"pause_vm,omitempty"`
	CutNetwork      bool `yaml:"cut_network" json:"cut_network,omitempty"`
	CaptureEvidence bool `yaml:"capture_evidence" json:"capture_evidence,omitempty"`
	// On lists the levels the action runs on: default warning and
	// critical for notifications, critical for response actions; add
	// green to be told when the alarm clears.
	On []string `yaml:"on" json:"on,omitempty"`
}

func (a *ActionDef) kind() string {
	switch {
	case a.Log:
		return "log"
	case a.Webhook != "":
		return "webhook"
	case len(a.Command) > 0:
		return "command"
	case a.PauseVM:
		return "pause_vm"
	case a.CutNetwork:
		return "cut_network"
	case a.CaptureEvidence:
		return "capture_evidence"
	}
	return ""
}

func (a *ActionDef) validate() error {
	n := 0
	for _, b := range []bool{a.Log, a.Webhook != "", len(a.Command) > 0, a.PauseVM, a.CutNetwork, a.CaptureEvidence} {
		if b {
			n++
		}
	}
	if n != 1 {
		return errors.New("give exactly one of log, webhook, command, pause_vm, cut_network, capture_evidence")
	}
	if a.Webhook != "" {
		u, err := url.Parse(a.Webhook)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
			return fmt.Errorf("webhook %q is not an http(s) URL", redactURL(a.Webhook))
		}
	}
	for _, l := range a.On {
		if _, err := parseLevel(l); err != nil {
			return err
		}
	}
	return nil
}

// disruptive actions stop the guest or its network, and wait for the
// alarm's confirm_checks: pause_vm, cut_network, and capture_evidence too,
// since QEMU stops the guest's vCPUs for as long as dump-guest-memory
// writes (seconds to minutes), and a dump after pause_vm — the order an
// alarm lists them in — is the consistent one.
func (a *ActionDef) disruptive() bool { return a.PauseVM || a.CutNetwork || a.CaptureEvidence }

// runsOn reports whether the action runs on a transition to level.
func (a *ActionDef) runsOn(l Level) bool {
	if len(a.On) == 0 {
		if a.PauseVM || a.CutNetwork || a.CaptureEvidence {
			return l == Critical
		}
		return l >= Warning
	}
	for _, s := range a.On {
		if x, _ := parseLevel(s); x == l {
			return true
		}
	}
	return false
}

// redactURL hides credentials and query strings (tokens) of a URL for logs.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(invalid URL)"
	}
	u.User = nil
	if u.RawQuery != "" {
		u.RawQuery = "…"
	}
	return u.String()
}

// Transition is an alarm's change of state, as webhooks and commands see it.
type Transition struct {
	Alarm    string           `json:"alarm"`
	VM       string           `json:"vm"`
	From     Level            `json:"from"`
	To       Level            `json:"to"`
	Message  string           `json:"message"`
	Time     time.Time        `json:"time"`
	Findings []detect.Finding `json:"findings,omitempty"`
}

// runAction carries out one action and journals what happened.
// ctx carries its deadline; waited is how long it sat in the queue.
func (d *Daemon) runAction(ctx context.Context, vm *VM, a ActionDef, tr Transition, waited time.Duration) {
	start := time.Now()
	detail, err := d.doAction(ctx, vm, a, tr)
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("deadline of %s exceeded: %w", d.cfg.Actions.Timeouts.of(a.kind()), err)
	}
	res := map[string]any{"action": a.kind(), "alarm": tr.Alarm, "level": tr.To.String(), "ms": time.Since(start).Milliseconds(), "queued_ms": waited.Milliseconds()}
	for k, v := range detail {
		res[k] = v
	}
	sev, msg := "info", fmt.Sprintf("%s for alarm %s (%s): done", a.kind(), tr.Alarm, tr.To)
	if err != nil {
		res["error"] = err.Error()
		sev, msg = "warning", fmt.Sprintf("%s for alarm %s (%s) failed: %v", a.kind(), tr.Alarm, tr.To, err)
		d.log.Warn("alarm action failed", "vm", vm.Name, "alarm", tr.Alarm, "action", a.kind(), "err", err)
	}
	data, _ := json.Marshal(res)
	d.record(ctx, journal.Record{VM: vm.Name, Kind: journal.KindAction, Severity: sev, Subject: tr.Alarm + "/" + a.kind(), Message: msg, Data: data})
}

func (d *Daemon) doAction(ctx context.Context, vm *VM, a ActionDef, tr Transition) (map[string]any, error) {
	switch {
	case a.Log:
		d.log.Warn("alarm", "vm", vm.Name, "alarm", tr.Alarm, "from", tr.From.String(), "to", tr.To.String(), "message", tr.Message)
		return nil, nil
	case a.Webhook != "":
		body, _ := json.Marshal(tr)
		var last error
		for try := 0; try < 3; try++ {
			c, cancel := context.WithTimeout(ctx, 10*time.Second)
			req, _ := http.NewRequestWithContext(c, http.MethodPost, a.Webhook, bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("User-Agent", "vmwatch")
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
				resp.Body.Close()
				cancel()
				if resp.StatusCode < 300 {
					return map[string]any{"url": redactURL(a.Webhook), "status": resp.StatusCode}, nil
				}
				last = fmt.Errorf("webhook %s answered %s", redactURL(a.Webhook), resp.Status)
			} else {
				cancel()
				last = fmt.Errorf("webhook %s: %v", redactURL(a.Webhook), strings.ReplaceAll(err.Error(), a.Webhook, redactURL(a.Webhook)))
			}
			if try == 2 {
				break
			}
			select {
			case <-ctx.Done(): // the action's deadline: no more tries
				return map[string]any{"url": redactURL(a.Webhook)}, last
			case <-time.After(time.Duration(try+1) * 500 * time.Millisecond):
			}
		}
		return map[string]any{"url": redactURL(a.Webhook)}, last
	case len(a.Command) > 0:
		cmd := exec.CommandContext(ctx, a.Command[0], a.Command[1:]...)
		cmd.Env = append(os.Environ(), "VMWATCH_ALARM="+tr.Alarm, "VMWATCH_VM="+tr.VM, "VMWATCH_LEVEL="+tr.To.String(),
			"VMWATCH_PREVIOUS_LEVEL="+tr.From.String(), "VMWATCH_MESSAGE="+tr.Message, "VMWATCH_TIME="+tr.Time.Format(time.RFC3339))
		out, err := cmd.CombinedOutput()
		detail := map[string]any{"command": a.Command[0]}
		if err != nil {
			return detail, fmt.Errorf("command %s: %v: %s", a.Command[0], err, firstLine(out))
		}
		return detail, nil
	case a.PauseVM:
		return nil, vm.pause(ctx)
	case a.CutNetwork:
		nics, err := vm.cutNetwork(ctx)
		return map[string]any{"links": nics}, err
	case a.CaptureEvidence:
		return d.captureEvidence(ctx, vm, tr)
	}
	return nil, errors.New("empty action")
}

func firstLine(b []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(b))
	if sc.Scan() {
		return sc.Text()
	}
	return ""
}

// captureEvidence writes a memory dump of the VM (QMP dump-guest-memory,
// ELF) and the open findings, and journals their SHA-256.
func (d *Daemon) captureEvidence(ctx context.Context, vm *VM, tr Transition) (map[string]any, error) {
	dir := filepath.Join(d.cfg.StateDir, "evidence", vm.Name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	stamp := time.Now().UTC().Format("20060102T150405Z")
	dump := filepath.Join(dir, stamp+".elf")
	findings := filepath.Join(dir, stamp+"-findings.json")
	fb, _ := json.MarshalIndent(tr.Findings, "", "  ")
	if err := os.WriteFile(findings, fb, 0o600); err != nil {
		return nil, err
	}
	if err := vm.dumpMemory(ctx, dump); err != nil { // under the action's deadline
		return map[string]any{"findings_file": findings}, fmt.Errorf("memory dump: %w", err)
	}
	hd, err := fileSHA256(dump)
	if err != nil {
		return nil, err
	}
	hf, _ := fileSHA256(findings)
	out := map[string]any{"dump": dump, "dump_sha256": hd, "findings_file": findings, "findings_sha256": hf}
	data, _ := json.Marshal(out)
	d.record(ctx, journal.Record{VM: vm.Name, Kind: journal.KindEvidence, Severity: "info", Subject: tr.Alarm,
		Message: fmt.Sprintf("evidence captured: memory dump %s (sha256 %s)", filepath.Base(dump), hd), Data: data})
	return out, nil
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
