package monitor

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/vmwatch/vmwatch/detect"
)

func TestMetricAlarmHoldsAndDoesNotFlap(t *testing.T) {
	a := AlarmDef{Name: "cpu", Metric: "cpu", Warning: f64(75), Critical: f64(90), For: Duration(5 * time.Minute), Tolerance: 5}
	st := &AlarmState{}
	t0 := time.Unix(1e9, 0)
	at := func(min int, v float64) Level {
		lvl, _ := a.evaluate(st, alarmInput{now: t0.Add(time.Duration(min) * time.Minute), metrics: map[string]float64{"cpu": v}})
		st.Level = lvl
		return lvl
	}
	steps := []struct {
		min  int
		v    float64
		want Level
	}{
		{0, 95, Green}, // above critical, not yet for 5 min
		{3, 95, Green},
		{5, 95, Critical}, // held 5 min
		{6, 87, Critical}, // within the tolerance of the critical threshold: stays
		{7, 84, Warning},  // 6 below critical: down to warning (held above warning since 0)
		{8, 72, Warning},  // within the tolerance of the warning threshold
		{9, 69, Green},    // clear
		{10, 80, Green},   // above warning again: must hold 5 min
		{15, 80, Warning},
	}
	for _, s := range steps {
		if got := at(s.min, s.v); got != s.want {
			t.Fatalf("minute %d value %.0f: %s, want %s", s.min, s.v, got, s.want)
		}
	}
}

func TestStateAndFindingAlarms(t *testing.T) {
	crash := AlarmDef{Name: "crash", States: []string{"crashed"}}
	if l, _ := crash.evaluate(&AlarmState{}, alarmInput{state: StateCrashed}); l != Critical {
		t.Fatal("crashed VM")
	}
	if l, _ := crash.evaluate(&AlarmState{}, alarmInput{state: StateRunning}); l != Green {
		t.Fatal("running VM")
	}
	fa := AlarmDef{Name: "f", Finding: &FindingTrigger{Severity: "high"}, Level: "warning"}
	in := alarmInput{findings: []detect.Finding{{ID: "ld-preload", Severity: detect.Medium}}}
	if l, _ := fa.evaluate(&AlarmState{}, in); l != Green {
		t.Fatal("medium finding raised a high-severity alarm")
	}
	in.findings = append(in.findings, detect.Finding{ID: "hidden-module", Severity: detect.Critical, Title: "x"})
	if l, msg := fa.evaluate(&AlarmState{}, in); l != Warning || msg == "" {
		t.Fatalf("critical finding: %s %q", l, msg)
	}
	// many findings: the message (for webhooks and the journal) stays short
	for i := 0; i < 1000; i++ {
		in.findings = append(in.findings, detect.Finding{ID: "kernel-code-modified", Severity: detect.Critical, Title: fmt.Sprintf("change %d", i)})
	}
	if _, msg := fa.evaluate(&AlarmState{}, in); !strings.HasPrefix(msg, "1001 open finding(s): x; change 0;") || !strings.HasSuffix(msg, "and 996 more") {
		t.Fatalf("message of 1001 findings: %q", msg)
	}
}

func TestAlarmValidation(t *testing.T) {
	bad := []AlarmDef{
		{Name: "none"},
		{Name: "two", Metric: "cpu", Warning: f64(1), States: []string{"crashed"}},
		{Name: "nothreshold", Metric: "cpu"},
		{Name: "state", States: []string{"exploded"}},
		{Name: "act", States: []string{"crashed"}, Actions: []ActionDef{{}}},
		{Name: "hook", States: []string{"crashed"}, Actions: []ActionDef{{Webhook: "ftp://x"}}},
	}
	for _, a := range bad {
		if err := a.validate(); err == nil {
			t.Errorf("alarm %s accepted", a.Name)
		}
	}
	for _, a := range DefaultAlarms() {
		if err := a.validate(); err != nil {
			t.Errorf("default alarm %s: %v", a.Name, err)
		}
	}
	if got := redactURL("https://user:pw@hooks.example/x?token=abc"); got != "https://hooks.example/x?…" {
		t.Errorf("redact: %s", got)
	}
}
