// Package target turns a target string (qmp:PATH, pid:N, dump:PATH,
// memfile:PATH) into guest memory, plus the QMP control channel when there
// is one.
package target

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/vmwatch/vmwatch/guestmem"
	"github.com/vmwatch/vmwatch/hv"
	"github.com/vmwatch/vmwatch/hv/lv"
	"github.com/vmwatch/vmwatch/hv/qmp"
)

// Options tune Open.
type Options struct {
	// NoDirect forces process_vm_readv even when the guest RAM is a shared
	// file or memfd that could be mapped.
	NoDirect bool
	// Machine overrides the machine type ("q35" or "pc") used to place RAM
	// when no QMP socket tells (pid: and memfile: targets).
	Machine string
	// Timeout bounds each QMP command (default 5 s).
	Timeout time.Duration
	// LibvirtURI is the libvirt connection of libvirt: targets (default qemu:///system).
	LibvirtURI string
}

// Target is an opened guest.
type Target struct {
	Spec string
	Kind string
	Mem  guestmem.Memory
	// Monitor is the control channel, nil for dumps, memory files and pid: targets.
	Monitor hv.Monitor
	PID     int
	CPUs    []guestmem.CPUState
	opt     Options
	// ownMonitor: Close closes the monitor (it was dialled by Open)
	ownMonitor bool
	closers    []func() error
}

// Usage describes the accepted target forms.
const Usage = "qmp:PATH (QEMU's QMP socket), libvirt:DOMAIN, pid:N (QEMU process), dump:PATH (raw, ELF core or LiME), memfile:PATH[,machine=q35|pc] (shared memory-backend file)"

// Open opens a target.
func Open(ctx context.Context, spec string, opt Options) (*Target, error) {
	if opt.Timeout == 0 {
		opt.Timeout = 5 * time.Second
	}
	kind, arg, ok := strings.Cut(spec, ":")
	if !ok || arg == "" {
		return nil, fmt.Errorf("target %q: want one of %s", spec, Usage)
	}
	t := &Target{Spec: spec, Kind: kind, opt: opt}
	var err error
	switch kind {
	case "qmp":
		err = t.openQMP(ctx, arg)
	case "pid":
		pid, perr := strconv.Atoi(arg)
		if perr != nil || pid <= 0 {
			return nil, fmt.Errorf("target %q: %q is not a process id", spec, arg)
		}
		err = t.openPID(pid)
	case "dump":
		var d *guestmem.DumpFile
		d, err = guestmem.OpenDump(arg)
		if err == nil {
			t.Mem = d
			t.CPUs = d.CPUs()
		}
	case "memfile":
		err = t.openMemFile(arg)
	case "libvirt":
		err = t.openLibvirt(ctx, arg)
	default:
		err = fmt.Errorf("unknown kind %q: want one of %s", kind, Usage)
	}
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("target %s: %w", spec, err)
	}
	return t, nil
}

func (t *Target) ctx(parent context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(parent, t.opt.Timeout)
}

func (t *Target) openQMP(ctx context.Context, path string) error {
	c, cancel := t.ctx(ctx)
	defer cancel()
	cl, err := qmp.Dial(c, path)
	if err != nil {
		return err
	}
	t.Monitor, t.ownMonitor = cl, true
	if cl.PID() == 0 {
		return fmt.Errorf("cannot tell which process serves QMP socket %s (SO_PEERCRED failed)", path)
	}
	return t.fromMonitor(ctx)
}

// openLibvirt reaches a libvirt domain's QEMU through libvirt's monitor
// pass-through; its memory is read from the QEMU process.
func (t *Target) openLibvirt(ctx context.Context, name string) error {
	uri := t.opt.LibvirtURI
	if uri == "" {
		uri = "qemu:///system"
	}
	c, err := lv.Dial(uri)
	if err != nil {
		return err
	}
	t.closers = append(t.closers, c.Close)
	cctx, cancel := t.ctx(ctx)
	defer cancel()
	dom, err := c.Lookup(cctx, name)
	if err != nil {
		return fmt.Errorf("libvirt domain %s: %w", name, err)
	}
	m := c.NewMonitor(dom)
	if m.PID() == 0 {
		return fmt.Errorf("libvirt domain %s is not running (no /run/libvirt/qemu/%s.pid)", name, name)
	}
	t.Monitor = m
	return t.fromMonitor(ctx)
}

// FromMonitor opens the guest memory of a running QEMU through a monitor
// that stays the caller's (a daemon's persistent QMP connection, or
// libvirt's monitor pass-through). The monitor must know QEMU's PID.
func FromMonitor(ctx context.Context, name string, m hv.Monitor, opt Options) (*Target, error) {
	if opt.Timeout == 0 {
		opt.Timeout = 5 * time.Second
	}
	t := &Target{Spec: name, Kind: "monitor", Monitor: m, opt: opt}
	if m.PID() == 0 {
		return nil, fmt.Errorf("target %s: the monitor does not know the QEMU process", name)
	}
	if err := t.fromMonitor(ctx); err != nil {
		t.Close()
		return nil, fmt.Errorf("target %s: %w", name, err)
	}
	return t, nil
}

