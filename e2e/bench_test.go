package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmwatch/vmwatch/detect"
	"github.com/vmwatch/vmwatch/linux"
	"github.com/vmwatch/vmwatch/target"
	"github.com/vmwatch/vmwatch/testvm"
)

// benchGuests are the guests the benchmarks run on.
func benchGuests(b *testing.B) []struct {
	name string
	vm   *testvm.VM
} {
	large := guest(b, "large-6.12", func(k *testvm.Kernel) testvm.Config {
		return testvm.Config{MemoryMB: 4096, MemFile: fmt.Sprintf("/dev/shm/vmwatch-e2e-%d-large", os.Getpid())}
	}, "6.12")
	return []struct {
		name string
		vm   *testvm.VM
	}{
		{"512MiB-6.1", standard(b, "6.1")},
		{"512MiB-6.12", standard(b, "6.12")},
		{"4GiB-6.12", large},
	}
}

type benchSource struct {
	name   string
	target string
	opt    target.Options
}

// benchSources lists the memory sources of a guest; the ELF dump is
// written once per guest.
func benchSources(b *testing.B, vm *testvm.VM) []benchSource {
	dump := filepath.Join(os.TempDir(), fmt.Sprintf("vmwatch-bench-%d-%s.elf", os.Getpid(), vm.Name))
	if _, err := os.Stat(dump); err != nil {
		if _, err := vm.QMP("dump-guest-memory", map[string]any{"paging": false, "protocol": "file:" + dump}); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.Remove(dump) })
	}
	return []benchSource{
		{"qmp-shared-memory", "qmp:" + vm.QMPPath, target.Options{}},
		{"qmp-process_vm_readv", "qmp:" + vm.QMPPath, target.Options{NoDirect: true}},
		{"memfile", "memfile:" + vm.MemFile, target.Options{}},
		{"elf-dump", "dump:" + dump, target.Options{}},
	}
}

// BenchmarkBootstrap: cold start, as the command line does it: open the
// target, locate the kernel, rebuild kallsyms, load BTF.
func BenchmarkBootstrap(b *testing.B) {
	for _, g := range benchGuests(b) {
		for _, src := range benchSources(b, g.vm) {
			b.Run(g.name+"/"+src.name, func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					tg, err := target.Open(context.Background(), src.target, src.opt)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := linux.Open(tg.Mem, linux.Options{CPUs: tg.CPUs}); err != nil {
						b.Fatal(err)
					}
					tg.Close()
				}
			})
		}
	}
}

// BenchmarkWarm: one view on an already bootstrapped kernel, with the
// page-table cache dropped before each read (the guest keeps running).
func BenchmarkWarm(b *testing.B) {
	views := []struct {
		name string
		fn   func(k *linux.Kernel) (int, error)
	}{
		{"ps", func(k *linux.Kernel) (int, error) { p, err := k.Processes(linux.PSOptions{}); return len(p), err }},
		{"lsmod", func(k *linux.Kernel) (int, error) { m, err := k.Modules(); return len(m), err }},
		{"sockets", func(k *linux.Kernel) (int, error) { s, err := k.Sockets(); return len(s), err }},
	}
	for _, g := range benchGuests(b) {
		for _, src := range benchSources(b, g.vm) {
			tg, err := target.Open(context.Background(), src.target, src.opt)
			if err != nil {
				b.Fatal(err)
			}
			k, err := linux.Open(tg.Mem, linux.Options{CPUs: tg.CPUs})
			if err != nil {
				b.Fatal(err)
			}
			for _, v := range views {
				b.Run(v.name+"/"+g.name+"/"+src.name, func(b *testing.B) {
					n := 0
					for i := 0; i < b.N; i++ {
						k.Flush()
						if n, err = v.fn(k); err != nil {
							b.Fatal(err)
						}
					}
					b.ReportMetric(float64(n), "objects")
				})
			}
			tg.Close()
		}
	}
}

// BenchmarkCommand: the whole `vmwatch ps` process, with its peak RSS.
func BenchmarkCommand(b *testing.B) {
	for _, g := range benchGuests(b) {
		for _, src := range benchSources(b, g.vm) {
			b.Run("ps/"+g.name+"/"+src.name, func(b *testing.B) {
				// GNU time reports the peak RSS of its child; a child of this
				// test process would inherit the test's own high-water mark.
				rssFile := filepath.Join(b.TempDir(), "rss")
				var maxRSS int64
				for i := 0; i < b.N; i++ {
					args := []string{"-f", "%M", "-o", rssFile, vmwatchBin, "ps", "-t", src.target}
					if src.opt.NoDirect {
						args = append(args, "--no-direct")
					}
					if out, err := exec.Command("/usr/bin/time", args...).CombinedOutput(); err != nil {
						b.Fatalf("%v: %s", err, out)
					}
					kb, err := os.ReadFile(rssFile)
					if err != nil {
						b.Fatal(err)
					}
					if v, _ := strconv.ParseInt(strings.TrimSpace(string(kb)), 10, 64); v > maxRSS {
						maxRSS = v
					}
				}
				b.ReportMetric(float64(maxRSS)/1024, "peak-RSS-MiB")
			})
		}
	}
}

