package e2e

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmwatch/vmwatch/linux"
	"github.com/vmwatch/vmwatch/target"
	"github.com/vmwatch/vmwatch/testvm"
)

func forEachKernel(t *testing.T, fn func(t *testing.T, series string)) {
	for _, s := range Kernels {
		t.Run(s, func(t *testing.T) { fn(t, s) })
	}
}

// TestPS: every process that the guest's /proc shows before and after the
// read is in `vmwatch ps` with the same parent and name, and ps shows none
// that /proc showed neither time.
func TestPS(t *testing.T) {
	forEachKernel(t, func(t *testing.T, series string) {
		vm := standard(t, series)
		checkPS(t, vm, "qmp:"+vm.QMPPath)
	})
}

func checkPS(t *testing.T, vm *testvm.VM, target string, extra ...string) {
	t.Helper()
	ps := checkProcesses(t, vm, target, extra...)
	// the known workload, with command lines read from process memory
	want := map[string]bool{"nc -l -p 8080": false, "httpd -p 8081 -h /srv/www": false, "sleep 1000001": false}
	for _, p := range ps {
		cl := strings.Join(p.Cmdline, " ")
		if _, ok := want[cl]; ok {
			want[cl] = true
		}
	}
	for cl, seen := range want {
		if !seen {
			t.Errorf("no process with command line %q", cl)
		}
	}
	if len(ps) < 40 {
		t.Errorf("only %d processes", len(ps))
	}
}

// checkProcesses: every process that the guest's /proc shows before and
// after the read is in `vmwatch ps` with the same parent, name, command
// line (exactly the bytes of /proc/PID/cmdline, rewritten titles
// included), PID namespace and pid in it, network and mount namespaces
// and cgroup; ps shows none that /proc showed neither time, but for
// processes that started after the first look and ended before the second.
func checkProcesses(t *testing.T, vm *testvm.VM, target string, extra ...string) []linux.Process {
	t.Helper()
	before := guestProcs(t, vm)
	var ps []linux.Process
	vmwatchJSON(t, &ps, append([]string{"ps", "-t", target}, extra...)...)
	after := guestProcs(t, vm)
	got := map[int64]linux.Process{}
	for _, p := range ps {
		got[p.PID] = p
		if len(p.Errors) > 0 {
			t.Errorf("pid %d (%s): errors %v", p.PID, p.Comm, p.Errors)
		}
	}
	for pid, b := range before {
		a, ok := after[pid]
		if !ok {
			continue // exited in between
		}
		p, ok := got[pid]
		if !ok {
			t.Errorf("pid %d (%s) is in the guest's /proc before and after, but not in vmwatch ps", pid, a.Comm)
			continue
		}
		either := func(f func(procEntry) string, v string) bool { return v == f(a) || v == f(b) }
		if p.PPID != a.PPID && p.PPID != b.PPID {
			t.Errorf("pid %d (%s): ppid %d, guest says %d", pid, a.Comm, p.PPID, a.PPID)
		}
		if !sameComm(p.Comm, a.Comm) && !sameComm(p.Comm, b.Comm) && (p.FullName == "" || p.FullName != a.Comm) {
			t.Errorf("pid %d: comm %q, guest says %q", pid, p.Comm, a.Comm)
		}
		if cl := strings.Join(p.Cmdline, "\x00"); !either(func(e procEntry) string { return e.Cmdline }, cl) {
			t.Errorf("pid %d (%s): command line %q, the guest's /proc/%d/cmdline is %q", pid, a.Comm, cl, pid, a.Cmdline)
		}
		ns := fmt.Sprintf("pid:[%d] net:[%d] mnt:[%d] nspid %d cgroup %s", p.PIDNS, p.NetNS, p.MntNS, p.NSPID, p.Cgroup)
		if !p.Kernel && !either(func(e procEntry) string { return e.NS }, ns) {
			t.Errorf("pid %d (%s): namespaces %s, the guest says %s", pid, a.Comm, ns, a.NS)
		}
	}
	// a process started after the first look at /proc and gone by the
	// second (a udev worker, a cron job) has a pid above all of the first
	var maxBefore int64
	for pid := range before {
		maxBefore = max(maxBefore, pid)
	}
	for pid, p := range got {
		_, inB := before[pid]
		_, inA := after[pid]
		if !inB && !inA && pid <= maxBefore {
			t.Errorf("vmwatch ps shows pid %d (%s), which the guest's /proc showed neither before nor after", pid, p.Comm)
		}
	}
	return ps
}

