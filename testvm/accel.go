package testvm

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// probeAccel decides between KVM and TCG: KVM when /dev/kvm opens and a
// guest under it gets as far as printing the kernel banner (nested KVM on
// some hosts hangs in the kernel's decompressor). The answer is cached.
func probeAccel(ctx context.Context, k *Kernel) string {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return "tcg"
	}
	f.Close()
	cache := filepath.Join(CacheDir(), "accel-"+k.Release)
	if b, err := os.ReadFile(cache); err == nil {
		if a := strings.TrimSpace(string(b)); a == "kvm" || a == "tcg" {
			return a
		}
	}
	result := "tcg"
	dir, err := os.MkdirTemp("", "vmwatch-kvm-probe-")
	if err != nil {
		return result
	}
	defer os.RemoveAll(dir)
	log := filepath.Join(dir, "console.log")
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", "-accel", "kvm", "-m", "256M",
		"-kernel", k.Vmlinuz, "-append", "console=ttyS0 earlyprintk=ttyS0", "-display", "none",
		"-nodefaults", "-no-reboot", "-serial", "file:"+log)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if cmd.Start() == nil {
		deadline := time.Now().Add(15 * time.Second)
		for time.Now().Before(deadline) {
			b, _ := os.ReadFile(log)
			if strings.Contains(string(b), "Linux version") {
				result = "kvm"
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
		cmd.Process.Kill()
		cmd.Wait()
	}
	os.MkdirAll(filepath.Dir(cache), 0o755)
	os.WriteFile(cache, []byte(result+"\n"), 0o644)
	return result
}
