package e2e

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmwatch/vmwatch/detect"
	"github.com/vmwatch/vmwatch/linux"
	"github.com/vmwatch/vmwatch/testvm"
)

// attackFiles are built once per kernel: the test rootkit and the static
// userland helpers.
var attackBuild sync.Map // series -> map[string][]byte or error

func attackFiles(t testing.TB, k *testvm.Kernel) map[string][]byte {
	if v, ok := attackBuild.Load(k.Series); ok {
		if err, ok := v.(error); ok {
			t.Fatal(err)
		}
		return v.(map[string][]byte)
	}
	files := map[string][]byte{}
	dir := t.TempDir()
	ko, err := k.BuildModule("../attacks/rootkit", filepath.Join(dir, "rootkit"), "vmw_rootkit")
	if err != nil {
		attackBuild.Store(k.Series, err)
		t.Fatal(err)
	}
	b, _ := os.ReadFile(ko)
	files["/opt/vmw_rootkit.ko"] = b
	ko, err = k.BuildModule("../attacks/hooks", filepath.Join(dir, "hooks"), "vmw_hooks")
	if err != nil {
		attackBuild.Store(k.Series, err)
		t.Fatal(err)
	}
	b, _ = os.ReadFile(ko)
	files["/opt/vmw_hooks.ko"] = b
	ko, err = k.BuildModule("../attacks/layout", filepath.Join(dir, "layout"), "vmw_layout")
	if err != nil {
		attackBuild.Store(k.Series, err)
		t.Fatal(err)
	}
	b, _ = os.ReadFile(ko)
	files["/opt/vmw_layout.ko"] = b
	for _, h := range []string{"fakekthread", "memfdexec", "anonexec", "bpfkprobe", "forgeps"} {
		out := filepath.Join(dir, h)
		if err := testvm.BuildStatic("../attacks/helpers/"+h+".c", out); err != nil {
			attackBuild.Store(k.Series, err)
			t.Fatal(err)
		}
		b, _ := os.ReadFile(out)
		files["/opt/"+h] = b
	}
	attackBuild.Store(k.Series, files)
	return files
}

// attackInit starts the targets: a process run by an unprivileged user
// (whose parent is unprivileged too) for the credential attack.
const attackInit = `printf 'root:x:0:0::/root:/bin/sh\ntest:x:1000:1000::/tmp:/bin/sh\n' > /etc/passwd
printf 'root:x:0:\ntest:x:1000:\n' > /etc/group
su test -c 'sleep 1000003 & wait' &`

func attackGuest(t *testing.T, series, kind string) *testvm.VM {
	return guest(t, "attack-"+kind+"-"+series, func(k *testvm.Kernel) testvm.Config {
		return testvm.Config{
			MemFile:   fmt.Sprintf("/dev/shm/vmwatch-e2e-%d-attack-%s-%s", os.Getpid(), kind, series),
			Files:     attackFiles(t, k),
			InitExtra: attackInit,
		}
	}, series)
}

// check runs vmwatch check and returns its findings.
func check(t *testing.T, vm *testvm.VM, extra ...string) []detect.Finding {
	t.Helper()
	return checkTarget(t, "qmp:"+vm.QMPPath, extra...)
}

// checkTarget runs vmwatch check on any target.
func checkTarget(t *testing.T, target string, extra ...string) []detect.Finding {
	t.Helper()
	args := append([]string{"check", "-o", "json", "-t", target}, extra...)
	out, stderr, err := vmwatchRun(args...)
	if err != nil && exitCode(err) != 1 {
		t.Fatalf("vmwatch check: %v: %s", err, stderr)
	}
	if len(stderr) > 0 {
		t.Logf("vmwatch check: %s", stderr)
	}
	var fs []detect.Finding
	if err := json.Unmarshal(out, &fs); err != nil {
		t.Fatalf("check output: %v\n%s", err, out)
	}
	return fs
}

