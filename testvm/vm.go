package testvm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/vmwatch/vmwatch/hv/qmp"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Config describes a test guest.
type Config struct {
	Kernel   *Kernel
	Name     string // used in paths; default "guest"
	MemoryMB int    // default 512
	CPUs     int    // default 1
	Machine  string // default "q35"
	CPUModel string // default QEMU's (qemu64); "max" offers LA57 (5-level paging)
	// MemFile, when set, backs guest RAM with this file (memory-backend-file,
	// share=on), e.g. /dev/shm/vmwatch-NAME.
	MemFile string
	Modules []string // default: dummy, loop
	// Files are extra files for the initramfs (path -> content, mode 0755).
	Files map[string][]byte
	// InitExtra is shell run by /init after the standard workload starts.
	InitExtra string
	// Dir holds sockets, logs and the initramfs; default: a new temp dir.
	Dir string
	// Accel is "tcg", "kvm" or "" (probe: KVM when it boots, else TCG).
	Accel string
	// BootTimeout bounds the wait for the serial shell (default 90 s).
	BootTimeout time.Duration
	// Detach lets QEMU outlive this process (for `make demo`); stop it with
	// StopDir.
	Detach bool
	// Libvirt runs the guest as a transient libvirt domain (named Name,
	// type qemu, guest RAM in a shared memfd) instead of starting QEMU.
	Libvirt bool
	// Cmdline is appended to the kernel command line (e.g. "nokaslr").
	Cmdline string
	// Disks are attached as virtio disks vda, vdb, ... (libvirt guests
	// only); the guest needs the virtio_blk module in Modules.
	Disks []Disk
	// GuestAgent runs the host's QEMU guest agent (Debian's qemu-ga, with
	// its libraries) in the guest on a virtio-serial channel (libvirt
	// guests; the guest needs AgentModules). It logs to /tmp/qga.log.
	GuestAgent bool
	// Persistent defines the libvirt domain (virsh define + start) instead
	// of creating a transient one, so that it keeps its checkpoints across
	// restarts; Stop undefines it.
	Persistent bool
	// System boots the real Debian system image (EnsureSystemImage) from a
	// copy-on-write overlay instead of the busybox initramfs: systemd and
	// its services, with the distribution's own initramfs, a NIC on QEMU's
	// user network with restrict=on (DHCP, no route out). Files are
	// unpacked into it (from a tar on a second disk, vdb) and InitExtra
	// runs in its shell once systemd has started everything. Modules are
	// not used: udev loads what the system needs. Defaults: 2 GiB, 2 vCPUs.
	System bool
}

// Disk is a disk image of a libvirt test guest.
type Disk struct {
	Path   string // an existing image
	Format string // qcow2 (default) or raw
}

// VM is a running test guest.
type VM struct {
	Config
	QMPPath string
	// ControlPath is a second QMP socket for the test harness, so that a
	// test can pause or dump the guest while vmwatch holds QMPPath.
	ControlPath string
	SerialPath  string
	ConsoleLog  string
	Accel       string
	cmd         *exec.Cmd
	exited      chan struct{}
	shell       *Shell
	ownDir      bool
}

// DefaultModules are loaded by every test guest: real modules of the
// kernel package under test.
var DefaultModules = []string{"dummy", "loop"}

// The init script: mount the usual file systems, load the modules, start a
// known workload (TCP listeners, a UDP socket, an established TCP
// connection, sleepers), then keep a shell on ttyS0 for the tests. The
// kernel console is ttyS1 (a log file) so it never mixes with the shell.
// shellMarker goes to the console once the guest's shell reads its tty
// (initScript prints it).
const shellMarker = "vmwatch-guest shell up"

