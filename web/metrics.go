package web

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vmwatch/vmwatch/monitor"
)

// collector exposes the latest sample of every VM, one series set per VM,
// named in the style of the libvirt exporters.
type collector struct{ d *monitor.Daemon }

type metricDef struct {
	name, help string
	counter    bool
}

// metric names by sample key (see monitor's collect)
var metricDefs = map[string]metricDef{
	"cpu_seconds":                  {"vmwatch_domain_cpu_seconds_total", "CPU time of the VM's QEMU process (user and system).", true},
	"cpu_usage_percent":            {"vmwatch_domain_cpu_usage_percent", "CPU use of the VM over its vCPUs.", false},
	"vcpu_delay_seconds":           {"vmwatch_domain_vcpu_delay_seconds_total", "Time the vCPU threads waited for a host CPU (steal).", true},
	"vcpu_delay_percent":           {"vmwatch_domain_vcpu_delay_percent", "Share of time the vCPUs waited for a host CPU.", false},
	"vcpus":                        {"vmwatch_domain_vcpus", "Number of vCPUs.", false},
	"qemu_rss_bytes":               {"vmwatch_domain_memory_rss_bytes", "Resident memory of the VM's QEMU process.", false},
	"balloon_bytes":                {"vmwatch_domain_memory_balloon_bytes", "Memory the balloon leaves the guest.", false},
	"guest_memory_total_bytes":     {"vmwatch_guest_memory_total_bytes", "Guest memory (MemTotal), read from the guest kernel.", false},
	"guest_memory_free_bytes":      {"vmwatch_guest_memory_free_bytes", "Free guest memory (MemFree).", false},
	"guest_memory_available_bytes": {"vmwatch_guest_memory_available_bytes", "Available guest memory (MemAvailable).", false},
	"guest_memory_cached_bytes":    {"vmwatch_guest_memory_cached_bytes", "Guest page cache (Cached).", false},
	"guest_memory_used_percent":    {"vmwatch_guest_memory_used_percent", "Guest memory in use: total minus available.", false},
	"guest_load1":                  {"vmwatch_guest_load1", "Guest load average over 1 minute.", false},
	"guest_load5":                  {"vmwatch_guest_load5", "Guest load average over 5 minutes.", false},
	"guest_load15":                 {"vmwatch_guest_load15", "Guest load average over 15 minutes.", false},
	"guest_tasks":                  {"vmwatch_guest_tasks", "Guest tasks (threads).", false},
	"guest_processes":              {"vmwatch_guest_processes", "Guest processes.", false},
	"guest_uptime_seconds":         {"vmwatch_guest_uptime_seconds", "Time since the guest booted.", false},
}

// per-device metrics: "prefix:device"
var deviceDefs = map[string]metricDef{
	"block_read_bytes":     {"vmwatch_domain_block_read_bytes_total", "Bytes read from a disk.", true},
	"block_write_bytes":    {"vmwatch_domain_block_write_bytes_total", "Bytes written to a disk.", true},
	"block_read_requests":  {"vmwatch_domain_block_read_requests_total", "Read requests of a disk.", true},
	"block_write_requests": {"vmwatch_domain_block_write_requests_total", "Write requests of a disk.", true},
	"block_read_seconds":   {"vmwatch_domain_block_read_time_seconds_total", "Time spent reading a disk.", true},
	"block_write_seconds":  {"vmwatch_domain_block_write_time_seconds_total", "Time spent writing a disk.", true},
	"net_rx_bytes":         {"vmwatch_domain_interface_receive_bytes_total", "Bytes received by an interface.", true},
	"net_tx_bytes":         {"vmwatch_domain_interface_transmit_bytes_total", "Bytes sent by an interface.", true},
	"net_rx_packets":       {"vmwatch_domain_interface_receive_packets_total", "Packets received by an interface.", true},
	"net_tx_packets":       {"vmwatch_domain_interface_transmit_packets_total", "Packets sent by an interface.", true},
}

