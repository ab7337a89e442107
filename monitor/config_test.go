package monitor

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func loadTestConfig(t *testing.T, yaml string) (*Config, error) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "vmwatch.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfig(p)
	if err != nil {
		return nil, err
	}
	c.SetDefaults()
	return c, c.Validate()
}

func TestActionsConfig(t *testing.T) {
	c, err := loadTestConfig(t, `
alarms:
  - name: rootkit
    finding: {severity: critical}
    confirm_checks: 3
    actions: [{pause_vm: true}]
actions:
  workers: 2
  queue_size: 10
  timeouts: {webhook: 5s, capture_evidence: 30m}
`)
	if err != nil {
		t.Fatal(err)
	}
	a := c.Actions
	if a.Workers != 2 || a.QueueSize != 10 || a.ShutdownGrace.D() != 10*time.Second {
		t.Errorf("actions: %+v", a)
	}
	to := a.Timeouts
	if to.of("webhook") != 5*time.Second || to.of("capture_evidence") != 30*time.Minute || to.of("command") != 30*time.Second ||
		to.of("pause_vm") != 30*time.Second || to.of("cut_network") != 30*time.Second || to.of("log") != 5*time.Second {
		t.Errorf("timeouts: %+v", to)
	}
	if c.Alarms[0].confirmChecks() != 3 {
		t.Errorf("confirm_checks: %d", c.Alarms[0].confirmChecks())
	}

	c, err = loadTestConfig(t, "listen: 127.0.0.1:0\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.Actions.Workers != 4 || c.Actions.QueueSize != 256 || c.Actions.Timeouts.of("webhook") != 45*time.Second {
		t.Errorf("defaults: %+v", c.Actions)
	}

	if _, err := loadTestConfig(t, "actions: {workers: -1}\n"); err == nil || !strings.Contains(err.Error(), "actions.workers") {
		t.Errorf("negative workers: %v", err)
	}
	if _, err := loadTestConfig(t, "actions: {timeouts: {webhok: 5s}}\n"); err == nil {
		t.Error("a misspelt timeout was accepted")
	}
	_, err = loadTestConfig(t, "alarms: [{name: load, metric: guest_lod1, warning: 4}]\n")
	if err == nil || !strings.Contains(err.Error(), "alarm load") || !strings.Contains(err.Error(), "guest_lod1") {
		t.Errorf("misspelt metric: %v", err)
	}
}