// BenchmarkCheck: every detector but the memory scan on a bootstrapped
// kernel (warm), the memory scan alone, and the whole `vmwatch check`
// command (cold).
func BenchmarkCheck(b *testing.B) {
	for _, g := range benchGuests(b) {
		tg, err := target.Open(context.Background(), "qmp:"+g.vm.QMPPath, target.Options{})
		if err != nil {
			b.Fatal(err)
		}
		k, err := linux.Open(tg.Mem, linux.Options{CPUs: tg.CPUs})
		if err != nil {
			b.Fatal(err)
		}
		rules, _ := detect.DefaultRules()
		b.Run("warm/"+g.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				k.Flush()
				r, err := detect.Run(context.Background(), k, detect.Options{Rules: rules})
				if err != nil || len(r.Errors) > 0 {
					b.Fatal(err, r.Errors)
				}
			}
		})
		b.Run("memory-scan/"+g.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				k.Flush()
				if _, err := detect.Run(context.Background(), k, detect.Options{Only: []string{"hidden-process-scan"}}); err != nil {
					b.Fatal(err)
				}
			}
		})
		tg.Close()
		b.Run("cold-command/"+g.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if out, err := exec.Command(vmwatchBin, "check", "-t", "qmp:"+g.vm.QMPPath).CombinedOutput(); err != nil {
					b.Fatalf("%v: %s", err, out)
				}
			}
		})
	}
}

// BenchmarkServe10: one daemon watches 10 guests at the default intervals
// (10 s) for a minute; it reports the daemon's CPU use, its peak resident
// memory and the VMs' cycle times. Run with -benchtime 1x.
func BenchmarkServe10(b *testing.B) {
	var qmps, names []string
	for i := 0; i < 10; i++ {
		series := Kernels[i%2]
		vm := guest(b, fmt.Sprintf("bench10-%d", i), func(k *testvm.Kernel) testvm.Config { return testvm.Config{} }, series)
		names = append(names, fmt.Sprintf("vm%d", i))
		qmps = append(qmps, "--qmp", names[i]+"="+vm.QMPPath)
	}
	for n := 0; n < b.N; n++ {
		state := b.TempDir()
		port := freePort(b)
		cmd := exec.Command(vmwatchBin, append([]string{"serve", "--no-libvirt", "--state-dir", state, "--listen", fmt.Sprintf("127.0.0.1:%d", port)}, qmps...)...)
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		url := fmt.Sprintf("http://127.0.0.1:%d", port)
		time.Sleep(15 * time.Second) // every VM bootstrapped and checked once
		cpu0 := procCPU(b, cmd.Process.Pid)
		const window = 60 * time.Second
		time.Sleep(window)
		cpu := procCPU(b, cmd.Process.Pid) - cpu0
		hwm := procHWM(b, cmd.Process.Pid)
		// guest RAM the daemon has read through a shared mapping counts in
		// its RSS (RssShmem) but is QEMU's memory; RssAnon is the daemon's own
		anon := procStatus(b, cmd.Process.Pid, "RssAnon:")
		shm := procStatus(b, cmd.Process.Pid, "RssShmem:") + procStatus(b, cmd.Process.Pid, "RssFile:")
		vms, err := serveVMs(url)
		// stop the daemon before any Fatal, which would leave it running
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if err != nil {
			b.Fatal(err)
		}
		// a daemon that watches fewer VMs than it was given (none, when
		// /api/vms failed or every --qmp was dropped) must not pass as a
		// fast one: its CPU, memory and cycle times are not the benchmark's
		got := map[string]bool{}
		for _, v := range vms {
			got[v.Name] = true
		}
		var missing []string
		for _, name := range names {
			if !got[name] {
				missing = append(missing, name)
			}
		}
		if len(missing) > 0 {
			b.Fatalf("serve watches %d of the %d VMs it was started with; missing: %s", len(vms), len(names), strings.Join(missing, ", "))
		}
		var sum, worst float64
		for _, v := range vms {
			if v.State != "running" || v.Kernel == "" {
				b.Errorf("%s: %s %s", v.Name, v.State, v.Error)
			}
			sum += v.CycleMs
			worst = max(worst, v.CycleMs)
		}
		b.ReportMetric(cpu/window.Seconds()*100, "daemon-CPU-%")
		b.ReportMetric(float64(hwm)/(1<<20), "peak-RSS-MiB")
		b.ReportMetric(float64(anon)/(1<<20), "anon-RSS-MiB")
		b.ReportMetric(float64(shm)/(1<<20), "shared-RSS-MiB")
		b.ReportMetric(sum/float64(len(vms)), "cycle-ms-mean")
		b.ReportMetric(worst, "cycle-ms-max")
		b.ReportMetric(float64(len(vms)), "VMs")
	}
}

