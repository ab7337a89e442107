package monitor

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/vmwatch/vmwatch/detect"
)

// Level is an alarm's state.
type Level int

// Alarm levels, as vCenter names them.
const (
	Green Level = iota
	Warning
	Critical
)

var levelNames = []string{"green", "warning", "critical"}

func (l Level) String() string {
	if l >= 0 && int(l) < len(levelNames) {
		return levelNames[l]
	}
	return "unknown"
}

// MarshalJSON writes the name.
func (l Level) MarshalJSON() ([]byte, error) { return json.Marshal(l.String()) }

func parseLevel(s string) (Level, error) {
	for i, n := range levelNames {
		if strings.EqualFold(s, n) {
			return Level(i), nil
		}
	}
	return Green, fmt.Errorf("unknown alarm level %q (want warning or critical)", s)
}

// AlarmDef defines an alarm, modelled on vCenter alarms: a trigger on a
// metric, on the VM's state or on findings, and actions on its changes.
type AlarmDef struct {
	Name        string `yaml:"name" json:"name"`
	Description string `yaml:"description" json:"description,omitempty"`
	// VMs limits the alarm to these VMs (all when empty).
	VMs []string `yaml:"vms" json:"vms,omitempty"`

	// Metric triggers: the value must hold at or above Warning/Critical
	// (below, with Below) for For; it returns when it is Tolerance past
	// the threshold the other way, so that it does not flap.
	Metric    string   `yaml:"metric" json:"metric,omitempty"`
	Warning   *float64 `yaml:"warning" json:"warning,omitempty"`
	Critical  *float64 `yaml:"critical" json:"critical,omitempty"`
	For       Duration `yaml:"for" json:"for,omitempty"`
	Tolerance float64  `yaml:"tolerance" json:"tolerance,omitempty"`
	Below     bool     `yaml:"below" json:"below,omitempty"`

	// State triggers: the VM is in one of these states (stopped, crashed, paused).
	States []string `yaml:"states" json:"states,omitempty"`

	// Finding triggers: an open finding with this id (or any id), at or
	// above this severity.
	Finding *FindingTrigger `yaml:"finding" json:"finding,omitempty"`

	// Level is what a state or finding trigger raises (default critical).
	Level string `yaml:"level" json:"level,omitempty"`

	Actions []ActionDef `yaml:"actions" json:"actions,omitempty"`

	// ConfirmChecks is how many consecutive checks the alarm's level must
	// hold before its response actions (pause_vm, cut_network,
	// capture_evidence: each stops the guest or its network) run
	// (default 2; 1 runs them at once). A check is a detector run for a
	// finding trigger and a cycle with a sample for a metric or state
	// trigger. Notifications (log, webhook, command) run at the change.
	ConfirmChecks int `yaml:"confirm_checks" json:"confirm_checks,omitempty"`
}

// confirmChecks is ConfirmChecks with its default.
func (a *AlarmDef) confirmChecks() int {
	if a.ConfirmChecks <= 0 {
		return 2
	}
	return a.ConfirmChecks
}

// FindingTrigger selects findings.
type FindingTrigger struct {
	ID       string `yaml:"id" json:"id,omitempty"`
	Severity string `yaml:"severity" json:"severity,omitempty"`
}

func f64(v float64) *float64 { return &v }

// DefaultAlarms are the shipped alarms: CPU and memory 75/90 % for 5
// minutes, any critical finding, a crashed VM.
func DefaultAlarms() []AlarmDef {
	return []AlarmDef{
		{Name: "cpu-usage", Description: "CPU use of the VM (QEMU's CPU time over its vCPUs)", Metric: "cpu_usage_percent", Warning: f64(75), Critical: f64(90), For: Duration(5 * time.Minute), Tolerance: 5,
			Actions: []ActionDef{{Log: true}}},
		{Name: "memory-usage", Description: "memory the guest uses (total minus available)", Metric: "guest_memory_used_percent", Warning: f64(75), Critical: f64(90), For: Duration(5 * time.Minute), Tolerance: 5,
			Actions: []ActionDef{{Log: true}}},
		{Name: "critical-finding", Description: "a critical finding is open", Finding: &FindingTrigger{Severity: "critical"}, Level: "critical",
			Actions: []ActionDef{{Log: true}}},
		{Name: "vm-crashed", Description: "the VM crashed (guest panic or QEMU internal error)", States: []string{"crashed"}, Level: "critical",
			Actions: []ActionDef{{Log: true}}},
	}
}

func (a *AlarmDef) validate() error {
	if a.Name == "" {
		return fmt.Errorf("alarm without a name")
	}
	n := 0
	if a.Metric != "" {
		n++
		if a.Warning == nil && a.Critical == nil {
			return fmt.Errorf("alarm %s: a metric trigger needs warning and/or critical", a.Name)
		}
		// a misspelt metric is never sampled: the alarm would stay green forever
		if err := checkMetricKey(a.Metric); err != nil {
			return fmt.Errorf("alarm %s: %w", a.Name, err)
		}
	}
	if len(a.States) > 0 {
		n++
		for _, s := range a.States {
			switch s {
			case "stopped", "crashed", "paused", "unreachable":
			default:
				return fmt.Errorf("alarm %s: state %q is not stopped, crashed, paused or unreachable", a.Name, s)
			}
		}
	}
	if a.Finding != nil {
		n++
		if a.Finding.Severity != "" {
			if _, err := detect.ParseSeverity(a.Finding.Severity); err != nil {
				return fmt.Errorf("alarm %s: %w", a.Name, err)
			}
		}
	}
	if n != 1 {
		return fmt.Errorf("alarm %s: give exactly one trigger (metric, states or finding)", a.Name)
	}
	if a.ConfirmChecks < 0 || a.ConfirmChecks > 1000 {
		return fmt.Errorf("alarm %s: confirm_checks %d: want 1 to 1000 (default 2)", a.Name, a.ConfirmChecks)
	}
	if a.Level != "" {
		if _, err := parseLevel(a.Level); err != nil {
			return fmt.Errorf("alarm %s: %w", a.Name, err)
		}
	}
	for i := range a.Actions {
		if err := a.Actions[i].validate(); err != nil {
			return fmt.Errorf("alarm %s: action %d: %w", a.Name, i+1, err)
		}
	}
	return nil
}

