// Package monitor is vmwatch's daemon: it discovers VMs (libvirt domains
// and plain QEMU instances), runs the detectors and collects host- and
// guest-side metrics for each on its own schedule and deadline, keeps
// findings open while they hold, evaluates alarms, runs response actions,
// and writes everything to the journal.
package monitor

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Duration is a time.Duration that reads "10s", "5m" in YAML.
type Duration time.Duration

// UnmarshalYAML reads a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration (e.g. 10s, 5m): %w", n.Line, s, err)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the string form.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// D is the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Config is the daemon's configuration.
type Config struct {
	// Listen is the address of the web dashboard, the API and /metrics.
	Listen string `yaml:"listen"`
	// Token (or TokenFile) is required on any address but loopback.
	Token     string `yaml:"token"`
	TokenFile string `yaml:"token_file"`
	TLS       struct {
		Cert string `yaml:"cert"`
		Key  string `yaml:"key"`
	} `yaml:"tls"`
	// StateDir holds the journal, baselines and evidence.
	StateDir string `yaml:"state_dir"`
	Libvirt  struct {
		URI     string `yaml:"uri"`
		Enabled *bool  `yaml:"enabled"`
	} `yaml:"libvirt"`
	Defaults VMSettings  `yaml:"defaults"`
	VMs      []VMConfig  `yaml:"vms"`
	Rules    []string    `yaml:"rules"`
	Yara     string      `yaml:"yara"`
	Journal  JournalConf `yaml:"journal"`
	// Alarms replace the shipped defaults unless DefaultAlarms is true.
	Alarms        []AlarmDef `yaml:"alarms"`
	DefaultAlarms *bool      `yaml:"default_alarms"`
	// Backup schedules backups of libvirt domains.
	Backup BackupConf `yaml:"backup"`
	// Actions configures how alarm actions run.
	Actions ActionsConf `yaml:"actions"`
}

// ActionsConf configures the queue of alarm actions: they run off the VMs'
// loops, in a bounded queue served by a few workers, each under a deadline.
type ActionsConf struct {
	// Workers run actions at once (default 4).
	Workers int `yaml:"workers"`
	// QueueSize bounds the actions waiting; more are dropped (default 256).
	QueueSize int `yaml:"queue_size"`
	// ShutdownGrace is how long a stopping daemon waits for queued and
	// running actions before it cancels them (default 10s).
	ShutdownGrace Duration `yaml:"shutdown_grace"`
	// Timeouts bound one action of each kind.
	Timeouts ActionTimeouts `yaml:"timeouts"`
}

// ActionTimeouts are the deadlines of the action kinds.
type ActionTimeouts struct {
	Log             Duration `yaml:"log"`              // default 5s
	Webhook         Duration `yaml:"webhook"`          // default 45s: three tries of up to 10 s and the waits between them
	Command         Duration `yaml:"command"`          // default 30s
	PauseVM         Duration `yaml:"pause_vm"`         // default 30s
	CutNetwork      Duration `yaml:"cut_network"`      // default 30s
	CaptureEvidence Duration `yaml:"capture_evidence"` // default 10m: a memory dump of a large guest
}

func (a *ActionsConf) setDefaults() {
	if a.Workers == 0 {
		a.Workers = 4
	}
	if a.QueueSize == 0 {
		a.QueueSize = 256
	}
	if a.ShutdownGrace == 0 {
		a.ShutdownGrace = Duration(10 * time.Second)
	}
	a.Timeouts.setDefaults()
}

func (t *ActionTimeouts) setDefaults() {
	for _, f := range []struct {
		d   *Duration
		def time.Duration
	}{{&t.Log, 5 * time.Second}, {&t.Webhook, 45 * time.Second}, {&t.Command, 30 * time.Second},
		{&t.PauseVM, 30 * time.Second}, {&t.CutNetwork, 30 * time.Second}, {&t.CaptureEvidence, 10 * time.Minute}} {
		if *f.d == 0 {
			*f.d = Duration(f.def)
		}
	}
}

// of is the deadline of an action kind.
func (t ActionTimeouts) of(kind string) time.Duration {
	switch kind {
	case "log":
		return t.Log.D()
	case "webhook":
		return t.Webhook.D()
	case "command":
		return t.Command.D()
	case "pause_vm":
		return t.PauseVM.D()
	case "cut_network":
		return t.CutNetwork.D()
	case "capture_evidence":
		return t.CaptureEvidence.D()
	}
	return 30 * time.Second
}

func (a *ActionsConf) validate() error {
	var errs []error
	if a.Workers < 1 || a.Workers > 64 {
		errs = append(errs, fmt.Errorf("actions.workers %d: want 1 to 64", a.Workers))
	}
	if a.QueueSize < 1 {
		errs = append(errs, fmt.Errorf("actions.queue_size %d: want at least 1", a.QueueSize))
	}
	if a.ShutdownGrace < 0 {
		errs = append(errs, errors.New("actions.shutdown_grace is negative"))
	}
	t := a.Timeouts
	for name, d := range map[string]Duration{"log": t.Log, "webhook": t.Webhook, "command": t.Command, "pause_vm": t.PauseVM, "cut_network": t.CutNetwork, "capture_evidence": t.CaptureEvidence} {
		if d < 0 {
			errs = append(errs, fmt.Errorf("actions.timeouts.%s is negative", name))
		}
	}
	return errors.Join(errs...)
}

