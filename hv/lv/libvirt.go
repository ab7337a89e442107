// Package lv reaches QEMU through libvirt (github.com/digitalocean/go-libvirt):
// domains, lifecycle events, domain statistics, and the QEMU monitor of a
// domain through libvirt's monitor pass-through.
package lv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"

	"github.com/vmwatch/vmwatch/hv"
)

// Conn is a connection to libvirtd.
type Conn struct {
	L   *libvirt.Libvirt
	URI string
}

// socketPath finds libvirtd's socket for qemu:///system (or a
// qemu:///system?socket=PATH URI).
func socketPath(uri string) (string, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return "", fmt.Errorf("libvirt URI %q: %w", uri, err)
	}
	if s := u.Query().Get("socket"); s != "" {
		return s, nil
	}
	if u.Scheme != "qemu" || u.Path != "/system" {
		return "", fmt.Errorf("libvirt URI %q: only qemu:///system (optionally ?socket=PATH) is supported", uri)
	}
	return "/run/libvirt/libvirt-sock", nil
}

// Dial connects to libvirtd.
func Dial(uri string) (*Conn, error) {
	sock, err := socketPath(uri)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(sock); err != nil {
		return nil, fmt.Errorf("libvirt at %s: %w (is libvirtd running?)", sock, err)
	}
	l := libvirt.NewWithDialer(dialers.NewLocal(dialers.WithSocket(sock), dialers.WithLocalTimeout(5*time.Second)))
	if err := l.ConnectToURI(libvirt.QEMUSystem); err != nil {
		return nil, fmt.Errorf("libvirt %s: %w", uri, err)
	}
	return &Conn{L: l, URI: uri}, nil
}

// Close disconnects.
func (c *Conn) Close() error { return c.L.Disconnect() }

// Done is closed when the connection to libvirtd is lost.
func (c *Conn) Done() <-chan struct{} { return c.L.Disconnected() }

// withCtx runs a libvirt call, which knows no deadline, bounded by ctx.
func withCtx[T any](ctx context.Context, f func() (T, error)) (T, error) {
	type res struct {
		v   T
		err error
	}
	ch := make(chan res, 1)
	go func() { v, err := f(); ch <- res{v, err} }()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		var zero T
		return zero, fmt.Errorf("libvirt: no answer: %w", ctx.Err())
	}
}

// Running lists the running domains.
func (c *Conn) Running(ctx context.Context) ([]libvirt.Domain, error) {
	return withCtx(ctx, func() ([]libvirt.Domain, error) {
		ds, _, err := c.L.ConnectListAllDomains(1, libvirt.ConnectListDomainsActive)
		return ds, err
	})
}

// Lookup finds a domain by name.
func (c *Conn) Lookup(ctx context.Context, name string) (libvirt.Domain, error) {
	return withCtx(ctx, func() (libvirt.Domain, error) { return c.L.DomainLookupByName(name) })
}

// Monitor is a domain's QEMU monitor through libvirt's pass-through
// (qemu-monitor-command). It implements hv.Monitor.
type Monitor struct {
	c    *Conn
	dom  libvirt.Domain
	once sync.Once
	pid  int
}

var _ hv.Monitor = (*Monitor)(nil)

// NewMonitor returns the monitor of a domain.
func (c *Conn) NewMonitor(dom libvirt.Domain) *Monitor { return &Monitor{c: c, dom: dom} }

// Run sends a QMP command.
func (m *Monitor) Run(ctx context.Context, command string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": command}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	out, err := withCtx(ctx, func() (string, error) { return m.c.L.QEMUDomainMonitorCommand(m.dom, string(b), 0) })
	if err != nil {
		return nil, fmt.Errorf("QMP %s on domain %s: %w", command, m.dom.Name, err)
	}
	var resp struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil {
		return nil, fmt.Errorf("QMP %s on domain %s: %w", command, m.dom.Name, err)
	}
	if resp.Error != nil {
		return nil, fmt.Errorf("QMP %s on domain %s: %s (%s)", command, m.dom.Name, resp.Error.Desc, resp.Error.Class)
	}
	return resp.Return, nil
}

