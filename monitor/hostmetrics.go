package monitor

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/vmwatch/vmwatch/hv"
)

// clockTicks is USER_HZ, the unit of /proc/PID/stat times (100 on Linux).
const clockTicks = 100

// HostSample is what the host sees of a VM.
type HostSample struct {
	CPUSeconds float64            `json:"cpu_seconds"`    // QEMU process, user + system
	VCPUDelay  map[string]float64 `json:"vcpu_delay"`     // seconds each vCPU thread waited for a host CPU
	RSS        uint64             `json:"qemu_rss_bytes"` // QEMU resident memory
	Balloon    uint64             `json:"balloon_bytes"`  // balloon target, when there is a balloon
	VCPUs      int                `json:"vcpus"`
	Block      map[string]BlockIO `json:"block,omitempty"`
	Net        map[string]NetIO   `json:"net,omitempty"`
}

// BlockIO are a disk's counters.
type BlockIO struct {
	ReadBytes, WriteBytes   uint64
	ReadOps, WriteOps       uint64
	ReadTimeNs, WriteTimeNs uint64
}

// NetIO are an interface's counters.
type NetIO struct {
	RxBytes, TxBytes     uint64
	RxPackets, TxPackets uint64
}

// hostSample reads /proc of the QEMU process and its vCPU threads, and
// QEMU's block statistics.
func hostSample(ctx context.Context, pid int, m hv.Monitor) (HostSample, error) {
	s := HostSample{VCPUDelay: map[string]float64{}, Block: map[string]BlockIO{}}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, fmt.Errorf("QEMU process %d: %w", pid, err)
	}
	if f := statFields(string(b)); len(f) > 14 {
		ut, _ := strconv.ParseFloat(f[11], 64)
		st, _ := strconv.ParseFloat(f[12], 64)
		s.CPUSeconds = (ut + st) / clockTicks
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				kb, _ := strconv.ParseUint(strings.Fields(v)[0], 10, 64)
				s.RSS = kb * 1024
			}
		}
	}
	if m == nil {
		return s, nil
	}
	if raw, err := m.Run(ctx, "query-cpus-fast", nil); err == nil {
		var cpus []struct {
			Index  int `json:"cpu-index"`
			Thread int `json:"thread-id"`
		}
		json.Unmarshal(raw, &cpus)
		s.VCPUs = len(cpus)
		for _, c := range cpus {
			// schedstat: time on CPU, time waiting on a run queue, timeslices (ns)
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/schedstat", pid, c.Thread)); err == nil {
				if f := strings.Fields(string(b)); len(f) >= 2 {
					w, _ := strconv.ParseFloat(f[1], 64)
					s.VCPUDelay[strconv.Itoa(c.Index)] = w / 1e9
				}
			}
		}
	}
	if raw, err := m.Run(ctx, "query-blockstats", nil); err == nil {
		var bs []struct {
			Device string `json:"device"`
			Node   string `json:"node-name"`
			QDev   string `json:"qdev"`
			Stats  struct {
				RdBytes  uint64 `json:"rd_bytes"`
				WrBytes  uint64 `json:"wr_bytes"`
				RdOps    uint64 `json:"rd_operations"`
				WrOps    uint64 `json:"wr_operations"`
				RdTimeNs uint64 `json:"rd_total_time_ns"`
				WrTimeNs uint64 `json:"wr_total_time_ns"`
			} `json:"stats"`
		}
		json.Unmarshal(raw, &bs)
		for _, d := range bs {
			name := d.Device
			if name == "" {
				name = d.QDev
			}
			if name == "" {
				name = d.Node
			}
			st := d.Stats
			s.Block[name] = BlockIO{st.RdBytes, st.WrBytes, st.RdOps, st.WrOps, st.RdTimeNs, st.WrTimeNs}
		}
	}
	if raw, err := m.Run(ctx, "query-balloon", nil); err == nil {
		var bl struct {
			Actual uint64 `json:"actual"`
		}
		json.Unmarshal(raw, &bl)
		s.Balloon = bl.Actual
	}
	return s, nil
}

// statFields splits /proc/PID/stat after the command name (which may
// hold spaces and parentheses): field 0 is the state.
func statFields(s string) []string {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(s[i+1:])
}

// libvirtMetrics takes the host-side figures from libvirt's domain
// statistics (what `virsh domstats` prints), which know the network.
func libvirtMetrics(st map[string]any, m map[string]float64) {
	num := func(k string) (float64, bool) {
		switch v := st[k].(type) {
		case uint64:
			return float64(v), true
		case int64:
			return float64(v), true
		case uint32:
			return float64(v), true
		case int32:
			return float64(v), true
		case float64:
			return v, true
		}
		return 0, false
	}
	str := func(k string) string { s, _ := st[k].(string); return s }
	if v, ok := num("cpu.time"); ok {
		m["cpu_seconds"] = v / 1e9
	}
	if v, ok := num("balloon.current"); ok {
		m["balloon_bytes"] = v * 1024
	}
	// per device: libvirt's field, vmwatch's metric, and the unit divisor
	type field struct {
		key, metric string
		div         float64
	}
	for _, dev := range []struct {
		count  string
		prefix string
		fields []field
	}{
		{"block.count", "block", []field{{"rd.bytes", "block_read_bytes", 1}, {"wr.bytes", "block_write_bytes", 1}, {"rd.reqs", "block_read_requests", 1}, {"wr.reqs", "block_write_requests", 1}, {"rd.times", "block_read_seconds", 1e9}, {"wr.times", "block_write_seconds", 1e9}}},
		{"net.count", "net", []field{{"rx.bytes", "net_rx_bytes", 1}, {"tx.bytes", "net_tx_bytes", 1}, {"rx.pkts", "net_rx_packets", 1}, {"tx.pkts", "net_tx_packets", 1}}},
	} {
		n, _ := num(dev.count)
		for i := 0; i < int(n) && i < 256; i++ {
			p := fmt.Sprintf("%s.%d.", dev.prefix, i)
			name := str(p + "name")
			for _, f := range dev.fields {
				if v, ok := num(p + f.key); ok {
					m[f.metric+":"+name] = v / f.div
				}
			}
		}
	}
}