// expectFindings asserts that every id in want is found with the evidence
// match accepts, and that no other finding is high or critical.
func expectFindings(t *testing.T, fs []detect.Finding, want map[string]func(detect.Finding) bool) {
	t.Helper()
	seen := map[string]bool{}
	for _, f := range fs {
		if ok, listed := want[f.ID]; listed {
			if ok(f) {
				seen[f.ID] = true
			}
			continue
		}
		if f.Severity >= detect.High {
			t.Errorf("unexpected %s finding %s: %s", f.Severity, f.ID, f.Explanation)
		}
	}
	for id := range want {
		if !seen[id] {
			t.Errorf("no %s finding with the right evidence; findings: %s", id, summary(fs))
		}
	}
}

func summary(fs []detect.Finding) string {
	var s []string
	for _, f := range fs {
		b, _ := json.Marshal(f.Evidence)
		s = append(s, fmt.Sprintf("[%s %s %q %s]", f.Severity, f.ID, f.Title, b))
	}
	return strings.Join(s, " ")
}

func expectClean(t *testing.T, fs []detect.Finding) {
	t.Helper()
	for _, f := range fs {
		// low is what a clean guest may show (a JIT runtime's code)
		switch {
		case f.Severity > detect.Low:
			t.Errorf("clean guest: %s finding %s: %s", f.Severity, f.ID, f.Explanation)
		case f.Severity == detect.Low:
			t.Logf("clean guest: low finding %s: %.120s", f.ID, f.Explanation)
		}
	}
}

func hasPID(pid int64) func(detect.Finding) bool {
	return func(f detect.Finding) bool {
		for _, p := range f.Evidence.PIDs {
			if p == pid {
				return true
			}
		}
		return false
	}
}

// guestPID finds a process in the guest by its command line: exactly,
// or containing the pattern.
func guestPID(t *testing.T, vm *testvm.VM, pattern string) int64 {
	t.Helper()
	// from /proc: busybox's ps and procps's take different options
	out, err := vm.Run(`for d in /proc/[0-9]*; do a=$(tr '\0' ' ' < $d/cmdline 2>/dev/null); [ -n "$a" ] && echo "${d#/proc/} $a"; done; true`)
	if err != nil {
		t.Fatal(err)
	}
	exact := strings.HasPrefix(pattern, "^")
	pattern = strings.Trim(pattern, "^$")
	for _, line := range strings.Split(out, "\n") {
		f := strings.SplitN(strings.TrimSpace(line), " ", 2)
		if len(f) < 2 {
			continue
		}
		args := strings.TrimSpace(f[1])
		if (exact && args == pattern) || (!exact && strings.Contains(args, pattern) && !strings.Contains(args, "/proc/[0-9]")) {
			if pid, err := strconv.ParseInt(f[0], 10, 64); err == nil {
				return pid
			}
		}
	}
	t.Fatalf("no process %q in the guest:\n%s", pattern, out)
	return 0
}

// TestAttacksOnMemory: each attack done by writing guest memory (the way a
// kernel exploit would) produces its finding with the right pid, module or
// symbol, and no other high or critical finding; undone, the guest is clean.
func TestAttacksOnMemory(t *testing.T) {
	forEachKernel(t, func(t *testing.T, series string) {
		vm := attackGuest(t, series, "mem")
		memoryAttacks(t, vm, series, "sleep 1000002", "sleep 1000001", true)
	})
}

