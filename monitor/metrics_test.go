package monitor

import (
	"errors"
	"strings"
	"testing"

	"github.com/vmwatch/vmwatch/linux"
)

func TestUnknownMetricAlarmRejected(t *testing.T) {
	c := &Config{StateDir: t.TempDir()}
	c.Alarms = []AlarmDef{{Name: "load", Metric: "guest_lod1", Warning: f64(4)}}
	c.SetDefaults()
	err := c.Validate()
	if err == nil {
		t.Fatal("an alarm on a misspelt metric was accepted")
	}
	for _, want := range []string{"alarm load", `"guest_lod1"`, "guest_load1", "cpu_usage_percent", "block_read_bytes:DEVICE"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	for _, ok := range []string{"guest_load1", "cpu_usage_percent", "guest_processes", "block_read_bytes:vda", "net_rx_bytes:vnet0"} {
		a := AlarmDef{Name: "x", Metric: ok, Warning: f64(1)}
		if err := a.validate(); err != nil {
			t.Errorf("metric %s: %v", ok, err)
		}
	}
	for _, bad := range []string{"block_read_bytes", "block_read_bytes:", "guest_load1:vda", "cpu"} {
		a := AlarmDef{Name: "x", Metric: bad, Warning: f64(1)}
		if err := a.validate(); err == nil {
			t.Errorf("metric %q accepted", bad)
		}
	}
}

func TestGuestProcessesAbsentWhenWalkFails(t *testing.T) {
	m := map[string]float64{}
	processCount(m, nil, errors.New("task list: cycle"))
	if v, ok := m["guest_processes"]; ok {
		t.Fatalf("failed walk: guest_processes = %v, want absent", v)
	}
	// a partial walk (some tasks and an error) is not a count either
	processCount(m, make([]linux.Process, 3), errors.New("task list changed while read"))
	if _, ok := m["guest_processes"]; ok {
		t.Fatal("partial walk: guest_processes present")
	}
	processCount(m, make([]linux.Process, 3), nil)
	if m["guest_processes"] != 3 {
		t.Fatalf("complete walk: %v", m["guest_processes"])
	}
}
