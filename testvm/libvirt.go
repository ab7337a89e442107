package testvm

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"libvirt.org/go/libvirtxml"
)

// DomainXML is the libvirt domain of a test guest: direct kernel boot,
// q35 with ACPI and APIC (without them PCI interrupts fail), guest RAM in a
// shared memfd, the shell on a unix socket and the console in a file.
func (vm *VM) DomainXML(initrd string) (string, error) {
	dom := &libvirtxml.Domain{
		Type: "qemu", Name: vm.Name,
		Memory: &libvirtxml.DomainMemory{Value: uint(vm.MemoryMB), Unit: "MiB"},
		VCPU:   &libvirtxml.DomainVCPU{Value: uint(vm.CPUs)},
		OS: &libvirtxml.DomainOS{
			Type:   &libvirtxml.DomainOSType{Arch: "x86_64", Machine: vm.Machine, Type: "hvm"},
			Kernel: vm.Kernel.Vmlinuz, Initrd: initrd, Cmdline: strings.TrimSpace("console=ttyS1 panic=-1 loglevel=7 " + vm.Cmdline),
		},
		Features:      &libvirtxml.DomainFeatureList{ACPI: &libvirtxml.DomainFeature{}, APIC: &libvirtxml.DomainFeatureAPIC{}},
		MemoryBacking: &libvirtxml.DomainMemoryBacking{MemorySource: &libvirtxml.DomainMemorySource{Type: "memfd"}, MemoryAccess: &libvirtxml.DomainMemoryAccess{Mode: "shared"}},
		OnCrash:       "destroy",
		Devices: &libvirtxml.DomainDeviceList{
			Serials: []libvirtxml.DomainSerial{
				{Source: &libvirtxml.DomainChardevSource{UNIX: &libvirtxml.DomainChardevSourceUNIX{Mode: "bind", Path: vm.SerialPath}}, Target: &libvirtxml.DomainSerialTarget{Port: uintp(0)}},
				{Source: &libvirtxml.DomainChardevSource{File: &libvirtxml.DomainChardevSourceFile{Path: vm.ConsoleLog}}, Target: &libvirtxml.DomainSerialTarget{Port: uintp(1)}},
			},
		},
	}
	if vm.GuestAgent {
		dom.Devices.Channels = append(dom.Devices.Channels, libvirtxml.DomainChannel{
			Source: &libvirtxml.DomainChardevSource{UNIX: &libvirtxml.DomainChardevSourceUNIX{Mode: "bind"}},
			Target: &libvirtxml.DomainChannelTarget{VirtIO: &libvirtxml.DomainChannelTargetVirtIO{Name: "org.qemu.guest_agent.0"}},
		})
	}
	for i, d := range vm.Disks {
		f := d.Format
		if f == "" {
			f = "qcow2"
		}
		dom.Devices.Disks = append(dom.Devices.Disks, libvirtxml.DomainDisk{
			Device: "disk",
			Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: f},
			Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: d.Path}},
			Target: &libvirtxml.DomainDiskTarget{Dev: fmt.Sprintf("vd%c", 'a'+i), Bus: "virtio"},
		})
	}
	return dom.Marshal()
}

func uintp(v uint) *uint { return &v }

// bootLibvirt creates the guest as a transient domain and waits for its shell.
func (vm *VM) bootLibvirt(ctx context.Context, initrd string) error {
	vm.Accel = "tcg (libvirt)"
	// QEMU runs as libvirt's user: it must reach the files and create the sockets
	if err := os.Chmod(vm.Dir, 0o777); err != nil {
		return err
	}
	os.Chmod(initrd, 0o644)
	xml, err := vm.DomainXML(initrd)
	if err != nil {
		return err
	}
	p := filepath.Join(vm.Dir, "domain.xml")
	if err := os.WriteFile(p, []byte(xml), 0o644); err != nil {
		return err
	}
	Virsh("destroy", vm.Name) // a leftover of an earlier run
	if vm.Persistent {
		Virsh("undefine", "--checkpoints-metadata", vm.Name)
		if _, err := Virsh("define", p); err != nil {
			return err
		}
		return vm.StartDomain(ctx)
	}
	if _, err := Virsh("create", p); err != nil {
		return err
	}
	return vm.waitShell(ctx, "libvirt guest "+vm.Name, nil)
}

// StartDomain starts a defined (persistent) domain again and waits for its
// shell.
func (vm *VM) StartDomain(ctx context.Context) error {
	if vm.shell != nil {
		vm.shell.Close()
		vm.shell = nil
	}
	if _, err := Virsh("start", vm.Name); err != nil {
		return err
	}
	return vm.waitShell(ctx, "libvirt guest "+vm.Name, nil)
}

// Virsh runs virsh against qemu:///system and returns its output.
func Virsh(args ...string) (string, error) {
	out, err := exec.Command("virsh", append([]string{"-c", "qemu:///system"}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("virsh %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// virshQMP runs a QMP command through libvirt's monitor pass-through.
func virshQMP(domain, command string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": command}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	out, err := exec.Command("virsh", "-c", "qemu:///system", "qemu-monitor-command", domain, string(b)).Output()
	if err != nil {
		return nil, fmt.Errorf("virsh qemu-monitor-command %s %s: %w", domain, command, err)
	}
	var resp struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal(out, &resp); err != nil {
		return nil, err
	}
	return resp.Return, nil
}

// EnsureLibvirtd starts virtlogd and libvirtd (as root) unless libvirtd's
// socket answers already.
func EnsureLibvirtd() error {
	if _, err := Virsh("version"); err == nil {
		return nil
	}
	exec.Command("virtlogd", "-d").Run()
	if out, err := exec.Command("libvirtd", "-d").CombinedOutput(); err != nil {
		return fmt.Errorf("libvirtd -d: %v: %s (apt-get install libvirt-daemon-system)", err, out)
	}
	for i := 0; i < 50; i++ {
		if _, err := Virsh("version"); err == nil {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("libvirtd does not answer on qemu:///system")
}

// CreateImage makes an empty qcow2 image that libvirt's QEMU may open.
func CreateImage(path string, mb int) error {
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", path, fmt.Sprintf("%dM", mb)).CombinedOutput(); err != nil {
		return fmt.Errorf("qemu-img create %s: %v: %s", path, err, out)
	}
	return os.Chmod(path, 0o666)
}

// agentInit starts the guest agent on the virtio-serial port libvirt names
// org.qemu.guest_agent.0 (no udev: the port is found in sysfs).
const agentInit = `for p in /sys/class/virtio-ports/*; do
	[ "$(cat $p/name 2>/dev/null)" = org.qemu.guest_agent.0 ] && /usr/sbin/qemu-ga -v -d -m virtio-serial -p /dev/${p##*/} -l /tmp/qga.log -f /tmp/qga.pid -t /tmp
done
`

// agentFiles are qemu-ga and the libraries it links (ldd), for the
// initramfs.
func agentFiles() (map[string][]byte, error) {
	const bin = "/usr/sbin/qemu-ga"
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %v (apt-get install qemu-guest-agent)", bin, err)
	}
	files := map[string][]byte{}
	paths := []string{bin}
	for _, line := range strings.Split(string(out), "\n") {
		for _, f := range strings.Fields(line) {
			if strings.HasPrefix(f, "/") {
				paths = append(paths, f)
			}
		}
	}
	for _, p := range paths {
		b, err := os.ReadFile(p) // follows symlinks: the file under the link's name
		if err != nil {
			return nil, err
		}
		files[p] = b
	}
	return files, nil
}