// memoryAttacks plants each memory attack with the planter (knowledge from
// the guest's /proc/kallsyms and the vmw_layout module, not from vmwatch),
// checks the finding and undoes it. hide and cred are the command lines of
// two expendable processes; otherBoot also compares with a baseline
// recorded on the same kernel booted without KASLR.
func memoryAttacks(t *testing.T, vm *testvm.VM, series, hide, cred string, otherBoot bool) {
	p := newPlanter(t, vm)
	base := filepath.Join(t.TempDir(), "baseline")
	expectClean(t, check(t, vm, "--baseline", base)) // records the baseline
	expectClean(t, check(t, vm, "--baseline", base))

	t.Run("unlink a task", func(t *testing.T) {
		pid := guestPID(t, vm, "^"+hide+"$")
		o := p.layout([]int64{pid}, "")
		tag := "/" + strconv.FormatInt(pid, 10)
		var undo func()
		p.paused(func() {
			undo = p.unlink(p.need(o, "task_tasks"+tag), p.need(o, "task_tasks_next"+tag), p.need(o, "task_tasks_prev"+tag))
		})
		expectFindings(t, check(t, vm), map[string]func(detect.Finding) bool{"hidden-process": hasPID(pid)})
		p.paused(undo)
		expectClean(t, check(t, vm))
	})
	t.Run("unlink a module", func(t *testing.T) {
		o := p.layout(nil, "dummy")
		var undo func()
		p.paused(func() {
			undo = p.unlink(p.need(o, "module_list/0"), p.need(o, "module_list_next/0"), p.need(o, "module_list_prev/0"))
		})
		expectFindings(t, check(t, vm), map[string]func(detect.Finding) bool{"hidden-module": func(f detect.Finding) bool {
			return len(f.Evidence.Modules) == 1 && f.Evidence.Modules[0] == "dummy" && f.Severity == detect.Critical
		}})
		p.paused(undo)
		expectClean(t, check(t, vm))
	})
	t.Run("redirect a system call", func(t *testing.T) {
		const nrKill = 62 // __NR_kill on x86-64
		table := p.sym("sys_call_table")
		text := p.need(p.layout(nil, "dummy"), "module_text/0")
		var undo func()
		p.paused(func() { undo = p.write64(p.imagePA(table+nrKill*8), text.va+0x10) })
		expectFindings(t, check(t, vm), map[string]func(detect.Finding) bool{"syscall-table-hook": func(f detect.Finding) bool {
			nr, _ := f.Evidence.Details["nr"].(float64)
			return nr == nrKill && len(f.Evidence.Modules) == 1 && f.Evidence.Modules[0] == "dummy"
		}})
		p.paused(undo)
		expectClean(t, check(t, vm))
	})
	acct := p.sym("__x64_sys_acct") // acct(2): never called in the test guests
	patched := func(f detect.Finding) bool {
		return len(f.Evidence.Addresses) > 0 && strings.HasPrefix(f.Evidence.Addresses[0].Symbol, "__x64_sys_acct")
	}
	t.Run("patch kernel code", func(t *testing.T) {
		at := p.firstPlainInsn(acct) + 3
		var undo func()
		p.paused(func() { undo = p.write(p.imagePA(at), []byte{0xcc, 0xcc, 0xcc}) })
		expectFindings(t, check(t, vm, "--baseline", base), map[string]func(detect.Finding) bool{"kernel-code-modified": patched})
		p.paused(undo)
		expectClean(t, check(t, vm, "--baseline", base))
	})
	t.Run("patch an ftrace site", func(t *testing.T) {
		// the ftrace call site holds a call, but not to anything ftrace
		// made: being a patch site excuses nothing by itself
		site := acct
		if binary.LittleEndian.Uint32(p.read(p.imagePA(acct), 4)) == 0xfa1e0ff3 {
			site += 4 // after endbr64
		}
		if b := p.read(p.imagePA(site), 5); string(b) != "\x0f\x1f\x44\x00\x00" {
			t.Fatalf("__x64_sys_acct: no ftrace nop at %#x: % x", site, b)
		}
		text := p.need(p.layout(nil, "dummy"), "module_text/0")
		var undo func()
		p.paused(func() { undo = p.write(p.imagePA(site), rel32(0xe8, site, text.va+0x30)) })
		fs := check(t, vm, "--baseline", base)
		expectFindings(t, fs, map[string]func(detect.Finding) bool{"kernel-code-modified": patched, "inline-hook": func(f detect.Finding) bool {
			return strings.Contains(f.Title, "__x64_sys_acct") && len(f.Evidence.Addresses) > 1 && f.Evidence.Addresses[1].Module == "dummy"
		}})
		p.paused(undo)
		expectClean(t, check(t, vm, "--baseline", base))
	})
	if otherBoot {
		t.Run("baseline of another boot", func(t *testing.T) {
			// recorded on the same kernel booted without KASLR: every
			// relocated address, every %rip-relative per-CPU access and
			// every runtime constant differs, and must not count
			other := guest(t, "nokaslr-"+series, func(k *testvm.Kernel) testvm.Config { return testvm.Config{Cmdline: "nokaslr"} }, series)
			file := filepath.Join(t.TempDir(), "other-boot")
			vmwatch(t, "baseline", "-t", "qmp:"+other.QMPPath, "-f", file)
			var a, b struct {
				TextStart linux.Addr `json:"text_start"`
			}
			vmwatchJSON(t, &a, "info", "-o", "json", "-t", "qmp:"+other.QMPPath)
			vmwatchJSON(t, &b, "info", "-o", "json", "-t", "qmp:"+vm.QMPPath)
			if a.TextStart == 0 || b.TextStart == 0 {
				t.Fatalf("no text_start in vmwatch info: %+v %+v", a, b)
			}
			if a.TextStart == b.TextStart {
				t.Logf("KASLR put both kernels at %v: only the boot-time data differs", a.TextStart)
			}
			expectClean(t, check(t, vm, "--baseline", file))
			at := p.firstPlainInsn(acct) + 3
			var undo func()
			p.paused(func() { undo = p.write(p.imagePA(at), []byte{0xcc, 0xcc, 0xcc}) })
			expectFindings(t, check(t, vm, "--baseline", file), map[string]func(detect.Finding) bool{"kernel-code-modified": patched})
			p.paused(undo)
			expectClean(t, check(t, vm, "--baseline", file))
		})
	}
	t.Run("inline hook", func(t *testing.T) {
		at := p.firstPlainInsn(acct)
		text := p.need(p.layout(nil, "dummy"), "module_text/0")
		var undo func()
		p.paused(func() { undo = p.write(p.imagePA(at), rel32(0xe9, at, text.va+0x20)) })
		expectFindings(t, check(t, vm), map[string]func(detect.Finding) bool{"inline-hook": func(f detect.Finding) bool {
			return strings.Contains(f.Title, "__x64_sys_acct") && len(f.Evidence.Addresses) > 1 && f.Evidence.Addresses[1].Module == "dummy"
		}})
		p.paused(undo)
		expectClean(t, check(t, vm))
	})
	t.Run("share init's credentials", func(t *testing.T) {
		pid := guestPID(t, vm, "^"+cred+"$")
		o := p.layout([]int64{pid, 1}, "")
		tag := "/" + strconv.FormatInt(pid, 10)
		initCred := p.need(o, "cred/1").va
		var undo []func()
		p.paused(func() {
			undo = append(undo, p.write64(p.need(o, "task_cred_ptr"+tag).pa, initCred), p.write64(p.need(o, "task_real_cred_ptr"+tag).pa, initCred))
		})
		expectFindings(t, check(t, vm), map[string]func(detect.Finding) bool{"shared-credentials": func(f detect.Finding) bool {
			return hasPID(pid)(f) && hasPID(1)(f)
		}})
		p.paused(func() { undo[1](); undo[0]() })
		expectClean(t, check(t, vm))
	})
}

