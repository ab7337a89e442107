package monitor

import (
	"sort"
	"time"

	"github.com/vmwatch/vmwatch/detect"
	"github.com/vmwatch/vmwatch/linux"
)

// VMInfo is a VM's summary for the API and the dashboard.
type VMInfo struct {
	Name         string             `json:"name"`
	Source       string             `json:"source"`
	Monitor      string             `json:"monitor"`
	State        string             `json:"state"`
	Health       Level              `json:"health"` // the highest alarm level
	Kernel       string             `json:"kernel,omitempty"`
	Error        string             `json:"error,omitempty"`
	OpenFindings int                `json:"open_findings"`
	MaxSeverity  string             `json:"max_severity,omitempty"`
	Metrics      map[string]float64 `json:"metrics"`
	LastCheck    *time.Time         `json:"last_check,omitempty"`
	CycleMs      float64            `json:"cycle_ms"`
	Panics       uint64             `json:"panics"` // recovered in the VM's loop since it was added
	// Booting: the guest kernel has not finished booting; checks wait
	Booting bool `json:"booting,omitempty"`
}

// Info summarises the VM.
func (vm *VM) Info() VMInfo {
	vm.mu.RLock()
	defer vm.mu.RUnlock()
	in := VMInfo{Name: vm.Name, Source: vm.Source, Monitor: vm.conn.describe(), State: vm.state, Kernel: vm.kernel,
		Error: vm.lastErr, OpenFindings: len(vm.open), Metrics: map[string]float64{}, CycleMs: vm.cycleMs, Panics: vm.panics.Load(), Booting: vm.booting}
	for k, v := range vm.latest {
		in.Metrics[k] = v
	}
	max := detect.Severity(-1)
	for _, f := range vm.open {
		if f.Severity > max {
			max = f.Severity
		}
	}
	if max >= 0 {
		in.MaxSeverity = max.String()
	}
	for _, a := range vm.alarms {
		if a.Level > in.Health {
			in.Health = a.Level
		}
	}
	if !vm.lastCheck.IsZero() {
		t := vm.lastCheck
		in.LastCheck = &t
	}
	return in
}

// Findings are the open findings, highest severity first.
func (vm *VM) Findings() []detect.Finding {
	vm.mu.RLock()
	defer vm.mu.RUnlock()
	out := make([]detect.Finding, 0, len(vm.open))
	for _, f := range vm.open {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Severity != out[j].Severity {
			return out[i].Severity > out[j].Severity
		}
		return out[i].Key < out[j].Key
	})
	return out
}

// Alarms are the alarms' states.
func (vm *VM) Alarms() []AlarmState {
	vm.mu.RLock()
	defer vm.mu.RUnlock()
	out := make([]AlarmState, 0, len(vm.alarms))
	for _, a := range vm.alarms {
		out = append(out, *a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Alarm < out[j].Alarm })
	return out
}

// Processes are the processes of the last cycle.
func (vm *VM) Processes() []linux.Process {
	vm.mu.RLock()
	defer vm.mu.RUnlock()
	return append([]linux.Process(nil), vm.procs...)
}

// Modules are the modules of the last cycle.
func (vm *VM) Modules() []linux.Module {
	vm.mu.RLock()
	defer vm.mu.RUnlock()
	return append([]linux.Module(nil), vm.mods...)
}

// Sockets are the sockets of the last cycle.
func (vm *VM) Sockets() []linux.Socket {
	vm.mu.RLock()
	defer vm.mu.RUnlock()
	return append([]linux.Socket(nil), vm.socks...)
}

// Top are the busiest processes of the last cycle.
func (vm *VM) Top() []TopProcess {
	vm.mu.RLock()
	defer vm.mu.RUnlock()
	return append([]TopProcess(nil), vm.top...)
}

// Guest are the guest-side figures of the last cycle.
func (vm *VM) Guest() linux.GuestStats {
	vm.mu.RLock()
	defer vm.mu.RUnlock()
	return vm.guest
}

// History returns a metric's points since a time.
func (vm *VM) History(name string, since time.Time) []Point { return vm.series.Get(name, since) }

// MetricNames lists the metrics with history.
func (vm *VM) MetricNames() []string {
	n := vm.series.Names()
	sort.Strings(n)
	return n
}
