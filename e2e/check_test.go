package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/vmwatch/vmwatch/detect"
)

// TestRules: user rules over the views give findings that match the
// guest's own /proc: "no listener outside 22 and 443" names every TCP
// listener of /proc/net/tcp*, "no nc" every nc process.
func TestRules(t *testing.T) {
	forEachKernel(t, func(t *testing.T, series string) {
		vm := standard(t, series)
		rules := filepath.Join(t.TempDir(), "site.yaml")
		os.WriteFile(rules, []byte(`
- list: allowed_ports
  items: [22, 443]
- rule: Listener outside 22 and 443
  desc: only ssh and https may listen
  source: socket
  condition: sock.state == "LISTEN" and not (sock.local_port in [22, 443])
  output: "listener on port %sock.local_port (%sock.proto, pids %sock.pids)"
  priority: ERROR
  tags: [network, T1571]
- rule: No netcat
  condition: proc.name == "nc"
  output: "nc runs (pid %proc.pid: %proc.cmdline)"
  priority: WARNING
`), 0o644)
		fs := check(t, vm, "--only", "rules", "--no-default-rules", "--rules", rules)
		var ports []int
		var ncPIDs []int64
		for _, f := range fs {
			switch f.Title {
			case "Listener outside 22 and 443":
				var p int
				fmt.Sscanf(f.Explanation, "listener on port %d", &p)
				ports = append(ports, p)
				if f.Severity != detect.High || f.Attack != "T1571" {
					t.Errorf("listener finding %+v", f)
				}
			case "No netcat":
				ncPIDs = append(ncPIDs, f.Evidence.PIDs...)
			}
		}
		// ground truth: the guest's listeners and nc processes
		out, err := vm.Run("cat /proc/net/tcp /proc/net/tcp6 | awk '$4 == \"0A\" {split($2, a, \":\"); print a[2]}'")
		if err != nil {
			t.Fatal(err)
		}
		var want []int
		for _, h := range strings.Fields(out) {
			p, _ := strconv.ParseInt(h, 16, 32)
			if p != 22 && p != 443 {
				want = append(want, int(p))
			}
		}
		sort.Ints(want)
		sort.Ints(ports)
		if fmt.Sprint(want) != fmt.Sprint(ports) || len(want) < 2 {
			t.Errorf("listener findings for ports %v, the guest listens on %v", ports, want)
		}
		ps, err := vm.Run("ps -o pid,comm | awk '$2 == \"nc\" {print $1}'")
		if err != nil {
			t.Fatal(err)
		}
		if len(strings.Fields(ps)) != len(ncPIDs) || len(ncPIDs) < 2 {
			t.Errorf("nc findings for pids %v, the guest runs nc as %q", ncPIDs, ps)
		}
	})
}

// TestCheckExitStatus: 0 clean, 1 findings at or above --fail-on, 2 errors
// (a bad rules file names its file, line and problem).
func TestCheckExitStatus(t *testing.T) {
	vm := standard(t, "6.12")
	tg := "qmp:" + vm.QMPPath
	if _, _, err := vmwatchRun("check", "-t", tg); exitCode(err) != 0 {
		t.Errorf("clean guest: exit %d", exitCode(err))
	}
	rules := filepath.Join(t.TempDir(), "r.yaml")
	os.WriteFile(rules, []byte("- rule: nc\n  condition: proc.name == \"nc\"\n  priority: WARNING\n"), 0o644)
	if _, _, err := vmwatchRun("check", "-t", tg, "--rules", rules, "--fail-on", "medium"); exitCode(err) != 1 {
		t.Errorf("medium finding with --fail-on medium: exit %d", exitCode(err))
	}
	if _, _, err := vmwatchRun("check", "-t", tg, "--rules", rules); exitCode(err) != 0 {
		t.Errorf("medium finding with --fail-on high: exit %d", exitCode(err))
	}
	os.WriteFile(rules, []byte("- rule: broken\n  condition: proc.name ==\n"), 0o644)
	_, stderr, err := vmwatchRun("check", "-t", tg, "--rules", rules)
	if exitCode(err) != 2 || !strings.Contains(string(stderr), rules+":2: rule \"broken\": condition:") {
		t.Errorf("bad rule: exit %d, %s", exitCode(err), stderr)
	}
	if _, stderr, err := vmwatchRun("check", "-t", tg, "--only", "nosuch"); exitCode(err) != 2 || !strings.Contains(string(stderr), "unknown detector") {
		t.Errorf("unknown detector: exit %d, %s", exitCode(err), stderr)
	}
}