// serveVMs is the VM list of the daemon at url (GET /api/vms).
func serveVMs(url string) ([]apiVM, error) {
	resp, err := http.Get(url + "/api/vms")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s/api/vms: %s", url, resp.Status)
	}
	var vms []apiVM
	if err := json.NewDecoder(resp.Body).Decode(&vms); err != nil {
		return nil, fmt.Errorf("GET %s/api/vms: %w", url, err)
	}
	return vms, nil
}

// procCPU is a process's user+system CPU time in seconds.
func procCPU(b *testing.B, pid int) float64 {
	s, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(s)[strings.LastIndexByte(string(s), ')')+1:])
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100
}

// procHWM is a process's peak resident memory in bytes.
func procHWM(b *testing.B, pid int) uint64 { return procStatus(b, pid, "VmHWM:") }

// procStatus is one size field of /proc/PID/status, in bytes.
func procStatus(b *testing.B, pid int, field string) uint64 {
	s, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(s), "\n") {
		if v, ok := strings.CutPrefix(l, field); ok {
			kb, _ := strconv.ParseUint(strings.Fields(v)[0], 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// BenchmarkSystemGuest: the real Debian system guest (systemd, sshd,
// nginx, node, python3…; about 100 processes, QEMU's default CPU, 6.1):
// ps, every detector but the memory scan, the memory scan, and YARA over
// kernel and process memory, warm (in this process, bootstrapped, the
// page-table cache dropped before each run) and as whole `vmwatch`
// processes. YARA needs the yara build tag (`make bench` sets it).
func BenchmarkSystemGuest(b *testing.B) {
	vm := systemGuest(b, "default")
	tg, err := target.Open(context.Background(), "qmp:"+vm.QMPPath, target.Options{})
	if err != nil {
		b.Fatal(err)
	}
	// QEMU serves one QMP client at a time: the commands below connect
	// only once this connection is closed
	closed := false
	defer func() {
		if !closed {
			tg.Close()
		}
	}()
	k, err := linux.Open(tg.Mem, linux.Options{CPUs: tg.CPUs})
	if err != nil {
		b.Fatal(err)
	}
	rules, _ := detect.DefaultRules()
	yr, err := detect.CompileYara("testdata/test.yar")
	if err != nil {
		b.Fatalf("YARA rules: %v (run with -tags yara)", err)
	}
	warm := []struct {
		name string
		opt  detect.Options
	}{
		{"check", detect.Options{Rules: rules}},
		{"check-scan", detect.Options{Only: []string{"hidden-process-scan"}}},
		{"yara", detect.Options{Only: []string{"yara"}, Yara: yr}},
	}
	b.Run("warm/ps", func(b *testing.B) {
		n := 0
		for i := 0; i < b.N; i++ {
			k.Flush()
			p, err := k.Processes(linux.PSOptions{})
			if err != nil {
				b.Fatal(err)
			}
			n = len(p)
		}
		b.ReportMetric(float64(n), "processes")
	})
	for _, w := range warm {
		b.Run("warm/"+w.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				k.Flush()
				r, err := detect.Run(context.Background(), k, w.opt)
				if err != nil || len(r.Errors) > 0 {
					b.Fatal(err, r.Errors)
				}
			}
		})
	}
	tg.Close()
	closed = true
	tgt := "qmp:" + vm.QMPPath
	for _, c := range []struct {
		name string
		args []string
	}{
		{"ps", []string{"ps", "-t", tgt}},
		{"check", []string{"check", "-t", tgt}},
		{"check-scan", []string{"check", "-t", tgt, "--scan"}},
		{"yara", []string{"check", "-t", tgt, "--only", "yara", "--yara", "testdata/test.yar"}},
	} {
		b.Run("command/"+c.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if out, err := exec.Command(vmwatchBin, c.args...).CombinedOutput(); err != nil {
					b.Fatalf("vmwatch %s: %v: %s", strings.Join(c.args, " "), err, out)
				}
			}
		})
	}
}