// TestAttacksInUserland: attacker behaviour inside the guest produces its
// finding with the right pid.
func TestAttacksInUserland(t *testing.T) {
	forEachKernel(t, func(t *testing.T, series string) {
		vm := attackGuest(t, series, "user")
		expectClean(t, check(t, vm))
		cases := []struct {
			name, start, pattern, id string
			sev                      detect.Severity
			others                   []string // other findings this behaviour may also raise (medium or lower)
		}{
			{"reverse shell", "sleep 1000 | nc -l -p 4444 >/dev/null & sleep 0.3; nc 127.0.0.1 4444 -e /bin/sh &", "^/bin/sh$", "reverse-shell", detect.High, nil},
			{"kernel thread name", "/opt/fakekthread kworker/0:3 &", "fakekthread", "kthread-masquerade", detect.High, nil},
			{"program in a memfd", "/opt/memfdexec /bin/busybox sleep 1000004 &", "sleep 1000004", "fileless-executable", detect.High, nil},
			{"deleted program", "cp /bin/busybox /tmp/sleep && /tmp/sleep 1000005 & sleep 0.3; rm -f /tmp/sleep", "sleep 1000005", "deleted-executable", detect.High, nil},
			{"LD_PRELOAD", "LD_PRELOAD=/tmp/libhide.so sleep 1000006 &", "sleep 1000006", "ld-preload", detect.Medium, nil},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				if _, err := vm.Run(c.start); err != nil {
					t.Fatal(err)
				}
				time.Sleep(300 * time.Millisecond)
				pid := guestPID(t, vm, c.pattern)
				defer vm.Run(fmt.Sprintf("kill %d; kill $(ps -o pid,args | awk '/nc -l -p 4444|sleep 1000$/ {print $1}') 2>/dev/null; true", pid))
				expectFindings(t, check(t, vm), map[string]func(detect.Finding) bool{c.id: func(f detect.Finding) bool {
					return hasPID(pid)(f) && f.Severity == c.sev
				}})
			})
		}
	})
}