// VMSettings are per-VM schedule settings.
type VMSettings struct {
	CheckInterval   Duration `yaml:"check_interval"`
	MetricsInterval Duration `yaml:"metrics_interval"`
	// Deadline bounds one cycle of a VM (default: 80% of the shorter interval).
	Deadline Duration `yaml:"deadline"`
	// History is how much metric history is kept for the dashboard.
	History Duration `yaml:"history"`
	// Baseline records a kernel code baseline at the first check of each
	// boot and compares later checks with it (default true).
	Baseline *bool `yaml:"baseline"`
}

// VMConfig is a plain QEMU VM the daemon watches through its QMP socket.
type VMConfig struct {
	Name       string `yaml:"name"`
	QMP        string `yaml:"qmp"`
	VMSettings `yaml:",inline"`
}

// JournalConf configures the journal.
type JournalConf struct {
	Path       string   `yaml:"path"`
	MaxAge     Duration `yaml:"max_age"`
	MaxRecords int64    `yaml:"max_records"`
	KeyFile    string   `yaml:"key_file"`
}

// SetDefaults fills unset fields.
func (c *Config) SetDefaults() {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:8080"
	}
	if c.StateDir == "" {
		c.StateDir = "/var/lib/vmwatch"
	}
	if c.Libvirt.URI == "" {
		c.Libvirt.URI = "qemu:///system"
	}
	if c.Defaults.CheckInterval == 0 {
		c.Defaults.CheckInterval = Duration(10 * time.Second)
	}
	if c.Defaults.MetricsInterval == 0 {
		c.Defaults.MetricsInterval = Duration(10 * time.Second)
	}
	if c.Defaults.History == 0 {
		c.Defaults.History = Duration(time.Hour)
	}
	if c.Defaults.Baseline == nil {
		t := true
		c.Defaults.Baseline = &t
	}
	if c.Journal.Path == "" {
		c.Journal.Path = c.StateDir + "/journal.db"
	}
	if c.Journal.MaxAge == 0 {
		c.Journal.MaxAge = Duration(90 * 24 * time.Hour)
	}
	if c.Journal.MaxRecords == 0 {
		c.Journal.MaxRecords = 1_000_000
	}
	c.Actions.setDefaults()
	for i := range c.VMs {
		c.VMs[i].VMSettings = c.VMs[i].VMSettings.over(c.Defaults)
	}
	if len(c.Alarms) == 0 || (c.DefaultAlarms != nil && *c.DefaultAlarms) {
		c.Alarms = append(DefaultAlarms(), c.Alarms...)
	}
}

// over fills unset settings from d.
func (s VMSettings) over(d VMSettings) VMSettings {
	if s.CheckInterval == 0 {
		s.CheckInterval = d.CheckInterval
	}
	if s.MetricsInterval == 0 {
		s.MetricsInterval = d.MetricsInterval
	}
	if s.Deadline == 0 {
		s.Deadline = d.Deadline
	}
	if s.History == 0 {
		s.History = d.History
	}
	if s.Baseline == nil {
		s.Baseline = d.Baseline
	}
	if s.Deadline == 0 {
		s.Deadline = Duration(min(s.CheckInterval, s.MetricsInterval) * 8 / 10)
	}
	return s
}

// LoadConfig reads a YAML configuration file; unknown keys are errors.
func LoadConfig(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	var c Config
	dec := yaml.NewDecoder(f)
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return &c, nil
}

// IsLoopback reports whether a listen address is on loopback only.
func IsLoopback(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Validate checks the configuration and resolves the token.
func (c *Config) Validate() error {
	var errs []error
	if c.TokenFile != "" {
		b, err := os.ReadFile(c.TokenFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("token_file: %w", err))
		} else {
			c.Token = strings.TrimSpace(string(b))
		}
	}
	if c.Token == "" {
		c.Token = os.Getenv("VMWATCH_TOKEN")
	}
	if !IsLoopback(c.Listen) && c.Token == "" {
		errs = append(errs, fmt.Errorf("listen %s is not loopback: set a token (token, token_file or VMWATCH_TOKEN)", c.Listen))
	}
	if (c.TLS.Cert == "") != (c.TLS.Key == "") {
		errs = append(errs, errors.New("tls needs both cert and key"))
	}
	names := map[string]bool{}
	for i, v := range c.VMs {
		switch {
		case v.Name == "":
			errs = append(errs, fmt.Errorf("vms[%d]: no name", i))
		case names[v.Name]:
			errs = append(errs, fmt.Errorf("vms[%d]: name %q used twice", i, v.Name))
		case v.QMP == "":
			errs = append(errs, fmt.Errorf("vm %s: no qmp socket", v.Name))
		}
		names[v.Name] = true
		if v.CheckInterval.D() < time.Second || v.MetricsInterval.D() < time.Second {
			errs = append(errs, fmt.Errorf("vm %s: intervals must be at least 1s", v.Name))
		}
	}
	for _, a := range c.Alarms {
		if err := a.validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := c.Actions.validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Backup.validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
