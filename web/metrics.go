package web

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vmwatch/vmwatch/monitor"
)

// collector exposes the latest sample of every VM, one series set per VM,
// named in the style of the libvirt exporters.
type collector struct{ d *monitor.Daemon }

var (
	upDesc       = prometheus.NewDesc("vmwatch_domain_up", "1 when vmwatch reaches the VM's monitor.", []string{"domain"}, nil)
	stateDesc    = prometheus.NewDesc("vmwatch_domain_state", "The VM's state (1 for the current one).", []string{"domain", "state"}, nil)
	findingsDesc = prometheus.NewDesc("vmwatch_findings_open", "Open findings by severity.", []string{"domain", "severity"}, nil)
	alarmDesc    = prometheus.NewDesc("vmwatch_alarm_level", "Alarm level: 0 green, 1 warning, 2 critical.", []string{"domain", "alarm"}, nil)
	cycleDesc    = prometheus.NewDesc("vmwatch_cycle_seconds", "Duration of the VM's last monitoring cycle.", []string{"domain"}, nil)
	panicsDesc   = prometheus.NewDesc("vmwatch_panics_total", "Panics recovered in the VM's loop and its alarm actions (a guest that breaks the introspection).", []string{"domain"}, nil)

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
		ch <- prometheus.MustNewConstMetric(panicsDesc, prometheus.CounterValue, float64(in.Panics), in.Name)
		for k, v := range in.Metrics {
			def, dev, ok := monitor.LookupMetric(k) // declared once, in package monitor
			if !ok {
				continue
			}
			typ := prometheus.GaugeValue
			if def.Counter {
				typ = prometheus.CounterValue
			}
			if def.Label == "" {
				ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(def.Prometheus, def.Help, []string{"domain"}, nil), typ, v, in.Name)
			} else {
				ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(def.Prometheus, def.Help, []string{"domain", def.Label}, nil), typ, v, in.Name, dev)
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