// TestRootkitModule: a real loadable module, built here against Debian's
// headers for the guest's kernel, hides a process, hides itself, hooks
// kill(2) through ftrace and gives a process root; each shows.
func TestRootkitModule(t *testing.T) {
	forEachKernel(t, func(t *testing.T, series string) {
		vm := attackGuest(t, series, "lkm")
		expectClean(t, check(t, vm))
		rootkitAttack(t, vm)
	})
}

// rootkitAttack loads the test rootkit (sleep 1000002 hidden, sleep
// 1000003 of an unprivileged user made root, kill(2) hooked, the module
// hidden) and expects each to show. The rootkit stays loaded.
func rootkitAttack(t *testing.T, vm *testvm.VM) {
	{
		hide := guestPID(t, vm, "^sleep 1000002$")
		user := guestPID(t, vm, "^sleep 1000003$")
		out, err := vm.Run(fmt.Sprintf("insmod /opt/vmw_rootkit.ko hide_pid=%d root_pid=%d hook=1 hide_self=1 && echo insmod-ok; grep -c vmw_rootkit /proc/modules", hide, user))
		t.Logf("guest: %s", out)
		// insmod must succeed; grep -c then exits 1 (the module hid itself)
		if !strings.Contains(out, "insmod-ok") {
			t.Fatalf("insmod vmw_rootkit.ko failed: %v: %s", err, out)
		}
		if mods, _ := vm.Run("cat /proc/modules"); strings.Contains(mods, "vmw_rootkit") {
			t.Fatalf("the rootkit did not hide itself: %s", mods)
		}
		if st, _ := vm.Run(fmt.Sprintf("grep Uid /proc/%d/status", user)); !strings.Contains(st, "Uid:\t0\t0") {
			t.Fatalf("the rootkit did not give pid %d root: %s", user, st)
		}
		fs := check(t, vm)
		expectFindings(t, fs, map[string]func(detect.Finding) bool{
			"hidden-process": hasPID(hide),
			"hidden-module": func(f detect.Finding) bool {
				return len(f.Evidence.Modules) == 1 && f.Evidence.Modules[0] == "vmw_rootkit"
			},
			"ftrace-hook": func(f detect.Finding) bool {
				at, _ := f.Evidence.Details["attached_to"].([]any)
				return f.Severity == detect.Critical && len(at) > 0 && fmt.Sprint(at[0]) == "__x64_sys_kill"
			},
			"privilege-escalation": hasPID(user),
		})
		// the physical memory scan finds the hidden task too
		scan := check(t, vm, "--scan", "--only", "hidden-process-scan")
		expectFindings(t, scan, map[string]func(detect.Finding) bool{"hidden-process": func(f detect.Finding) bool {
			return hasPID(hide)(f) && strings.Contains(f.Evidence.Found, "physical memory")
		}})
		ids := map[string]bool{}
		for _, f := range fs {
			ids[f.ID] = true
		}
		var got []string
		for id := range ids {
			got = append(got, id)
		}
		sort.Strings(got)
		t.Logf("findings: %v", got)
	}
}