// BenchmarkViews times the views of issue 10 on the Debian system guest,
// over every process: warm (in-process, page-table cache dropped before
// each run) and as whole vmwatch processes.
func BenchmarkViews(b *testing.B) {
	vm := systemGuest(b, "default")
	tg, err := target.Open(context.Background(), "qmp:"+vm.QMPPath, target.Options{})
	if err != nil {
		b.Fatal(err)
	}
	k, err := linux.Open(tg.Mem, linux.Options{CPUs: tg.CPUs})
	if err != nil {
		tg.Close()
		b.Fatal(err)
	}
	perProcess := func(view func(t linux.Value) (int, error)) func() (int, error) {
		return func() (int, error) {
			tasks, err := k.ProcessTasks(nil)
			n := 0
			for _, t := range tasks {
				m, _ := view(t)
				n += m
			}
			return n, err
		}
	}
	views := []struct {
		name, unit string
		run        func() (int, error)
		cmd        []string // the command, when not "vmwatch NAME"
	}{
		{"maps", "mappings", perProcess(func(t linux.Value) (int, error) { m, err := k.Maps(t); return len(m), err }), nil},
		{"lsof", "fds", perProcess(func(t linux.Value) (int, error) { m, err := k.FDs(t); return len(m), err }), nil},
		{"envars", "variables", perProcess(func(t linux.Value) (int, error) {
			mm, err := t.Field("mm")
			if err != nil {
				return 0, err
			}
			p, _ := mm.Ptr()
			if p == 0 {
				return 0, nil
			}
			e, err := k.Environ(p)
			return len(e), err
		}), nil},
		{"caps", "processes", perProcess(func(t linux.Value) (int, error) { _, err := k.Caps(t); return 1, err }), nil},
		{"libraries", "objects", perProcess(func(t linux.Value) (int, error) { m, err := k.Libraries(t); return len(m), err }), nil},
		{"bash", "bash-processes", perProcess(func(t linux.Value) (int, error) {
			if !k.IsBash(t) {
				return 0, nil
			}
			_, err := k.BashHistory(t)
			return 1, err
		}), nil},
		{"mounts", "namespaces", func() (int, error) { m, err := k.Mounts(nil); return len(m), err }, nil},
		{"ifaces", "namespaces", func() (int, error) { m, err := k.Interfaces(); return len(m), err }, nil},
		{"iomem", "resources", func() (int, error) { m, err := k.Resources(false); return len(m), err }, nil},
		{"ptrace", "traced", func() (int, error) { m, err := k.Ptraces(); return len(m), err }, nil},
		// every table kernel-callbacks reads, and the check itself
		{"kernel-callbacks", "pointers", func() (int, error) {
			n := 0
			var errs []error
			count := func(m int, err error) { n += m; errs = append(errs, err) }
			hooks, err := k.NetfilterHooks()
			count(len(hooks), err)
			nots, err := k.Notifiers()
			count(len(nots), err)
			for _, read := range []func() ([]linux.OpsPointer, error){k.TTYOps, k.ProcOps, k.Tracepoints, k.LSMHooks} {
				ps, err := read()
				count(len(ps), err)
			}
			return n, errors.Join(errs...)
		}, []string{"check", "--only", "kernel-callbacks"}},
		// the core of systemd (pid 1), written to a file
		{"core", "pages", func() (int, error) {
			tasks, err := k.ProcessTasks([]int64{1})
			if len(tasks) == 0 {
				return 0, err
			}
			f, err := os.Create(filepath.Join(b.TempDir(), "core"))
			if err != nil {
				return 0, err
			}
			defer f.Close()
			info, err := k.WriteCore(tasks[0], f, 0)
			return int(info.Present + info.Cached), err
		}, []string{"extract", "core", "1", "--to", filepath.Join(b.TempDir(), "core.cmd")}},
	}
	for _, v := range views {
		b.Run("warm/"+v.name, func(b *testing.B) {
			n := 0
			for i := 0; i < b.N; i++ {
				k.Flush()
				var err error
				if n, err = v.run(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(n), v.unit)
		})
	}
	tg.Close()
	tgt := "qmp:" + vm.QMPPath
	for _, v := range views {
		b.Run("command/"+v.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				args := []string{v.name}
				if v.cmd != nil {
					args = v.cmd
				}
				if out, err := exec.Command(vmwatchBin, append(args, "-t", tgt)...).CombinedOutput(); err != nil {
					b.Fatalf("vmwatch %s: %v: %s", v.name, err, out)
				}
			}
		})
	}
}