func (t *Target) fromMonitor(ctx context.Context) error {
	c, cancel := t.ctx(ctx)
	defer cancel()
	cl := t.Monitor
	t.PID = cl.PID()
	mtree, err := cl.HMP(c, "info mtree -f")
	if err != nil {
		return err
	}
	flat, err := guestmem.ParseMtree(mtree)
	if err != nil {
		return err
	}
	rb, err := cl.HMP(c, "info ramblock")
	if err != nil {
		return err
	}
	blocks, err := guestmem.ParseRAMBlocks(rb)
	if err != nil {
		return err
	}
	t.Mem, err = guestmem.OpenQEMUProcess(t.PID, flat, blocks, guestmem.ProcessOptions{NoDirect: t.opt.NoDirect})
	if err != nil {
		return err
	}
	t.refreshCPUs(ctx)
	return nil
}

// RefreshCPUs reads the vCPUs' control registers through the monitor.
func (t *Target) RefreshCPUs(ctx context.Context) { t.refreshCPUs(ctx) }

func (t *Target) refreshCPUs(ctx context.Context) {
	if t.Monitor == nil {
		return
	}
	c, cancel := t.ctx(ctx)
	defer cancel()
	regs, err := t.Monitor.HMP(c, "info registers -a")
	if err != nil {
		return
	}
	t.CPUs = t.CPUs[:0]
	for _, r := range qmp.ParseRegisters(regs) {
		t.CPUs = append(t.CPUs, guestmem.CPUState{CR0: r.CR0, CR3: r.CR3, CR4: r.CR4})
	}
}

func (t *Target) openPID(pid int) error {
	t.PID = pid
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return fmt.Errorf("process %d: %w", pid, err)
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	machine, size, err := qemuArgs(args)
	if err != nil {
		return fmt.Errorf("process %d: %w", pid, err)
	}
	if t.opt.Machine != "" {
		machine = t.opt.Machine
	}
	t.Mem, err = guestmem.OpenQEMUProcessLayout(pid, machine, size, guestmem.ProcessOptions{NoDirect: t.opt.NoDirect})
	return err
}

// qemuArgs finds the machine type and RAM size on a QEMU command line.
func qemuArgs(args []string) (machine string, size uint64, err error) {
	if len(args) == 0 || !strings.Contains(args[0], "qemu") {
		return "", 0, fmt.Errorf("not a QEMU process (%q)", strings.Join(args, " "))
	}
	size = 128 << 20 // QEMU's default
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "-m":
			v := args[i+1]
			for _, p := range strings.Split(v, ",") {
				if s, ok := strings.CutPrefix(p, "size="); ok {
					v = s
					break
				}
				if !strings.Contains(p, "=") {
					v = p
					break
				}
			}
			if size, err = parseSize(v, 1<<20); err != nil {
				return "", 0, fmt.Errorf("-m %s: %w", args[i+1], err)
			}
		case "-machine", "-M":
			for _, p := range strings.Split(args[i+1], ",") {
				if s, ok := strings.CutPrefix(p, "type="); ok {
					machine = s
				} else if !strings.Contains(p, "=") && machine == "" {
					machine = p
				}
			}
		}
	}
	if machine == "" {
		machine = "pc"
	}
	return machine, size, nil
}

// parseSize reads "512", "512M", "4G", "524288k"; bare numbers are in unit.
func parseSize(s string, unit uint64) (uint64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, errors.New("empty size")
	}
	mult := unit
	switch s[len(s)-1] {
	case 'k', 'K':
		mult, s = 1<<10, s[:len(s)-1]
	case 'm', 'M':
		mult, s = 1<<20, s[:len(s)-1]
	case 'g', 'G':
		mult, s = 1<<30, s[:len(s)-1]
	case 't', 'T':
		mult, s = 1<<40, s[:len(s)-1]
	case 'b', 'B':
		mult, s = 1, s[:len(s)-1]
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, err
	}
	return n * mult, nil
}

func (t *Target) openMemFile(arg string) error {
	path := arg
	machine := t.opt.Machine
	if i := strings.LastIndex(arg, ",machine="); i >= 0 {
		path, machine = arg[:i], arg[i+len(",machine="):]
	}
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	layout, err := guestmem.QEMULayout(machine, uint64(st.Size()))
	if err != nil {
		return err
	}
	t.Mem, err = guestmem.OpenMemFile(path, layout)
	return err
}

// Pause stops the VM's vCPUs (QMP stop) if it is running, and returns a
// function that resumes it and reports how long it was paused.
func (t *Target) Pause(ctx context.Context) (resume func() (time.Duration, error), err error) {
	if t.Monitor == nil {
		return nil, fmt.Errorf("--pause needs a QMP socket (target %s has none)", t.Spec)
	}
	c, cancel := t.ctx(ctx)
	defer cancel()
	running, _, err := hv.Status(c, t.Monitor)
	if err != nil {
		return nil, err
	}
	if !running {
		return func() (time.Duration, error) { return 0, nil }, nil
	}
	if _, err := t.Monitor.Run(c, "stop", nil); err != nil {
		return nil, err
	}
	start := time.Now()
	t.refreshCPUs(ctx)
	return func() (time.Duration, error) {
		c, cancel := t.ctx(context.Background())
		defer cancel()
		_, err := t.Monitor.Run(c, "cont", nil)
		return time.Since(start), err
	}, nil
}

// Close releases the memory source and the QMP connection.
func (t *Target) Close() error {
	var errs []error
	if t.Mem != nil {
		errs = append(errs, t.Mem.Close())
	}
	if t.Monitor != nil && t.ownMonitor {
		errs = append(errs, t.Monitor.Close())
	}
	for _, c := range t.closers {
		errs = append(errs, c())
	}
	return errors.Join(errs...)
}