// TestCleanUnderLoad: clean guests give no finding above info over 20
// checks in a row while processes start and exit all the time.
func TestCleanUnderLoad(t *testing.T) {
	forEachKernel(t, func(t *testing.T, series string) {
		vm := standard(t, series)
		if _, err := vm.Run("(while true; do sleep 0.01 & ls /proc >/dev/null; sh -c 'true'; done) >/dev/null 2>&1 & echo $! > /tmp/churn.pid"); err != nil {
			t.Fatal(err)
		}
		defer vm.Run("kill $(cat /tmp/churn.pid); true")
		for i := 0; i < 20; i++ {
			fs := check(t, vm, "--scan")
			expectClean(t, fs)
			if t.Failed() {
				t.Fatalf("check %d of 20", i+1)
			}
		}
	})
}

// TestYara: YARA signatures match process memory (a marker compiled into
// a helper) and kernel memory (the banner), with pid and address.
func TestYara(t *testing.T) {
	forEachKernel(t, func(t *testing.T, series string) {
		vm := attackGuest(t, series, "user")
		if _, err := vm.Run("/opt/fakekthread marked &"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
		pid := guestPID(t, vm, "/opt/fakekthread marked")
		defer vm.Run(fmt.Sprintf("kill %d", pid))
		fs := check(t, vm, "--only", "yara", "--yara", "testdata/test.yar")
		var proc, kernel bool
		for _, f := range fs {
			rule, _ := f.Evidence.Details["rule"].(string)
			switch {
			case rule == "vmwatch_test_marker" && hasPID(pid)(f) && f.Severity == detect.High:
				proc = true
			case rule == "vmwatch_test_marker":
				t.Errorf("marker found outside the helper: %s", f.Explanation)
			case rule == "linux_banner" && len(f.Evidence.PIDs) == 0 && f.Severity == detect.Info:
				kernel = true
			}
		}
		if !proc || !kernel {
			t.Errorf("process match %v, kernel match %v: %s", proc, kernel, summary(fs))
		}
	})
}

// TestKernelCallbacks loads the hooks module (a netfilter hook, a keyboard
// notifier, a sniffer of the serial console's tty, a tracepoint probe, and
// /proc/net/tcp's show and /proc's iterate swapped, a task_kill security
// hook, a kernel perf counter) on both kernels.
func TestKernelCallbacks(t *testing.T) {
	forEachKernel(t, func(t *testing.T, series string) {
		callbacksAttack(t, attackGuest(t, series, "lkm"))
	})
}

// callbacksAttack: before, kernel-callbacks finds nothing; with vmw_hooks
// loaded it reports each of the module's callbacks and swapped operations,
// high, at the address the guest's own /proc/kallsyms gives its function,
// named by the module's symbol; the guest's /proc shows the hiding works;
// after rmmod, nothing again.
func callbacksAttack(t *testing.T, vm *testvm.VM) {
	expectNone := func(when string) {
		for _, f := range check(t, vm, "--only", "kernel-callbacks") {
			t.Errorf("%s: %s finding %s: %s", when, f.Severity, f.ID, f.Explanation)
		}
	}
	expectNone("before the module")
	// a TCP listener on port 31337 (7A69) and a process, for the module to
	// hide from /proc/net/tcp or tcp6 and from the listing of /proc
	out, err := vm.Run(`if command -v python3 >/dev/null; then setsid python3 -c 'import socket,time; s=socket.socket(); s.setsockopt(1,2,1); s.bind(("127.0.0.1",31337)); s.listen(); time.sleep(100000)' </dev/null >/dev/null 2>&1 & else sleep 100000 | nc -l -p 31337 >/dev/null 2>&1 & fi; sleep 100003 </dev/null >/dev/null 2>&1 & echo $!; sleep 1`)
	if err != nil {
		t.Fatalf("the listener and the process to hide: %v: %s", err, out)
	}
	hidden := strings.TrimSpace(out)
	if _, err := strconv.Atoi(hidden); err != nil {
		t.Fatalf("the process to hide: %q", out)
	}
	defer vm.Run("pkill -f 'sleep 10000[03]'; pkill -f 'bind..127.0.0.1.,31337'; true")
	seen := func() string {
		out, err := vm.Run(fmt.Sprintf("echo tcp $(cat /proc/net/tcp /proc/net/tcp6 | grep -c ':7A69 ') proc $(ls /proc | grep -cx %[1]s) kill $(kill -CONT %[1]s 2>/dev/null && echo ok || echo refused)", hidden))
		if err != nil {
			t.Fatalf("the guest's /proc: %v: %s", err, out)
		}
		return strings.TrimSpace(out)
	}
	if got := seen(); got != "tcp 1 proc 1 kill ok" {
		t.Fatalf("before the module the guest's /proc shows %q, want the listener and the process, and a signal to it sent", got)
	}
	fns := []string{"vmw_hooks_nf", "vmw_hooks_kbd", "vmw_hooks_tty_write", "vmw_hooks_receive_buf", "vmw_hooks_exec", "vmw_hooks_tcp_show", "vmw_hooks_proc_iterate", "vmw_hooks_task_kill", "vmw_hooks_perf"}
	// the LSM hooks' table, as the guest's kallsyms gives it: the static
	// calls from 6.12 on, the lists before
	out, err = vm.Run(`t=$(awk '$3 == "static_calls_table" {print $1}' /proc/kallsyms); [ -n "$t" ] || t=$(awk '$3 == "security_hook_heads" {print $1}' /proc/kallsyms); echo $t`)
	lsmTable := strings.TrimSpace(out)
	if err != nil || lsmTable == "" {
		t.Fatalf("the LSM hooks in the guest's kallsyms: %v: %q", err, out)
	}
	out, err = vm.Run(fmt.Sprintf("insmod /opt/vmw_hooks.ko tty=1 hide_port=31337 hide_pid=%s lsm_table=0x%s && grep -wE '%s' /proc/kallsyms", hidden, lsmTable, strings.Join(fns, "|")))
	if err != nil {
		t.Fatalf("insmod vmw_hooks.ko: %v: %s", err, out)
	}
	defer func() {
		if out, err := vm.Run("rmmod vmw_hooks"); err != nil {
			t.Errorf("rmmod vmw_hooks: %v: %s", err, out)
		}
		if got := seen(); got != "tcp 1 proc 1 kill ok" {
			t.Errorf("after rmmod the guest's /proc shows %q, want the listener and the process again, and a signal to it sent", got)
		}
		expectNone("after rmmod")
	}()
	addrs := map[string]uint64{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 {
			addrs[f[2]], _ = strconv.ParseUint(f[0], 16, 64)
		}
	}
	if len(addrs) != len(fns) {
		t.Fatalf("the guest's kallsyms for vmw_hooks: %q", out)
	}
	if got := seen(); got != "tcp 0 proc 0 kill refused" {
		t.Errorf("with the module the guest's /proc shows %q, want the listener and the process hidden, and a signal to it refused", got)
	}
	// the module's memory, extracted, holds the message its source logs
	ko := filepath.Join(t.TempDir(), "vmw_hooks.mem")
	vmwatch(t, "extract", "module", "vmw_hooks", "-t", "qmp:"+vm.QMPPath, "--to", ko)
	if b, err := os.ReadFile(ko); err != nil || !strings.Contains(string(b), "vmw_hooks: magic packet") {
		t.Errorf("extract module vmw_hooks: %d bytes without the module's own string (%v)", len(b), err)
	}
	fs := check(t, vm, "--only", "kernel-callbacks")
	at := func(fn string) func(detect.Finding) bool {
		return func(f detect.Finding) bool {
			if f.Severity != detect.High || len(f.Evidence.Addresses) == 0 || len(f.Evidence.Modules) != 1 || f.Evidence.Modules[0] != "vmw_hooks" {
				return false
			}
			a := f.Evidence.Addresses[0]
			return uint64(a.Address) == addrs[fn] && a.Symbol == fn+"+0x0 [vmw_hooks]"
		}
	}
	detail := func(f detect.Finding, k, want string) bool { return fmt.Sprint(f.Evidence.Details[k]) == want }
	var nf, kbd, ttyW, ttyR, exec, tcp, tcp6, proc, lsm, perf bool
	for _, f := range fs {
		switch {
		case f.ID == "netfilter-hook" && at("vmw_hooks_nf")(f) && f.Evidence.Details["hook"] == "PRE_ROUTING" && f.Evidence.Details["family"] == "ipv4":
			nf = true
		case f.ID == "notifier-hook" && at("vmw_hooks_kbd")(f) && f.Evidence.Details["chain"] == "keyboard" && f.Attack == "T1056.001":
			kbd = true
		case f.ID == "tty-hook" && at("vmw_hooks_tty_write")(f) && f.Evidence.Details["member"] == "write" && strings.HasPrefix(fmt.Sprint(f.Evidence.Details["object"]), "tty "):
			ttyW = true
		case f.ID == "tty-hook" && at("vmw_hooks_receive_buf")(f) && f.Evidence.Details["member"] == "receive_buf" && strings.HasPrefix(fmt.Sprint(f.Evidence.Details["object"]), "line discipline of "):
			ttyR = true
		case f.ID == "tracepoint-hook" && at("vmw_hooks_exec")(f) && detail(f, "object", "tracepoint sched_process_exec") && detail(f, "struct", "tracepoint_func"):
			exec = true
		case f.ID == "proc-hook" && at("vmw_hooks_tcp_show")(f) && detail(f, "object", "/proc/net/tcp") && detail(f, "struct", "seq_operations") && detail(f, "member", "show"):
			tcp = true
		case f.ID == "proc-hook" && at("vmw_hooks_tcp_show")(f) && detail(f, "object", "/proc/net/tcp6") && detail(f, "struct", "seq_operations") && detail(f, "member", "show"):
			tcp6 = true
		case f.ID == "perf-hook" && at("vmw_hooks_perf")(f) && detail(f, "object", "perf event (cpu 0)") && detail(f, "member", "overflow_handler"):
			perf = true
		case f.ID == "lsm-hook" && at("vmw_hooks_task_kill")(f) && strings.HasPrefix(fmt.Sprint(f.Evidence.Details["object"]), "lsm hook task_kill ") && detail(f, "member", "task_kill"):
			lsm = true
		case f.ID == "proc-hook" && at("vmw_hooks_proc_iterate")(f) && detail(f, "object", "/proc") && detail(f, "struct", "file_operations") && detail(f, "member", "iterate_shared"):
			proc = true
		default:
			t.Errorf("unexpected finding %s %s: %s", f.Severity, f.ID, f.Explanation)
		}
	}
	if !nf || !kbd || !ttyW || !ttyR || !exec || !tcp || !tcp6 || !proc || !lsm || !perf {
		t.Errorf("found: netfilter hook %v, keyboard notifier %v, tty write %v, line discipline receive_buf %v, exec tracepoint probe %v, /proc/net/tcp show %v, tcp6 show %v, /proc iterate %v, task_kill security hook %v, perf handler %v; kallsyms %x; findings: %s", nf, kbd, ttyW, ttyR, exec, tcp, tcp6, proc, lsm, perf, addrs, summary(fs))
	}
}