var (
	upDesc       = prometheus.NewDesc("vmwatch_domain_up", "1 when vmwatch reaches the VM's monitor.", []string{"domain"}, nil)
	stateDesc    = prometheus.NewDesc("vmwatch_domain_state", "The VM's state (1 for the current one).", []string{"domain", "state"}, nil)
	findingsDesc = prometheus.NewDesc("vmwatch_findings_open", "Open findings by severity.", []string{"domain", "severity"}, nil)
	alarmDesc    = prometheus.NewDesc("vmwatch_alarm_level", "Alarm level: 0 green, 1 warning, 2 critical.", []string{"domain", "alarm"}, nil)
	cycleDesc    = prometheus.NewDesc("vmwatch_cycle_seconds", "Duration of the VM's last monitoring cycle.", []string{"domain"}, nil)

	backupLastDesc     = prometheus.NewDesc("vmwatch_backup_last_success_timestamp_seconds", "When the domain's last scheduled backup ended (Unix time).", []string{"domain"}, nil)
	backupDurationDesc = prometheus.NewDesc("vmwatch_backup_last_duration_seconds", "Duration of the domain's last scheduled backup.", []string{"domain"}, nil)
	backupReadDesc     = prometheus.NewDesc("vmwatch_backup_last_read_bytes", "Bytes the last scheduled backup read from the domain's disks.", []string{"domain"}, nil)
	backupAddedDesc    = prometheus.NewDesc("vmwatch_backup_last_added_bytes", "Bytes the last scheduled backup added to the repository.", []string{"domain"}, nil)
	backupFailDesc     = prometheus.NewDesc("vmwatch_backup_failures_total", "Scheduled backups of the domain that failed since the daemon started.", []string{"domain"}, nil)
)

func (c collector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }

func (c collector) Collect(ch chan<- prometheus.Metric) {
	for name, st := range c.d.BackupStatuses() {
		if !st.LastSuccess.IsZero() {
			ch <- prometheus.MustNewConstMetric(backupLastDesc, prometheus.GaugeValue, float64(st.LastSuccess.UnixMilli())/1000, name)
			ch <- prometheus.MustNewConstMetric(backupDurationDesc, prometheus.GaugeValue, st.LastDuration.Seconds(), name)
			ch <- prometheus.MustNewConstMetric(backupReadDesc, prometheus.GaugeValue, float64(st.LastRead), name)
			ch <- prometheus.MustNewConstMetric(backupAddedDesc, prometheus.GaugeValue, float64(st.LastAdded), name)
		}
		ch <- prometheus.MustNewConstMetric(backupFailDesc, prometheus.CounterValue, float64(st.Failures), name)
	}
	for _, vm := range c.d.VMs() {
		in := vm.Info()
		up := 0.0
		if in.State != monitor.StateUnreachable {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(upDesc, prometheus.GaugeValue, up, in.Name)
		ch <- prometheus.MustNewConstMetric(stateDesc, prometheus.GaugeValue, 1, in.Name, in.State)
		ch <- prometheus.MustNewConstMetric(cycleDesc, prometheus.GaugeValue, in.CycleMs/1000, in.Name)
		for k, v := range in.Metrics {
			if def, ok := metricDefs[k]; ok {
				typ := prometheus.GaugeValue
				if def.counter {
					typ = prometheus.CounterValue
				}
				ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(def.name, def.help, []string{"domain"}, nil), typ, v, in.Name)
				continue
			}
			if p, dev, ok := strings.Cut(k, ":"); ok {
				if def, ok := deviceDefs[p]; ok {
					label := "device"
					if strings.HasPrefix(p, "net_") {
						label = "interface"
					}
					ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(def.name, def.help, []string{"domain", label}, nil), prometheus.CounterValue, v, in.Name, dev)
				}
			}
		}
		counts := map[string]float64{"info": 0, "low": 0, "medium": 0, "high": 0, "critical": 0}
		for _, f := range vm.Findings() {
			counts[f.Severity.String()]++
		}
		for s, n := range counts {
			ch <- prometheus.MustNewConstMetric(findingsDesc, prometheus.GaugeValue, n, in.Name, s)
		}
		for _, a := range vm.Alarms() {
			ch <- prometheus.MustNewConstMetric(alarmDesc, prometheus.GaugeValue, float64(a.Level), in.Name, a.Alarm)
		}
	}
}
