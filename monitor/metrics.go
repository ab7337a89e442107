package monitor

import (
	"fmt"
	"sort"
	"strings"
)

// MetricDef declares one metric a VM's cycle samples: the key it has in
// a sample (and in alarms and /api), its Prometheus name and help, and
// whether it only grows (a counter). It is declared here once and used by
// collection, alarm validation, /metrics and the dashboard.
type MetricDef struct {
	Key        string
	Prometheus string
	Help       string
	Counter    bool
	// Label is set for per-device metrics: their sample key is
	// "KEY:DEVICE", and the device goes into this Prometheus label.
	Label string
}

var metricDefs = []MetricDef{
	{Key: "cpu_seconds", Prometheus: "vmwatch_domain_cpu_seconds_total", Help: "CPU time of the VM's QEMU process (user and system).", Counter: true},
	{Key: "cpu_usage_percent", Prometheus: "vmwatch_domain_cpu_usage_percent", Help: "CPU use of the VM over its vCPUs."},
	{Key: "vcpu_delay_seconds", Prometheus: "vmwatch_domain_vcpu_delay_seconds_total", Help: "Time the vCPU threads waited for a host CPU (steal).", Counter: true},
	{Key: "vcpu_delay_percent", Prometheus: "vmwatch_domain_vcpu_delay_percent", Help: "Share of time the vCPUs waited for a host CPU."},
	{Key: "vcpus", Prometheus: "vmwatch_domain_vcpus", Help: "Number of vCPUs."},
	{Key: "qemu_rss_bytes", Prometheus: "vmwatch_domain_memory_rss_bytes", Help: "Resident memory of the VM's QEMU process."},
	{Key: "balloon_bytes", Prometheus: "vmwatch_domain_memory_balloon_bytes", Help: "Memory the balloon leaves the guest."},
	{Key: "guest_memory_total_bytes", Prometheus: "vmwatch_guest_memory_total_bytes", Help: "Guest memory (MemTotal), read from the guest kernel."},
	{Key: "guest_memory_free_bytes", Prometheus: "vmwatch_guest_memory_free_bytes", Help: "Free guest memory (MemFree)."},
	{Key: "guest_memory_available_bytes", Prometheus: "vmwatch_guest_memory_available_bytes", Help: "Available guest memory (MemAvailable)."},
	{Key: "guest_memory_cached_bytes", Prometheus: "vmwatch_guest_memory_cached_bytes", Help: "Guest page cache (Cached)."},
	{Key: "guest_memory_used_percent", Prometheus: "vmwatch_guest_memory_used_percent", Help: "Guest memory in use: total minus available."},
	{Key: "guest_load1", Prometheus: "vmwatch_guest_load1", Help: "Guest load average over 1 minute."},
	{Key: "guest_load5", Prometheus: "vmwatch_guest_load5", Help: "Guest load average over 5 minutes."},
	{Key: "guest_load15", Prometheus: "vmwatch_guest_load15", Help: "Guest load average over 15 minutes."},
	{Key: "guest_tasks", Prometheus: "vmwatch_guest_tasks", Help: "Guest tasks (threads)."},
	{Key: "guest_processes", Prometheus: "vmwatch_guest_processes", Help: "Guest processes."},
	{Key: "guest_uptime_seconds", Prometheus: "vmwatch_guest_uptime_seconds", Help: "Time since the guest booted."},

	{Key: "block_read_bytes", Prometheus: "vmwatch_domain_block_read_bytes_total", Help: "Bytes read from a disk.", Counter: true, Label: "device"},
	{Key: "block_write_bytes", Prometheus: "vmwatch_domain_block_write_bytes_total", Help: "Bytes written to a disk.", Counter: true, Label: "device"},
	{Key: "block_read_requests", Prometheus: "vmwatch_domain_block_read_requests_total", Help: "Read requests of a disk.", Counter: true, Label: "device"},
	{Key: "block_write_requests", Prometheus: "vmwatch_domain_block_write_requests_total", Help: "Write requests of a disk.", Counter: true, Label: "device"},
	{Key: "block_read_seconds", Prometheus: "vmwatch_domain_block_read_time_seconds_total", Help: "Time spent reading a disk.", Counter: true, Label: "device"},
	{Key: "block_write_seconds", Prometheus: "vmwatch_domain_block_write_time_seconds_total", Help: "Time spent writing a disk.", Counter: true, Label: "device"},
	{Key: "net_rx_bytes", Prometheus: "vmwatch_domain_interface_receive_bytes_total", Help: "Bytes received by an interface.", Counter: true, Label: "interface"},
	{Key: "net_tx_bytes", Prometheus: "vmwatch_domain_interface_transmit_bytes_total", Help: "Bytes sent by an interface.", Counter: true, Label: "interface"},
	{Key: "net_rx_packets", Prometheus: "vmwatch_domain_interface_receive_packets_total", Help: "Packets received by an interface.", Counter: true, Label: "interface"},
	{Key: "net_tx_packets", Prometheus: "vmwatch_domain_interface_transmit_packets_total", Help: "Packets sent by an interface.", Counter: true, Label: "interface"},
}

var metricByKey = func() map[string]*MetricDef {
	m := map[string]*MetricDef{}
	for i := range metricDefs {
		m[metricDefs[i].Key] = &metricDefs[i]
	}
	return m
}()

// Metrics are the declared metrics.
func Metrics() []MetricDef { return append([]MetricDef(nil), metricDefs...) }

// LookupMetric finds the declaration of a sample key: "guest_load1", or
// "block_read_bytes:vda" for a per-device metric (the device is returned).
func LookupMetric(key string) (def MetricDef, device string, ok bool) {
	if d, found := metricByKey[key]; found && d.Label == "" {
		return *d, "", true
	}
	p, dev, cut := strings.Cut(key, ":")
	if d, found := metricByKey[p]; cut && found && d.Label != "" && dev != "" {
		return *d, dev, true
	}
	return MetricDef{}, "", false
}

// checkMetricKey says why an alarm's metric key is not one vmwatch samples.
func checkMetricKey(key string) error {
	if _, _, ok := LookupMetric(key); ok {
		return nil
	}
	var names []string
	for _, d := range metricDefs {
		if d.Label != "" {
			names = append(names, d.Key+":DEVICE")
		} else {
			names = append(names, d.Key)
		}
	}
	sort.Strings(names)
	return fmt.Errorf("unknown metric %q (valid: %s)", key, strings.Join(names, ", "))
}