// TestThreads: --threads lists every thread of the guest (/proc/PID/task).
func TestThreads(t *testing.T) {
	forEachKernel(t, func(t *testing.T, series string) {
		vm := standard(t, series)
		checkThreads(t, vm, "qmp:"+vm.QMPPath)
	})
}

func checkThreads(t *testing.T, vm *testvm.VM, target string) {
	t.Helper()
	// a task that exits between the glob and ls makes ls complain
	out, err := vm.Run("ls -d /proc/[0-9]*/task/[0-9]* 2>/dev/null | wc -l")
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil || n == 0 {
		t.Fatalf("the guest's thread count: %q: %v", out, err)
	}
	var ps []linux.Process
	vmwatchJSON(t, &ps, "ps", "--threads", "-t", target)
	if d := len(ps) - n; d < -3 || d > 3 {
		t.Errorf("vmwatch ps --threads: %d tasks, the guest has %d", len(ps), n)
	}
}

// TestLsmod: lsmod equals the guest's /proc/modules.
func TestLsmod(t *testing.T) {
	forEachKernel(t, func(t *testing.T, series string) {
		vm := standard(t, series)
		checkLsmod(t, vm, "qmp:"+vm.QMPPath, testvm.DefaultModules)
	})
}

func checkLsmod(t *testing.T, vm *testvm.VM, target string, want []string) {
	t.Helper()
	{
		out, err := vm.Run("cat /proc/modules")
		if err != nil {
			t.Fatal(err)
		}
		var mods []linux.Module
		vmwatchJSON(t, &mods, "lsmod", "-t", target)
		got := map[string]linux.Module{}
		for _, m := range mods {
			got[m.Name] = m
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != len(mods) {
			t.Errorf("vmwatch lsmod lists %d modules, /proc/modules %d", len(mods), len(lines))
		}
		for _, line := range lines {
			f := strings.Fields(line)
			if len(f) < 6 {
				t.Fatalf("odd /proc/modules line %q", line)
			}
			m, ok := got[f[0]]
			if !ok {
				t.Errorf("module %s missing", f[0])
				continue
			}
			want := fmt.Sprintf("%s %s %s %s %s %s", f[0], f[1], f[2], f[3], f[4], f[5])
			have := fmt.Sprintf("%s %d %d %s %s %s", m.Name, m.Size, m.Refcount, linux.FormatUsedBy(m.UsedBy), m.State, m.Base)
			if want != have {
				t.Errorf("module %s:\n  /proc/modules: %s\n  vmwatch:       %s", f[0], want, have)
			}
		}
		for _, want := range want {
			if _, ok := got[want]; !ok {
				t.Errorf("module %s not listed", want)
			}
		}
	}
}

// TestSockets: every listener of /proc/net/{tcp,udp,tcp6,udp6} is in
// vmwatch sockets with its port and inode, owned by a process.
func TestSockets(t *testing.T) {
	forEachKernel(t, func(t *testing.T, series string) {
		vm := standard(t, series)
		ss := checkListeners(t, vm, "qmp:"+vm.QMPPath, 3)
		est := 0
		for _, s := range ss {
			if s.State == "ESTABLISHED" && s.Protocol == "tcp" {
				est++
			}
		}
		if est < 2 {
			t.Errorf("want the workload's established TCP connection (2 sockets), have %d", est)
		}
	})
}

// checkListeners: every listener of the guest's /proc/net/{tcp,udp,tcp6,udp6}
// (the shell's network namespace: the guest's first) is in vmwatch sockets
// with its port and inode, owned by a process, in that namespace.
func checkListeners(t *testing.T, vm *testvm.VM, target string, min int) []linux.Socket {
	t.Helper()
	var init struct {
		Namespaces linux.InitNamespaces `json:"namespaces"`
	}
	vmwatchJSON(t, &init, "info", "-t", target)
	{
		var ss []linux.Socket
		vmwatchJSON(t, &ss, "sockets", "-t", target)
		have := map[string]linux.Socket{}
		for _, s := range ss {
			fam := ""
			if s.Family == "inet6" {
				fam = "6"
			}
			have[fmt.Sprintf("%s%s/%d/%d", s.Protocol, fam, s.LocalPort, s.Inode)] = s
		}
		n := 0
		for _, file := range []string{"tcp", "udp", "tcp6", "udp6"} {
			out, err := vm.Run("cat /proc/net/" + file)
			if err != nil {
				t.Fatal(err)
			}
			for _, line := range strings.Split(out, "\n")[1:] {
				f := strings.Fields(line)
				if len(f) < 10 {
					continue
				}
				st := f[3]
				if (strings.HasPrefix(file, "tcp") && st != "0A") || (strings.HasPrefix(file, "udp") && st != "07") {
					continue
				}
				_, portHex, _ := strings.Cut(f[1], ":")
				port, _ := strconv.ParseUint(portHex, 16, 16)
				key := fmt.Sprintf("%s/%d/%s", file, port, f[9])
				n++
				s, ok := have[key]
				if !ok {
					t.Errorf("listener %s (from /proc/net/%s) missing; vmwatch has %v", key, file, keys(have))
					continue
				}
				if len(s.PIDs) == 0 {
					t.Errorf("listener %s has no owning process", key)
				}
				if s.NetNS == 0 || s.NetNS != init.Namespaces.Net {
					t.Errorf("listener %s: network namespace %d, the guest's first is %d", key, s.NetNS, init.Namespaces.Net)
				}
			}
		}
		if n < min {
			t.Errorf("the guest shows only %d listeners; the workload starts %d", n, min)
		}
		return ss
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestDmesg: the last lines of the guest's own dmesg are in vmwatch dmesg.
func TestDmesg(t *testing.T) {
	forEachKernel(t, func(t *testing.T, series string) {
		vm := standard(t, series)
		checkDmesg(t, vm, "qmp:"+vm.QMPPath, series)
	})
}

func checkDmesg(t *testing.T, vm *testvm.VM, target, series string) {
	t.Helper()
	{
		if _, err := vm.Run("echo vmwatch-dmesg-marker-" + series + " > /dev/kmsg"); err != nil {
			t.Fatal(err)
		}
		out, err := vm.Run("dmesg | tail -n 25")
		if err != nil {
			t.Fatal(err)
		}
		got := string(vmwatch(t, "dmesg", "-t", target))
		lines := map[string]bool{}
		for _, l := range strings.Split(got, "\n") {
			lines[l] = true
		}
		for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
			if !lines[l] {
				t.Errorf("guest dmesg line %q missing from vmwatch dmesg", l)
			}
		}
		if !strings.Contains(got, "vmwatch-dmesg-marker-"+series) {
			t.Errorf("the marker written to /dev/kmsg is not in vmwatch dmesg")
		}
	}
}

// TestSymbols: the kernel symbols vmwatch rebuilds from memory are exactly
// the guest's /proc/kallsyms (core kernel part): same count, same text
// (compared by checksum), and a sample looked up by name and address.
func TestSymbols(t *testing.T) {
	forEachKernel(t, func(t *testing.T, series string) {
		vm := standard(t, series)
		out, err := vm.Run("grep -v '\\[' /proc/kallsyms | md5sum; grep -vc '\\[' /proc/kallsyms")
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(out)
		if len(f) < 3 {
			t.Fatalf("guest answered %q", out)
		}
		wantSum, wantCount := f[0], f[2]
		var syms []struct {
			Address linux.Addr `json:"address"`
			Type    string     `json:"type"`
			Name    string     `json:"name"`
		}
		vmwatchJSON(t, &syms, "symbols", "-t", "qmp:"+vm.QMPPath)
		var b strings.Builder
		for _, s := range syms {
			fmt.Fprintf(&b, "%016x %s %s\n", uint64(s.Address), s.Type, s.Name)
		}
		sum := md5.Sum([]byte(b.String()))
		if strconv.Itoa(len(syms)) != wantCount {
			t.Errorf("vmwatch has %d symbols, the guest's /proc/kallsyms %s", len(syms), wantCount)
		}
		if hex.EncodeToString(sum[:]) != wantSum {
			t.Errorf("symbol table differs from the guest's /proc/kallsyms (md5 %x, guest %s)", sum, wantSum)
		}
		// a sample, by name and by address
		sample, err := vm.Run("grep -E ' (init_task|linux_banner|sys_call_table|do_sys_open|commit_creds|__x64_sys_getpid|tcp_hashinfo|modules|prb)$' /proc/kallsyms")
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(strings.TrimSpace(sample), "\n") {
			g := strings.Fields(line)
			var got []struct {
				Address linux.Addr `json:"address"`
				Name    string     `json:"name"`
				Offset  uint64     `json:"offset"`
			}
			vmwatchJSON(t, &got, "symbols", "-t", "qmp:"+vm.QMPPath, g[2], "0x"+g[0])
			if len(got) != 2 || fmt.Sprintf("%016x", uint64(got[0].Address)) != g[0] {
				t.Errorf("symbols %s: got %+v, guest says %s", g[2], got, g[0])
			}
		}
	})
}

// TestInfo: info reports the guest's release and the KASLR shift the
// kernel itself records in VMCOREINFO (KERNELOFFSET).
func TestInfo(t *testing.T) {
	forEachKernel(t, func(t *testing.T, series string) {
		vm := standard(t, series)
		rel, err := vm.Run("uname -r")
		if err != nil {
			t.Fatal(err)
		}
		var info struct {
			Release   string `json:"release"`
			VirtShift string `json:"kaslr_virtual_shift"`
			Symbols   int    `json:"symbols"`
			Types     int    `json:"types"`
			Levels    int    `json:"paging_levels"`
		}
		vmwatchJSON(t, &info, "info", "-t", "qmp:"+vm.QMPPath)
		if info.Release != strings.TrimSpace(rel) {
			t.Errorf("release %q, guest says %q", info.Release, strings.TrimSpace(rel))
		}
		if info.Symbols < 50000 || info.Types < 50000 {
			t.Errorf("implausible counts: %d symbols, %d types", info.Symbols, info.Types)
		}
		// _text in /proc/kallsyms minus the default link address
		out, err := vm.Run("grep ' _text$' /proc/kallsyms")
		if err != nil {
			t.Fatal(err)
		}
		text, _ := strconv.ParseUint(strings.Fields(out)[0], 16, 64)
		if want := fmt.Sprintf("%#x", text-0xffffffff81000000); info.VirtShift != want {
			t.Errorf("KASLR shift %s, guest's _text says %s", info.VirtShift, want)
		}
	})
}

// TestPause: --pause stops the VM around the read, reports for how long,
// and leaves it running afterwards; a VM that was already paused stays so.
func TestPause(t *testing.T) {
	vm := standard(t, "6.12")
	var info struct {
		PausedMs *float64 `json:"paused_ms"`
	}
	vmwatchJSON(t, &info, "info", "--pause", "-t", "qmp:"+vm.QMPPath)
	if info.PausedMs == nil || *info.PausedMs <= 0 || *info.PausedMs > 10000 {
		t.Errorf("paused_ms %v", info.PausedMs)
	}
	st, err := vm.QMP("query-status", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(st), `"running": true`) && !strings.Contains(string(st), `"running":true`) {
		t.Errorf("VM not running after --pause: %s", st)
	}
	if _, err := vm.QMP("stop", nil); err != nil {
		t.Fatal(err)
	}
	defer vm.QMP("cont", nil)
	vmwatch(t, "ps", "--pause", "-t", "qmp:"+vm.QMPPath)
	st, _ = vm.QMP("query-status", nil)
	if !strings.Contains(string(st), `"paused"`) {
		t.Errorf("a VM paused before vmwatch ran was resumed: %s", st)
	}
	// --pause needs QMP
	if _, stderr, err := vmwatchRun("ps", "--pause", "-t", "memfile:"+vm.MemFile); err == nil || !strings.Contains(string(stderr), "QMP") {
		t.Errorf("--pause on a memory file: %v %s", err, stderr)
	}
}

// TestFiveLevelPaging: a guest on a CPU with LA57 uses 5-level paging; the
// kernel is found from the registers and from memory alone.
func TestFiveLevelPaging(t *testing.T) {
	vm := guest(t, "la57-6.12", func(k *testvm.Kernel) testvm.Config {
		return testvm.Config{CPUModel: "max"}
	}, "6.12")
	for _, tg := range []string{"qmp:" + vm.QMPPath, "pid:" + strconv.Itoa(vm.PID())} {
		var info struct {
			Levels  int    `json:"paging_levels"`
			FoundBy string `json:"found_by"`
		}
		vmwatchJSON(t, &info, "info", "-t", tg)
		if info.Levels != 5 {
			t.Errorf("%s: %d paging levels (found by %s), want 5", tg, info.Levels, info.FoundBy)
		}
		checkPS(t, vm, tg)
	}
}

// TestGuestStats: memory, load, task count and uptime read from the guest
// kernel agree with the guest's /proc/meminfo, /proc/loadavg, /proc/uptime.
func TestGuestStats(t *testing.T) {
	forEachKernel(t, func(t *testing.T, series string) {
		vm := standard(t, series)
		checkStats(t, vm, "qmp:"+vm.QMPPath)
	})
}

// checkStats: each /proc/meminfo field vmwatch stats claims (MemTotal,
// MemFree, MemAvailable, Buffers, Cached), the load, the task count, the
// uptime and a process's resident memory agree with the guest's own.
func checkStats(t *testing.T, vm *testvm.VM, target string) {
	t.Helper()
	{
		var st struct {
			MemTotal     uint64     `json:"mem_total_bytes"`
			MemFree      uint64     `json:"mem_free_bytes"`
			MemAvailable uint64     `json:"mem_available_bytes"`
			Buffers      uint64     `json:"buffers_bytes"`
			Cached       uint64     `json:"cached_bytes"`
			Load         [3]float64 `json:"load"`
			Threads      int64      `json:"threads"`
			Uptime       float64    `json:"uptime_seconds"`
			Top          []struct {
				PID int64   `json:"pid"`
				RSS uint64  `json:"rss_bytes"`
				CPU float64 `json:"cpu_seconds"`
			} `json:"top"`
		}
		vmwatchJSON(t, &st, "stats", "-n", "100", "-t", target)
		out, err := vm.Run("cat /proc/meminfo /proc/loadavg /proc/uptime")
		if err != nil {
			t.Fatal(err)
		}
		kb := map[string]uint64{}
		var lines []string
		for _, l := range strings.Split(out, "\n") {
			f := strings.Fields(l)
			if len(f) >= 2 && strings.HasSuffix(f[0], ":") {
				v, _ := strconv.ParseUint(f[1], 10, 64)
				kb[strings.TrimSuffix(f[0], ":")] = v * 1024
			} else if len(f) > 0 {
				lines = append(lines, l)
			}
		}
		near := func(name string, got, want uint64, tol float64) {
			d := float64(got) - float64(want)
			if d < 0 {
				d = -d
			}
			if d > tol*float64(want)+64*1024 {
				t.Errorf("%s: vmwatch %d, guest %d", name, got, want)
			}
		}
		if st.MemTotal != kb["MemTotal"] {
			t.Errorf("MemTotal: vmwatch %d, guest %d", st.MemTotal, kb["MemTotal"])
		}
		near("MemFree", st.MemFree, kb["MemFree"], 0.02)
		near("MemAvailable", st.MemAvailable, kb["MemAvailable"], 0.02)
		// tight: Cached used to count Buffers too
		near("Buffers", st.Buffers, kb["Buffers"], 0.005)
		near("Cached", st.Cached, kb["Cached"], 0.005)
		load := strings.Fields(lines[0])
		for i := 0; i < 3; i++ {
			g, _ := strconv.ParseFloat(load[i], 64)
			if d := g - st.Load[i]; d > 0.1 || d < -0.1 {
				t.Errorf("load[%d]: vmwatch %.2f, guest %.2f", i, st.Load[i], g)
			}
		}
		_, total, _ := strings.Cut(load[3], "/")
		n, _ := strconv.ParseInt(total, 10, 64)
		if d := n - st.Threads; d > 3 || d < -3 {
			t.Errorf("tasks: vmwatch %d, guest %d", st.Threads, n)
		}
		up, _ := strconv.ParseFloat(strings.Fields(lines[1])[0], 64)
		if d := up - st.Uptime; d > 3 || d < -1 {
			t.Errorf("uptime: vmwatch %.2f, guest %.2f", st.Uptime, up)
		}
		if len(st.Top) < 10 || st.Top[0].CPU <= 0 {
			t.Errorf("top processes: %+v", st.Top)
		}
		// resident memory of a user process, as /proc/PID/status says it
		pid := st.Top[0].PID
		for _, p := range st.Top {
			if p.RSS > 0 {
				pid = p.PID
				rss, err := vm.Run(fmt.Sprintf("awk '/VmRSS/ {print $2}' /proc/%d/status", pid))
				if err != nil {
					t.Fatal(err)
				}
				want, _ := strconv.ParseUint(strings.TrimSpace(rss), 10, 64)
				near(fmt.Sprintf("RSS of %d", pid), p.RSS, want*1024, 0.1)
				break
			}
		}
	}
}

// TestVMAs: every process's mappings as `vmwatch maps` shows them equal
// its /proc/PID/maps line for line: range, permissions, offset, device,
// inode and name ([heap], [stack], [vdso], [vvar], [vsyscall], files,
// deleted files).
func TestVMAs(t *testing.T) {
	forEachKernel(t, func(t *testing.T, series string) {
		vm := standard(t, series)
		checkMaps(t, vm, fmt.Sprintf("pid:%d", vm.PID()))
	})
}

// guestMaps reads /proc/PID/maps of every process (or of the pids given).
func guestMaps(t *testing.T, vm *testvm.VM, pids ...int64) map[int64][]string {
	t.Helper()
	sel := "/proc/[0-9]*"
	if len(pids) > 0 {
		var ps []string
		for _, p := range pids {
			ps = append(ps, fmt.Sprintf("/proc/%d", p))
		}
		sel = strings.Join(ps, " ")
	}
	out, err := vm.RunTimeout("for d in "+sel+"; do echo \"== ${d#/proc/}\"; cat $d/maps 2>/dev/null; done; true", 3*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	m := map[int64][]string{}
	var cur int64 = -1
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimRight(line, "\r")
		if p, ok := strings.CutPrefix(line, "== "); ok {
			cur, _ = strconv.ParseInt(p, 10, 64)
			m[cur] = nil
			continue
		}
		if cur < 0 || line == "" {
			continue
		}
		m[cur] = append(m[cur], line)
	}
	return m
}

// checkMaps compares every user process's mappings from `vmwatch maps`
// with the guest's /proc/PID/maps read before and after, exactly (a
// process whose maps changed in between is read again, up to three times).
// The kernel's own mappings and the heap and stack must have been among
// those compared.
func checkMaps(t *testing.T, vm *testvm.VM, target string) {
	t.Helper()
	var todo []int64 // nil: every process
	var compared, total int
	names := map[string]int{}
	for round := 0; round < 3; round++ {
		before := guestMaps(t, vm, todo...)
		var ours []struct {
			PID    int64           `json:"pid"`
			Maps   []linux.Mapping `json:"maps"`
			Errors []string        `json:"errors"`
		}
		args := []string{"maps", "-t", target}
		for _, p := range todo {
			args = append(args, strconv.FormatInt(p, 10))
		}
		vmwatchJSON(t, &ours, args...)
		after := guestMaps(t, vm, todo...)
		todo = nil
		for _, p := range ours {
			b, okB := before[p.PID]
			a, okA := after[p.PID]
			if !okA || !okB || len(a) == 0 && len(b) == 0 {
				continue // exited, or a kernel thread
			}
			var got []string
			for _, m := range p.Maps {
				got = append(got, m.Line())
			}
			gs := strings.Join(got, "\n")
			if gs == strings.Join(a, "\n") || gs == strings.Join(b, "\n") {
				compared++
				total += len(got)
				for _, m := range p.Maps {
					if strings.HasPrefix(m.Path, "[") {
						names[m.Path]++
					}
				}
				continue
			}
			if round == 2 {
				t.Errorf("mappings of pid %d differ from /proc/%d/maps (errors %v)\nvmwatch:\n%s\n/proc:\n%s", p.PID, p.PID, p.Errors, gs, strings.Join(a, "\n"))
			}
			todo = append(todo, p.PID)
		}
		if len(todo) == 0 {
			break
		}
	}
	t.Logf("%d processes, %d mappings equal to /proc/PID/maps; named: %v", compared, total, names)
	if compared < 10 || names["[vdso]"] == 0 || names["[heap]"] == 0 || names["[stack]"] == 0 {
		t.Errorf("only %d processes compared, names %v: [vdso], [heap] and [stack] must be among them", compared, names)
	}
}

// targetOpen opens a target for the tests that use the packages directly.
func targetOpen(t string) (*target.Target, error) {
	return target.Open(context.Background(), t, target.Options{})
}
