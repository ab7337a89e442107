// Command vmwatch-guest boots and stops the sample guests that `make demo`
// and manual testing use: a real Debian kernel under QEMU with a busybox
// initramfs, a QMP socket and a serial shell.
//
//	vmwatch-guest start [--kernel 6.1|6.12] [--dir DIR] [--memory MB] [--memfile PATH]
//	                    [--libvirt [--disk MB]]   (a persistent libvirt domain with a qcow2 data disk)
//	                    [--system]                (the real Debian system image instead of busybox)
//	vmwatch-guest image                           (build the cached Debian system image)
//	vmwatch-guest stop --dir DIR
//	vmwatch-guest run --dir DIR 'COMMAND'   (a command in the guest's shell)
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmwatch/vmwatch/testvm"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	series := fs.String("kernel", "6.1", "kernel series: 6.1 or 6.12")
	dir := fs.String("dir", "/run/vmwatch/demo", "directory for the guest's sockets, logs and pid file")
	mem := fs.Int("memory", 512, "guest memory in MiB")
	memfile := fs.String("memfile", "", "back guest RAM with this shared file (e.g. /dev/shm/vmwatch-demo)")
	name := fs.String("name", "demo", "guest name")
	cpu := fs.String("cpu", "", "QEMU CPU model (\"max\" offers 5-level paging)")
	lvirt := fs.Bool("libvirt", false, "run the guest as a persistent libvirt domain named --name (qemu:///system)")
	disk := fs.Int("disk", 0, "with --libvirt: a qcow2 data disk of this many MiB (vda in the guest)")
	agent := fs.Bool("agent", false, "with --libvirt: run the host's QEMU guest agent (qemu-ga) in the guest")
	system := fs.Bool("system", false, "boot the real Debian 12 system image (systemd, sshd, nginx, ...) instead of the busybox initramfs")
	fs.Parse(os.Args[2:])
	switch os.Args[1] {
	case "image":
		// build (or find) the cached system image, as `make deps` does
		im, err := testvm.EnsureSystemImage()
		check(err)
		fmt.Printf("system image: %s\n", im.Disk)
		for _, k := range im.Kernels {
			fmt.Printf("  kernel %s\n", k.Release)
		}
	case "start":
		k, err := testvm.FetchKernel(*series)
		check(err)
		check(os.MkdirAll(*dir, 0o755))
		cfg := testvm.Config{
			Kernel: k, Name: *name, MemoryMB: *mem, MemFile: *memfile, Dir: *dir, Detach: true, CPUModel: *cpu, System: *system,
		}
		if *system && *mem == 512 {
			cfg.MemoryMB = 2048
		}
		if *lvirt {
			check(testvm.EnsureLibvirtd())
			cfg.Libvirt, cfg.Persistent, cfg.MemFile, cfg.GuestAgent = true, true, "", *agent
			if *agent {
				cfg.Modules = append(append([]string{}, testvm.DefaultModules...), k.AgentModules()...)
			}
			if *disk > 0 {
				img := filepath.Join(*dir, "data.qcow2")
				check(testvm.CreateImage(img, *disk))
				cfg.Disks = []testvm.Disk{{Path: img}}
				if !*agent {
					cfg.Modules = append(append([]string{}, testvm.DefaultModules...), k.DiskModules()...)
				}
			}
		}
		vm, err := testvm.Start(context.Background(), cfg)
		check(err)
		if *lvirt {
			check(os.WriteFile(filepath.Join(*dir, "libvirt-domain"), []byte(*name+"\n"), 0o644))
			fmt.Printf("guest %s running as libvirt domain %s: kernel %s, %d MiB\n", *name, *name, k.Release, *mem)
			fmt.Printf("  target:       -t libvirt:%s\n  serial shell: %s\n  stop it with: vmwatch-guest stop --dir %s\n", *name, vm.SerialPath, *dir)
			vm.Release()
			return
		}
		fmt.Printf("guest %s running: kernel %s, %d MiB, %s, QEMU pid %d\n", *name, k.Release, vm.MemoryMB, vm.Accel, vm.PID())
		vm.Release()
		fmt.Printf("  QMP socket:   %s\n  serial shell: %s\n  console log:  %s\n", vm.QMPPath, vm.SerialPath, vm.ConsoleLog)
		fmt.Printf("  stop it with: vmwatch-guest stop --dir %s\n", *dir)
	case "stop":
		check(testvm.StopDir(*dir))
	case "run":
		if fs.NArg() == 0 {
			usage()
		}
		sh, err := testvm.DialShell(filepath.Join(*dir, "shell.sock"))
		check(err)
		out, err := sh.Run(strings.Join(fs.Args(), " "), 60*time.Second)
		fmt.Print(out)
		check(err)
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: vmwatch-guest start|stop|run|image [flags]")
	os.Exit(2)
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmwatch-guest:", err)
		os.Exit(1)
	}
}
