// Package e2e tests vmwatch end to end: real Debian kernels booted under
// QEMU, vmwatch's command line run against them, and every answer checked
// against the guest's own view (its /proc, read over the serial shell).
package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmwatch/vmwatch/testvm"
)

var (
	vmwatchBin string
	guestsMu   sync.Mutex
	guests     = map[string]*guestEntry{}
)

type guestEntry struct {
	once sync.Once
	vm   *testvm.VM
	err  error
}

func TestMain(m *testing.M) {
	if p := os.Getenv("VMWATCH_JOURNAL_WRITER"); p != "" {
		journalWriter(p) // the child of TestJournalSurvivesSIGKILL
		return
	}
	dir, err := os.MkdirTemp("", "vmwatch-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	vmwatchBin = filepath.Join(dir, "vmwatch")
	// with YARA (cgo, Debian's libyara-dev): the YARA checks run too
	out, err := exec.Command("go", "build", "-tags", "yara", "-o", vmwatchBin, "../cmd/vmwatch").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build vmwatch: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	guestsMu.Lock()
	for _, g := range guests {
		if g.vm != nil {
			g.vm.Stop()
		}
	}
	guestsMu.Unlock()
	os.RemoveAll(dir)
	os.Exit(code)
}

// guest returns the shared guest of a configuration, booting it on first use.
func guest(t testing.TB, key string, cfg func(k *testvm.Kernel) testvm.Config, series string) *testvm.VM {
	t.Helper()
	guestsMu.Lock()
	g, ok := guests[key]
	if !ok {
		g = &guestEntry{}
		guests[key] = g
	}
	guestsMu.Unlock()
	g.once.Do(func() {
		// a setup that stops the test (t.Fatal in cfg) leaves this error
		// for every later user of the guest, never a nil guest
		g.err = fmt.Errorf("its setup failed in %s (see that test's log)", t.Name())
		k, err := testvm.FetchKernel(series)
		if err != nil {
			g.err = err
			return
		}
		c := cfg(k)
		c.Kernel = k
		if c.Name == "" {
			c.Name = key
		}
		t0 := time.Now()
		g.vm, g.err = testvm.Start(context.Background(), c)
		if g.err == nil {
			fmt.Fprintf(os.Stderr, "e2e: booted %s (%s, %s) in %v\n", key, k.Release, g.vm.Accel, time.Since(t0).Round(time.Millisecond))
		}
	})
	if g.err != nil {
		t.Fatalf("guest %s: %v", key, g.err)
	}
	return g.vm
}

// Kernels are the kernel series every end-to-end check runs on.
var Kernels = []string{"6.1", "6.12"}

// standard returns the shared standard guest (512 MiB, memory in a shared
// file so that every memory source can be tried on it).
func standard(t testing.TB, series string) *testvm.VM {
	return guest(t, "std-"+series, func(k *testvm.Kernel) testvm.Config {
		return testvm.Config{MemFile: fmt.Sprintf("/dev/shm/vmwatch-e2e-%d-%s", os.Getpid(), series)}
	}, series)
}

// vmwatch runs the command line and returns stdout; stderr goes to the log.
func vmwatch(t testing.TB, args ...string) []byte {
	t.Helper()
	out, stderr, err := vmwatchRun(args...)
	if err != nil {
		t.Fatalf("vmwatch %s: %v\nstderr: %s", strings.Join(args, " "), err, stderr)
	}
	if len(stderr) > 0 {
		t.Logf("vmwatch %s: stderr: %s", strings.Join(args, " "), stderr)
	}
	return out
}

func vmwatchRun(args ...string) (stdout, stderr []byte, err error) {
	// no command may hang a test run
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, vmwatchBin, args...)
	var so, se strings.Builder
	cmd.Stdout, cmd.Stderr = &so, &se
	err = cmd.Run()
	return []byte(so.String()), []byte(se.String()), err
}

// vmwatchJSON runs a verb with -o json and decodes the answer.
func vmwatchJSON(t testing.TB, v any, args ...string) {
	t.Helper()
	out := vmwatch(t, append(args, "-o", "json")...)
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("vmwatch %s: bad JSON: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// procEntry is a process as the guest's /proc shows it.
type procEntry struct {
	PID, PPID int64
	Comm      string
	Cmdline   string // /proc/PID/cmdline without its trailing NULs
	// NS: "pid:[N] net:[N] mnt:[N] nspid N cgroup PATH" from
	// /proc/PID/ns/*, the NSpid line of /proc/PID/status and the "0::"
	// line of /proc/PID/cgroup
	NS string
}

// guestProcsScript prints, for each process, its pid, its cmdline (base64:
// it may hold any byte), its namespaces, in-namespace pid and cgroup, then
// its stat line. busybox and Debian's coreutils both have base64.
const guestProcsScript = `for d in /proc/[0-9]*; do p=${d#/proc/}; ` +
	`c=$(base64 -w0 < $d/cmdline 2>/dev/null); ` +
	`n=$(for x in pid net mnt; do readlink $d/ns/$x 2>/dev/null; done | tr '\n' ' '); ` +
	`i=$(awk '/^NSpid:/ {print $NF}' $d/status 2>/dev/null); ` +
	// without a cgroup2 mount the kernel hides the default hierarchy's
	// "0::" line (cgrp_dfl_visible); every process is then in its root
	`g=$(sed -n 's/^0:://p' $d/cgroup 2>/dev/null); [ -n "$g" ] || g=/; ` +
	`s=$(cat $d/stat 2>/dev/null); ` +
	`[ -n "$s" ] && echo "P|$p|$c|$n|$i|$g|$s"; done; true`

// guestProcs reads every process from the guest's /proc.
func guestProcs(t testing.TB, vm *testvm.VM) map[int64]procEntry {
	t.Helper()
	out, err := vm.RunTimeout(guestProcsScript, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	m := map[int64]procEntry{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.SplitN(line, "|", 7)
		if len(f) < 7 || f[0] != "P" {
			continue
		}
		stat := f[6]
		l, r := strings.IndexByte(stat, '('), strings.LastIndexByte(stat, ')')
		if l < 0 || r < l {
			continue
		}
		pid, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		sf := strings.Fields(stat[r+1:])
		if len(sf) < 2 {
			continue
		}
		ppid, _ := strconv.ParseInt(sf[1], 10, 64)
		cl, _ := base64.StdEncoding.DecodeString(f[2])
		ns := strings.Fields(f[3])
		for len(ns) < 3 {
			ns = append(ns, "?")
		}
		m[pid] = procEntry{PID: pid, PPID: ppid, Comm: stat[l+1 : r],
			Cmdline: strings.TrimRight(string(cl), "\x00"),
			NS:      fmt.Sprintf("%s %s %s nspid %s cgroup %s", ns[0], ns[1], ns[2], f[4], f[5])}
	}
	if len(m) < 10 {
		t.Fatalf("guest /proc shows only %d processes: %q", len(m), out)
	}
	return m
}

// sameComm compares a task's comm with /proc's: a kworker's /proc name
// carries its current workqueue ("kworker/0:1-events"); task->comm does not.
func sameComm(kernel, proc string) bool {
	if kernel == proc {
		return true
	}
	return strings.HasPrefix(kernel, "kworker/") && strings.HasPrefix(proc, kernel+"-")
}