// HMP sends a human monitor command.
func (m *Monitor) HMP(ctx context.Context, line string) (string, error) {
	out, err := withCtx(ctx, func() (string, error) { return m.c.L.QEMUDomainMonitorCommand(m.dom, line, 1) })
	if err != nil {
		return "", fmt.Errorf("HMP %q on domain %s: %w", line, m.dom.Name, err)
	}
	return out, nil
}

// PID is the domain's QEMU process (from libvirt's pid file).
func (m *Monitor) PID() int {
	m.once.Do(func() {
		b, err := os.ReadFile("/run/libvirt/qemu/" + m.dom.Name + ".pid")
		if err == nil {
			m.pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
	})
	return m.pid
}

// Close does nothing: the libvirt connection is shared.
func (m *Monitor) Close() error { return nil }

// Domain is the domain.
func (m *Monitor) Domain() libvirt.Domain { return m.dom }

// Stats are a domain's statistics as `virsh domstats` prints them
// (cpu.time, balloon.current, block.N.rd.bytes, net.N.rx.bytes, ...).
func (c *Conn) Stats(ctx context.Context, dom libvirt.Domain) (map[string]any, error) {
	const all = uint32(libvirt.DomainStatsState | libvirt.DomainStatsCPUTotal | libvirt.DomainStatsBalloon | libvirt.DomainStatsVCPU | libvirt.DomainStatsInterface | libvirt.DomainStatsBlock)
	recs, err := withCtx(ctx, func() ([]libvirt.DomainStatsRecord, error) {
		return c.L.ConnectGetAllDomainStats([]libvirt.Domain{dom}, all, 0)
	})
	if err != nil {
		return nil, err
	}
	if len(recs) == 0 {
		return nil, errors.New("no statistics for domain " + dom.Name)
	}
	out := map[string]any{}
	for _, p := range recs[0].Params {
		out[p.Field] = p.Value.I
	}
	return out, nil
}

// Events are domain lifecycle events.
type Event struct {
	Domain string
	Type   string // defined, undefined, started, suspended, resumed, stopped, shutdown, pmsuspended, crashed
	Detail int32
}

var eventNames = map[int32]string{0: "defined", 1: "undefined", 2: "started", 3: "suspended", 4: "resumed", 5: "stopped", 6: "shutdown", 7: "pmsuspended", 8: "crashed"}

// Events streams lifecycle events until ctx ends or the connection drops.
func (c *Conn) Events(ctx context.Context) (<-chan Event, error) {
	raw, err := c.L.LifecycleEvents(ctx)
	if err != nil {
		return nil, err
	}
	ch := make(chan Event)
	go func() {
		defer close(ch)
		for ev := range raw {
			select {
			case ch <- Event{Domain: ev.Dom.Name, Type: eventNames[ev.Event], Detail: ev.Detail}:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}

// DumpMemory writes the guest's memory as an ELF core to path, through
// libvirt (virDomainCoreDumpWithFormat, memory only). libvirtd opens the
// file and hands QEMU a descriptor: QEMU runs as its own user and could not
// open a path in the caller's directories itself. The VM keeps running. When
// ctx ends first, the dump job is aborted.
func (m *Monitor) DumpMemory(ctx context.Context, path string) error {
	_, err := withCtx(ctx, func() (struct{}, error) {
		return struct{}{}, m.c.L.DomainCoreDumpWithFormat(m.dom, path, uint32(libvirt.DomainCoreDumpFormatRaw), libvirt.DumpMemoryOnly|libvirt.DumpLive)
	})
	if err != nil {
		if ctx.Err() != nil {
			m.c.L.DomainAbortJob(m.dom)
		}
		return fmt.Errorf("memory dump of domain %s to %s: %w", m.dom.Name, path, err)
	}
	return nil
}