const initScript = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
hostname vmwatch-guest
for m in /lib/modules/*.ko; do insmod "$m" || echo "insmod $m failed"; done
ip link set lo up
ip link add dummy0 type dummy 2>/dev/null
ip addr add 10.99.0.1/24 dev dummy0 2>/dev/null
ip link set dummy0 up 2>/dev/null
# workload: TCP listeners, a UDP socket, an established connection, sleepers
mkdir -p /srv/www /var/lib/misc && echo vmwatch > /srv/www/index.html
nc -l -p 8080 </dev/null >/dev/null &
httpd -p 8081 -h /srv/www
touch /var/lib/misc/udhcpd.leases
printf 'interface dummy0\nstart 10.99.0.10\nend 10.99.0.20\n' > /etc/udhcpd.conf
udhcpd /etc/udhcpd.conf
# a connection that stays up (httpd would close an idle one after 60 s)
sleep 2000000 | nc -l -p 8082 >/dev/null &
usleep 300000
sleep 1000000 | nc 127.0.0.1 8082 >/dev/null &
sleep 1000001 &
sleep 1000002 &
%s
# the test shell: ignore modem lines so a host disconnect does not hang up the tty
stty -F /dev/ttyS0 clocal -hupcl -echo -isig
echo "vmwatch-guest ready" > /dev/console
while true; do
	# a pipe, not the tty, as stdin: the shell is not interactive (no prompt,
	# no echo). The tty is open before the marker goes out: the host sends
	# nothing before it, since bytes that reach the UART before the port is
	# opened are cut when the driver clears the FIFO, and half a line (a
	# stray quote) would leave the shell misparsing every later command.
	setsid sh -c 'exec </dev/ttyS0; echo "vmwatch-guest shell up" > /dev/console; cat | sh >/dev/ttyS0 2>&1'
done
`

// Start boots a guest and waits until its shell answers.
func Start(ctx context.Context, cfg Config) (*VM, error) {
	if cfg.Kernel == nil {
		return nil, errors.New("testvm: no kernel")
	}
	if cfg.Name == "" {
		cfg.Name = "guest"
	}
	if cfg.MemoryMB == 0 {
		cfg.MemoryMB = 512
		if cfg.System {
			cfg.MemoryMB = 2048
		}
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 1
		if cfg.System {
			cfg.CPUs = 2
		}
	}
	if cfg.Machine == "" {
		cfg.Machine = "q35"
	}
	if cfg.Modules == nil {
		cfg.Modules = DefaultModules
	}
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = 90 * time.Second
		if cfg.System {
			cfg.BootTimeout = 300 * time.Second
		}
	}
	vm := &VM{Config: cfg}
	if vm.Dir == "" {
		d, err := os.MkdirTemp("", "vmwatch-"+cfg.Name+"-")
		if err != nil {
			return nil, err
		}
		vm.Dir, vm.ownDir = d, true
	}
	vm.QMPPath = filepath.Join(vm.Dir, "qmp.sock")
	vm.ControlPath = filepath.Join(vm.Dir, "control.sock")
	vm.SerialPath = filepath.Join(vm.Dir, "shell.sock")
	vm.ConsoleLog = filepath.Join(vm.Dir, "console.log")
	if cfg.MemFile != "" {
		os.WriteFile(filepath.Join(vm.Dir, "memfile"), []byte(cfg.MemFile+"\n"), 0o644)
	}
	if cfg.System {
		if cfg.Libvirt || cfg.GuestAgent {
			return nil, errors.New("testvm: system guests run under plain QEMU (no libvirt, no guest agent yet)")
		}
		if err := vm.bootSystem(ctx); err != nil {
			vm.Stop()
			return nil, err
		}
		return vm, nil
	}
	initrd := filepath.Join(vm.Dir, "initrd.cpio")
	if cfg.GuestAgent {
		files, err := agentFiles()
		if err != nil {
			return nil, err
		}
		all := map[string][]byte{}
		for k, v := range cfg.Files {
			all[k] = v
		}
		for k, v := range files {
			all[k] = v
		}
		cfg.Files = all
		cfg.InitExtra = agentInit + cfg.InitExtra
		vm.Files, vm.InitExtra = cfg.Files, cfg.InitExtra
	}
	err := BuildInitramfs(initrd, InitramfsSpec{
		Kernel: cfg.Kernel, Modules: cfg.Modules, Files: cfg.Files,
		Init: fmt.Sprintf(initScript, cfg.InitExtra),
	})
	if err != nil {
		return nil, err
	}
	if cfg.Libvirt {
		if err := vm.bootLibvirt(ctx, initrd); err != nil {
			vm.Stop()
			return nil, err
		}
		return vm, nil
	}
	accel := vm.accel(ctx)
	if err := vm.boot(ctx, accel, vm.qemuArgs(accel, vm.Kernel.Vmlinuz, initrd, "console=ttyS1 panic=-1 loglevel=7")); err != nil {
		vm.Stop()
		return nil, err
	}
	return vm, nil
}

func (vm *VM) accel(ctx context.Context) string {
	if vm.Config.Accel != "" {
		return vm.Config.Accel
	}
	if a := os.Getenv("VMWATCH_ACCEL"); a != "" {
		return a
	}
	return probeAccel(ctx, vm.Kernel)
}

// bootSystem boots the Debian system image: an overlay of the cached
// image, the image's own kernel and initramfs of the release under test.
func (vm *VM) bootSystem(ctx context.Context) error {
	im, err := EnsureSystemImage()
	if err != nil {
		return err
	}
	vmlinuz, initrd, err := im.Boot(vm.Kernel.Release)
	if err != nil {
		return err
	}
	overlay := filepath.Join(vm.Dir, "root.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", im.Disk, "-F", "raw", overlay).CombinedOutput(); err != nil {
		return fmt.Errorf("qemu-img create overlay of %s: %v: %s", im.Disk, err, out)
	}
	tarDisk := filepath.Join(vm.Dir, "files.tar")
	if err := filesTar(tarDisk, vm.Files); err != nil {
		return err
	}
	accel := vm.accel(ctx)
	args := vm.qemuArgs(accel, vmlinuz, initrd, "root=/dev/vda rw console=ttyS1 panic=-1 loglevel=6")
	args = append(args,
		"-drive", "file="+overlay+",if=virtio,format=qcow2,cache=unsafe",
		"-drive", "file="+tarDisk+",if=virtio,format=raw,readonly=on",
		"-netdev", "user,id=net0,restrict=on", "-device", "virtio-net-pci,netdev=net0")
	if err := vm.boot(ctx, accel, args); err != nil {
		return err
	}
	// systemd has finished when is-system-running stops saying "starting"
	deadline := time.Now().Add(vm.BootTimeout)
	var st string
	for time.Now().Before(deadline) {
		st, _ = vm.RunTimeout("systemctl is-system-running --wait", time.Until(deadline))
		if st = strings.TrimSpace(st); st != "starting" && st != "initializing" && st != "" {
			break
		}
	}
	if st != "running" {
		failed, _ := vm.Run("systemctl --failed --no-legend --plain; journalctl -b -p err --no-pager | tail -n 20")
		return fmt.Errorf("system guest %s (%s): systemd says %q, not running; %s", vm.Name, vm.Kernel.Release, st, strings.TrimSpace(failed))
	}
	if len(vm.Files) > 0 {
		if out, err := vm.Run("tar -xf /dev/vdb -C / --no-same-owner"); err != nil {
			return fmt.Errorf("system guest %s: unpack files: %v: %s", vm.Name, err, out)
		}
	}
	if strings.TrimSpace(vm.InitExtra) != "" {
		if out, err := vm.RunTimeout(vm.InitExtra, 2*time.Minute); err != nil {
			return fmt.Errorf("system guest %s: start the workload: %v: %s", vm.Name, err, out)
		}
	}
	return nil
}

func (vm *VM) qemuArgs(accel, kernel, initrd, cmdline string) []string {
	machine := vm.Machine
	args := []string{
		"-name", vm.Name,
		"-accel", accel,
		"-smp", strconv.Itoa(vm.CPUs),
		"-m", fmt.Sprintf("%dM", vm.MemoryMB),
		"-kernel", kernel,
		"-initrd", initrd,
		"-append", strings.TrimSpace(cmdline + " " + vm.Cmdline),
		"-display", "none", "-nodefaults", "-no-reboot",
		"-qmp", "unix:" + vm.QMPPath + ",server=on,wait=off",
		"-qmp", "unix:" + vm.ControlPath + ",server=on,wait=off",
		"-serial", "unix:" + vm.SerialPath + ",server=on,wait=off",
		"-serial", "file:" + vm.ConsoleLog,
		"-pidfile", filepath.Join(vm.Dir, "qemu.pid"),
	}
	if vm.CPUModel != "" {
		args = append(args, "-cpu", vm.CPUModel)
	}
	if vm.MemFile != "" {
		args = append(args, "-object", fmt.Sprintf("memory-backend-file,id=mem,size=%dM,mem-path=%s,share=on", vm.MemoryMB, vm.MemFile))
		machine += ",memory-backend=mem"
	}
	return append(args, "-machine", machine)
}

func (vm *VM) boot(ctx context.Context, accel string, args []string) error {
	vm.Accel = accel
	vm.cmd = exec.Command("qemu-system-x86_64", args...)
	logf, err := os.Create(filepath.Join(vm.Dir, "qemu.log"))
	if err != nil {
		return err
	}
	vm.cmd.Stdout, vm.cmd.Stderr = logf, logf
	vm.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if !vm.Detach {
		vm.cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	if err := vm.cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start qemu-system-x86_64 (apt-get install qemu-system-x86): %w", err)
	}
	vm.exited = make(chan struct{})
	go func() { vm.cmd.Wait(); logf.Close(); close(vm.exited) }()
	return vm.waitShell(ctx, fmt.Sprintf("guest %s (%s, %s)", vm.Name, vm.Kernel.Release, accel), vm.exited)
}

// waitShell waits until the guest's serial shell answers, the boot
// timeout passes, or exited (when not nil) closes because QEMU stopped.
func (vm *VM) waitShell(ctx context.Context, what string, exited <-chan struct{}) error {
	deadline := time.Now().Add(vm.BootTimeout)
	// the console of a libvirt guest is appended to across boots: only what
	// this boot writes counts
	var from int64
	if fi, err := os.Stat(vm.ConsoleLog); err == nil {
		from = fi.Size()
	}
	up := false
	for {
		if time.Now().After(deadline) {
			extra := ""
			if vm.Libvirt {
				st, _ := Virsh("domstate", "--reason", vm.Name)
				lg, _ := os.ReadFile("/var/log/libvirt/qemu/" + vm.Name + ".log")
				if len(lg) > 1500 {
					lg = lg[len(lg)-1500:]
				}
				extra = fmt.Sprintf("; domain state: %s; QEMU log: %s", strings.TrimSpace(string(st)), lg)
			}
			return fmt.Errorf("%s did not boot within %v; console: %s%s", what, vm.BootTimeout, vm.consoleTail(), extra)
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(filepath.Join(vm.Dir, "qemu.log"))
			return fmt.Errorf("qemu exited during boot: %s; console: %s", strings.TrimSpace(string(b)), vm.consoleTail())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if !up {
			if b, err := os.ReadFile(vm.ConsoleLog); err == nil && int64(len(b)) >= from && strings.Contains(string(b[from:]), shellMarker) {
				up = true
			} else {
				continue
			}
		}
		if vm.shell == nil {
			sh, err := DialShell(vm.SerialPath)
			if err != nil {
				continue
			}
			vm.shell = sh
		}
		if _, err := vm.shell.Run("echo ok", 2*time.Second); err == nil {
			return nil
		}
	}
}

func (vm *VM) consoleTail() string {
	b, _ := os.ReadFile(vm.ConsoleLog)
	s := string(b)
	if len(s) > 2000 {
		s = s[len(s)-2000:]
	}
	return s
}

// PID is the QEMU process id.
func (vm *VM) PID() int {
	if vm.Libvirt {
		b, _ := os.ReadFile("/run/libvirt/qemu/" + vm.Name + ".pid")
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		return pid
	}
	if vm.cmd == nil || vm.cmd.Process == nil {
		return 0
	}
	return vm.cmd.Process.Pid
}

// Run runs a shell command in the guest and returns its output (stdout and
// stderr). A non-zero exit status is an error that carries the output.
func (vm *VM) Run(command string) (string, error) {
	return vm.RunTimeout(command, 30*time.Second)
}

// RunTimeout is Run with a deadline.
func (vm *VM) RunTimeout(command string, d time.Duration) (string, error) {
	if vm.shell == nil {
		return "", errors.New("guest shell not connected")
	}
	out, err := vm.shell.Run(command, d)
	if err != nil && vm.shell.Broken() {
		// the guest crashed or QEMU exited: its console and QEMU's log say why
		state := "QEMU still runs"
		if vm.exited != nil {
			select {
			case <-vm.exited:
				state = "QEMU exited: " + vm.cmd.ProcessState.String()
			case <-time.After(2 * time.Second):
			}
		}
		qlog, _ := os.ReadFile(filepath.Join(vm.Dir, "qemu.log"))
		return out, fmt.Errorf("%w; %s; QEMU's log: %q; guest console: %s", err, state, strings.TrimSpace(string(qlog)), vm.consoleTail())
	}
	return out, err
}

// Stop kills QEMU and removes the guest's directory and memory file.
func (vm *VM) Stop() {
	if vm.shell != nil {
		vm.shell.Close()
	}
	if vm.cmd != nil && vm.cmd.Process != nil {
		vm.cmd.Process.Kill()
		<-vm.exited
	}
	if vm.Libvirt {
		Virsh("destroy", vm.Name)
		if vm.Persistent {
			Virsh("undefine", "--checkpoints-metadata", vm.Name)
		}
	}
	if vm.MemFile != "" {
		os.Remove(vm.MemFile)
	}
	if vm.ownDir {
		os.RemoveAll(vm.Dir)
	}
}

// Release disconnects from a detached guest and leaves it running.
func (vm *VM) Release() {
	if vm.shell != nil {
		vm.shell.Close()
	}
	if vm.cmd != nil && vm.cmd.Process != nil {
		vm.cmd.Process.Release()
	}
}

// StopDir stops a detached guest by its directory (the QEMU pid file, or
// the libvirt domain it names: destroyed and undefined).
func StopDir(dir string) error {
	if b, err := os.ReadFile(filepath.Join(dir, "libvirt-domain")); err == nil {
		name := strings.TrimSpace(string(b))
		Virsh("destroy", name)
		if _, err := Virsh("undefine", "--checkpoints-metadata", name); err != nil {
			return err
		}
		return os.RemoveAll(dir)
	}
	b, err := os.ReadFile(filepath.Join(dir, "qemu.pid"))
	if err != nil {
		return fmt.Errorf("no running guest in %s: %w", dir, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("bad pid file in %s: %w", dir, err)
	}
	if p, err := os.FindProcess(pid); err == nil {
		p.Signal(syscall.SIGTERM)
		for i := 0; i < 50 && p.Signal(syscall.Signal(0)) == nil; i++ {
			time.Sleep(100 * time.Millisecond)
		}
		p.Signal(syscall.SIGKILL)
	}
	if mf, err := os.ReadFile(filepath.Join(dir, "memfile")); err == nil {
		os.Remove(strings.TrimSpace(string(mf)))
	}
	return os.RemoveAll(dir)
}

// maxShellLine bounds a command line sent to the guest's tty.
const maxShellLine = 4000

// Shell is the serial shell of a guest.
type Shell struct {
	conn net.Conn
	mu   sync.Mutex
	buf  strings.Builder
	cond *sync.Cond
	seq  int
	err  error
}

// DialShell connects to a guest's serial shell socket.
func DialShell(path string) (*Shell, error) {
	c, err := net.Dial("unix", path)
	if err != nil {
		return nil, err
	}
	s := &Shell{conn: c}
	s.cond = sync.NewCond(&s.mu)
	go func() {
		r := bufio.NewReader(c)
		b := make([]byte, 4096)
		for {
			n, err := r.Read(b)
			s.mu.Lock()
			s.buf.Write(b[:n])
			if err != nil {
				s.err = err
			}
			s.cond.Broadcast()
			s.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	return s, nil
}

// Run sends one command and waits for its end marker.
func (s *Shell) Run(command string, d time.Duration) (string, error) {
	s.mu.Lock()
	s.seq++
	id := fmt.Sprintf("%d-%d", time.Now().UnixNano()%1e9, s.seq)
	s.buf.Reset()
	s.mu.Unlock()
	begin, end := "__VMW_BEGIN_"+id+"__", "__VMW_END_"+id+"__"
	// QEMU's UART holds the last bytes of a short input in its receive FIFO
	// until more arrive; blank lines behind the command push it through.
	line := fmt.Sprintf("echo %s; ( %s ) 2>&1; echo \"%s $?\"\n%s", begin, command, end, strings.Repeat("\n", 32))
	// the guest's tty reads a line of at most 4095 bytes (N_TTY): a longer
	// one is cut, and a cut quote leaves the shell unusable
	if n := strings.IndexByte(line, '\n'); n > maxShellLine {
		return "", fmt.Errorf("guest command of %d bytes is longer than the serial shell's %d-byte line: put data in the guest's Files instead", n, maxShellLine)
	}
	if _, err := s.conn.Write([]byte(line)); err != nil {
		return "", err
	}
	endRE := regexp.MustCompile(regexp.QuoteMeta(end) + ` (\d+)\r?\n`)
	expired := false
	timer := time.AfterFunc(d, func() { s.mu.Lock(); expired = true; s.cond.Broadcast(); s.mu.Unlock() })
	defer timer.Stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	scanned := 0 // the end marker is looked for only in new output
	for {
		out := s.buf.String()
		from := scanned - len(end) - 32
		if from < 0 {
			from = 0
		}
		scanned = len(out)
		if m := endRE.FindStringSubmatchIndex(out[from:]); m != nil {
			for i := range m {
				m[i] += from
			}
			bi := strings.Index(out, begin)
			if bi < 0 {
				return "", fmt.Errorf("guest shell: end marker without begin for %q", command)
			}
			body := out[bi+len(begin) : m[0]]
			body = strings.TrimLeft(body, "\r\n")
			body = strings.ReplaceAll(body, "\r\n", "\n")
			rc, _ := strconv.Atoi(out[m[2]:m[3]])
			if rc != 0 {
				return body, fmt.Errorf("guest command %q exited %d: %s", command, rc, strings.TrimSpace(body))
			}
			return body, nil
		}
		if s.err != nil {
			return "", fmt.Errorf("guest shell: %w", s.err)
		}
		if expired {
			return "", fmt.Errorf("guest command %q: no answer within %v", command, d)
		}
		s.cond.Wait()
	}
}

// Broken reports whether the connection to the guest's serial port is
// gone (the guest or QEMU died).
func (s *Shell) Broken() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err != nil
}

// Close disconnects from the serial port (the guest shell stays up).
func (s *Shell) Close() error { return s.conn.Close() }

// QMP runs one command on the guest's control socket (libvirt's monitor
// pass-through for libvirt guests) and returns its answer.
func (vm *VM) QMP(command string, args any) (json.RawMessage, error) {
	if vm.Libvirt {
		return virshQMP(vm.Name, command, args)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := qmp.Dial(ctx, vm.ControlPath)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.Run(ctx, command, args)
}
