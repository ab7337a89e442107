// Package e2e tests vmwatch end to end: real Debian kernels booted under
// QEMU, vmwatch's command line run against them, and every answer checked
// against the guest's own view (its /proc, read over the serial shell).
package e2e

import (
	"context"
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

// procEntry is a process as the guest's /proc/PID/stat shows it.
type procEntry struct {
	PID, PPID int64
	Comm      string
}

// guestProcs reads pid, ppid and comm of every process from the guest's /proc.
func guestProcs(t testing.TB, vm *testvm.VM) map[int64]procEntry {
	t.Helper()
	out, err := vm.Run("cat /proc/[0-9]*/stat 2>/dev/null; true")
	if err != nil {
		t.Fatal(err)
	}
	m := map[int64]procEntry{}
	for _, line := range strings.Split(out, "\n") {
		l, r := strings.IndexByte(line, '('), strings.LastIndexByte(line, ')')
		if l < 0 || r < l {
			continue
		}
		pid, err := strconv.ParseInt(strings.TrimSpace(line[:l]), 10, 64)
		if err != nil {
			continue
		}
		f := strings.Fields(line[r+1:])
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.ParseInt(f[1], 10, 64)
		m[pid] = procEntry{PID: pid, PPID: ppid, Comm: line[l+1 : r]}
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