func (a *AlarmDef) appliesTo(vm string) bool {
	if len(a.VMs) == 0 {
		return true
	}
	for _, v := range a.VMs {
		if v == vm {
			return true
		}
	}
	return false
}

// AlarmState is an alarm's current state on one VM.
type AlarmState struct {
	Alarm   string    `json:"alarm"`
	Level   Level     `json:"level"`
	Since   time.Time `json:"since"`
	Value   *float64  `json:"value,omitempty"`
	Message string    `json:"message"`

	warnSince, critSince time.Time

	// held counts the consecutive checks at Level (above green); seen is
	// the VM's detector run a finding trigger last counted
	held int
	seen uint64
	// pending are disruptive actions of the last change waiting for
	// confirm_checks
	pending   []ActionDef
	pendingTr Transition
}

// alarmInput is what alarms look at in one cycle.
type alarmInput struct {
	now      time.Time
	metrics  map[string]float64
	state    string
	findings []detect.Finding
	checkGen uint64 // the VM's detector runs so far: findings are fresh when it moves
}

// fresh reports whether this evaluation saw new input for the alarm's
// trigger, and so counts as a check for confirm_checks.
func (a *AlarmDef) fresh(st *AlarmState, in alarmInput) bool {
	switch {
	case a.Metric != "":
		_, ok := in.metrics[a.Metric]
		return ok
	case a.Finding != nil:
		if in.checkGen == st.seen {
			return false
		}
		st.seen = in.checkGen
		return true
	}
	return true
}

// evaluate returns the alarm's new level and a message.
func (a *AlarmDef) evaluate(st *AlarmState, in alarmInput) (Level, string) {
	switch {
	case a.Metric != "":
		v, ok := in.metrics[a.Metric]
		if !ok {
			return st.Level, st.Message // no sample: no change
		}
		st.Value = &v
		past := func(th *float64, margin float64) bool {
			if th == nil {
				return false
			}
			if a.Below {
				return v <= *th+margin
			}
			return v >= *th-margin
		}
		hold := func(since *time.Time, on bool) bool {
			if !on {
				*since = time.Time{}
				return false
			}
			if since.IsZero() {
				*since = in.now
			}
			return in.now.Sub(*since) >= a.For.D()
		}
		// once raised, a level holds until the value is tolerance past the threshold
		critHold := hold(&st.critSince, past(a.Critical, map[bool]float64{true: a.Tolerance, false: 0}[st.Level == Critical]))
		warnHold := hold(&st.warnSince, past(a.Warning, map[bool]float64{true: a.Tolerance, false: 0}[st.Level >= Warning]) || past(a.Critical, 0))
		dir := "above"
		if a.Below {
			dir = "below"
		}
		switch {
		case critHold || (st.Level == Critical && past(a.Critical, a.Tolerance)):
			return Critical, fmt.Sprintf("%s is %.1f, %s the critical threshold %.1f for %s", a.Metric, v, dir, *a.Critical, a.For.D())
		case warnHold || (st.Level >= Warning && past(a.Warning, a.Tolerance)):
			th := a.Warning
			if th == nil {
				th = a.Critical
			}
			return Warning, fmt.Sprintf("%s is %.1f, %s the warning threshold %.1f for %s", a.Metric, v, dir, *th, a.For.D())
		}
		return Green, fmt.Sprintf("%s is %.1f", a.Metric, v)
	case len(a.States) > 0:
		lvl, _ := parseLevel(orDefault(a.Level, "critical"))
		for _, s := range a.States {
			if s == in.state {
				return lvl, "the VM is " + in.state
			}
		}
		return Green, "the VM is " + in.state
	case a.Finding != nil:
		lvl, _ := parseLevel(orDefault(a.Level, "critical"))
		min := detect.Info
		if a.Finding.Severity != "" {
			min, _ = detect.ParseSeverity(a.Finding.Severity)
		}
		var hits []string
		for _, f := range in.findings {
			if f.Severity >= min && (a.Finding.ID == "" || f.ID == a.Finding.ID) {
				hits = append(hits, f.Title)
			}
		}
		if len(hits) > 0 {
			shown := len(hits)
			if shown > 5 {
				shown = 5
			}
			list := strings.Join(hits[:shown], "; ")
			if len(hits) > 5 {
				list += fmt.Sprintf("; and %d more", len(hits)-5) // the message goes into webhooks and the journal
			}
			return lvl, fmt.Sprintf("%d open finding(s): %s", len(hits), list)
		}
		return Green, "no matching open finding"
	}
	return Green, ""
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
