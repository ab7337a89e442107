package e2e

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/vmwatch/vmwatch/testvm"
)

// The backup benchmarks share one libvirt guest whose 1 GiB qcow2 data
// disk holds 512 MiB of random data (written host-side before boot, so
// that it is incompressible and fast to make) and 512 MiB never written.
var (
	benchDiskOnce sync.Once
	benchDiskVM   *testvm.VM
	benchDiskPath string
	benchDiskErr  error
)

const benchData = 512 << 20

func backupBenchGuest(b *testing.B) (*testvm.VM, string) {
	benchDiskOnce.Do(func() {
		if benchDiskErr = testvm.EnsureLibvirtd(); benchDiskErr != nil {
			return
		}
		dir, err := os.MkdirTemp("", "vmwatch-bench-backup-")
		if err != nil {
			benchDiskErr = err
			return
		}
		os.Chmod(dir, 0o777)
		raw := filepath.Join(dir, "seed.raw")
		f, err := os.Create(raw)
		if err != nil {
			benchDiskErr = err
			return
		}
		io.CopyN(f, rand.Reader, benchData)
		f.Truncate(1 << 30)
		f.Close()
		benchDiskPath = filepath.Join(dir, "data.qcow2")
		if out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, benchDiskPath).CombinedOutput(); err != nil {
			benchDiskErr = fmt.Errorf("qemu-img convert: %v: %s", err, out)
			return
		}
		os.Remove(raw)
		os.Chmod(benchDiskPath, 0o666)
		k, err := testvm.FetchKernel("6.12")
		if err != nil {
			benchDiskErr = err
			return
		}
		benchDiskVM, benchDiskErr = testvm.Start(context.Background(), testvm.Config{
			Kernel: k, Name: "vmwatch-bench-backup", Libvirt: true, Dir: dir,
			Modules: append(append([]string{}, testvm.DefaultModules...), k.DiskModules()...),
			Disks:   []testvm.Disk{{Path: benchDiskPath}},
		})
		if benchDiskErr == nil {
			guestsMu.Lock()
			guests["bench-backup"] = &guestEntry{vm: benchDiskVM}
			guestsMu.Unlock()
		}
	})
	if benchDiskErr != nil {
		b.Fatal(benchDiskErr)
	}
	return benchDiskVM, benchDiskPath
}

func runBackup(b *testing.B, args ...string) map[string]any {
	b.Helper()
	out, stderr, err := vmwatchRun(append(args, "-o", "json")...)
	if err != nil {
		b.Fatalf("vmwatch %v: %v: %s", args, err, stderr)
	}
	var p map[string]any
	if err := json.Unmarshal(out, &p); err != nil {
		b.Fatalf("vmwatch %v: %v: %s", args, err, out)
	}
	return p
}

func repoSize(b *testing.B, dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// BenchmarkBackup: a full backup into an empty repository (throughput over
// the 512 MiB of data), against qemu-img convert of the same disk to qcow2
// (what a copy of the image costs); an incremental backup after the guest
// changed 4 MiB (time and bytes read); a restore to a raw file; and the
// repository's size against the logical size of all its restore points.
func BenchmarkBackup(b *testing.B) {
	vm, disk := backupBenchGuest(b)
	dir := b.TempDir()
	target := "libvirt:" + vm.Name
	b.Run("full", func(b *testing.B) {
		b.SetBytes(benchData)
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			repo := filepath.Join(dir, fmt.Sprintf("full-%d", i))
			b.StartTimer()
			runBackup(b, "backup", "-t", target, "--repo", repo, "--no-check", "--full")
			b.StopTimer()
			os.RemoveAll(repo)
			b.StartTimer()
		}
	})
	b.Run("qemu-img-convert", func(b *testing.B) {
		b.SetBytes(benchData)
		for i := 0; i < b.N; i++ {
			out := filepath.Join(dir, "copy.qcow2")
			if o, err := exec.Command("qemu-img", "convert", "-U", "-O", "qcow2", disk, out).CombinedOutput(); err != nil {
				b.Fatalf("qemu-img convert: %v: %s", err, o)
			}
			b.StopTimer()
			os.Remove(out)
			b.StartTimer()
		}
	})
	repo := filepath.Join(dir, "chain")
	runBackup(b, "backup", "-t", target, "--repo", repo, "--no-check")
	b.Run("incremental-4MiB", func(b *testing.B) {
		var read float64
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			if _, err := vm.Run(fmt.Sprintf("dd if=/dev/urandom of=/dev/vda bs=1M count=4 seek=%d conv=fsync 2>/dev/null", 4*(i%200))); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			p := runBackup(b, "backup", "-t", target, "--repo", repo, "--no-check")
			read += p["read"].(float64)
		}
		b.ReportMetric(read/float64(b.N), "bytes-read/op")
		// dedup: the logical size of all restore points in the chain (each
		// a full 1 GiB image) against the repository's size on disk
		var pts []struct{ Size int64 }
		vmwatchJSON(b, &pts, "backups", "--repo", repo)
		var logical int64
		for _, p := range pts {
			logical += p.Size
		}
		b.ReportMetric(float64(logical)/float64(repoSize(b, repo)), "dedup-ratio")
		b.ReportMetric(float64(len(pts)), "points")
	})
	b.Run("restore-raw", func(b *testing.B) {
		var pts []struct{ ID string }
		vmwatchJSON(b, &pts, "backups", "--repo", repo)
		b.SetBytes(1 << 30)
		for i := 0; i < b.N; i++ {
			out := filepath.Join(dir, "restored.raw")
			if _, stderr, err := vmwatchRun("restore", "--repo", repo, "--point", pts[len(pts)-1].ID, "--to", out, "--force"); err != nil {
				b.Fatalf("restore: %v: %s", err, stderr)
			}
			b.StopTimer()
			os.Remove(out)
			b.StartTimer()
		}
	})
}
