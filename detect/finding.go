// Package detect turns the kernel's views into findings: it compares
// several views of the same thing (the task list with the PID table and
// the scheduler; the module list with sysfs and module memory), checks
// the kernel's dispatch tables and hooks, credentials and processes, and
// runs user rules and YARA signatures over the same views.
package detect

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/vmwatch/vmwatch/linux"
)

// Severity orders findings.
type Severity int

// Severities, lowest first.
const (
	Info Severity = iota
	Low
	Medium
	High
	Critical
)

var severityNames = []string{"info", "low", "medium", "high", "critical"}

func (s Severity) String() string {
	if s >= 0 && int(s) < len(severityNames) {
		return severityNames[s]
	}
	return fmt.Sprintf("severity(%d)", int(s))
}

// MarshalJSON writes the name.
func (s Severity) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// UnmarshalJSON reads the name.
func (s *Severity) UnmarshalJSON(b []byte) error {
	var n string
	if err := json.Unmarshal(b, &n); err != nil {
		return err
	}
	v, err := ParseSeverity(n)
	*s = v
	return err
}

// ParseSeverity reads a severity name (also Falco's priorities).
func ParseSeverity(s string) (Severity, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "info", "informational", "debug", "notice":
		return Info, nil
	case "low":
		return Low, nil
	case "medium", "warning", "warn":
		return Medium, nil
	case "high", "error":
		return High, nil
	case "critical", "alert", "emergency":
		return Critical, nil
	}
	return Info, fmt.Errorf("unknown severity %q (want info, low, medium, high or critical)", s)
}

// AddrEvidence is an address with the kernel symbol nearest to it.
type AddrEvidence struct {
	Role    string     `json:"role"`
	Address linux.Addr `json:"address"`
	Symbol  string     `json:"symbol,omitempty"`
	Module  string     `json:"module,omitempty"`
}

// Evidence backs a finding with what was seen.
type Evidence struct {
	PIDs      []int64        `json:"pids,omitempty"`
	Processes []string       `json:"processes,omitempty"`
	Modules   []string       `json:"modules,omitempty"`
	Addresses []AddrEvidence `json:"addresses,omitempty"`
	Expected  string         `json:"expected,omitempty"`
	Found     string         `json:"found,omitempty"`
	Details   map[string]any `json:"details,omitempty"`
}

// Finding is one thing a detector found.
type Finding struct {
	ID          string    `json:"id"`
	Title       string    `json:"title"`
	Severity    Severity  `json:"severity"`
	Attack      string    `json:"attack"`
	VM          string    `json:"vm"`
	Time        time.Time `json:"time"`
	Evidence    Evidence  `json:"evidence"`
	Explanation string    `json:"explanation"`
	// Key identifies the finding across runs (the detector and its
	// subject), so that a daemon can tell a finding that holds from a new one.
	Key string `json:"key"`
}

// sortFindings orders by severity (highest first), then id and key.
func sortFindings(fs []Finding) {
	sort.SliceStable(fs, func(i, j int) bool {
		if fs[i].Severity != fs[j].Severity {
			return fs[i].Severity > fs[j].Severity
		}
		if fs[i].ID != fs[j].ID {
			return fs[i].ID < fs[j].ID
		}
		return fs[i].Key < fs[j].Key
	})
}

func procLabel(p linux.Process) string { return fmt.Sprintf("%d %s", p.PID, p.Comm) }
