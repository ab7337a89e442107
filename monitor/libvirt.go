package monitor

import (
	"context"
	"fmt"
	"time"

	"github.com/digitalocean/go-libvirt"

	"github.com/vmwatch/vmwatch/hv"
	"github.com/vmwatch/vmwatch/hv/lv"
)

// libvirtConnector reaches a domain's QEMU through libvirt.
type libvirtConnector struct {
	c   *lv.Conn
	dom libvirt.Domain
}

func (l libvirtConnector) connect(ctx context.Context) (hv.Monitor, error) {
	m := l.c.NewMonitor(l.dom)
	if m.PID() == 0 {
		return nil, fmt.Errorf("domain %s has no QEMU process", l.dom.Name)
	}
	return m, nil
}
func (l libvirtConnector) describe() string { return "libvirt:" + l.dom.Name }

// stats are the domain's statistics from libvirt (virsh domstats).
func (l libvirtConnector) stats(ctx context.Context) (map[string]any, error) {
	return l.c.Stats(ctx, l.dom)
}

// startLibvirt watches libvirt's domains: every running domain is added,
// domains that start later are added, domains that stop are dropped. A
// lost connection to libvirtd is re-established. With libvirt.enabled
// unset, a host without libvirtd is fine.
func (d *Daemon) startLibvirt(ctx context.Context) error {
	if d.cfg.Libvirt.Enabled != nil && !*d.cfg.Libvirt.Enabled {
		return nil
	}
	required := d.cfg.Libvirt.Enabled != nil
	c, err := lv.Dial(d.cfg.Libvirt.URI)
	if err != nil {
		if required {
			return err
		}
		d.log.Info("libvirt not watched", "uri", d.cfg.Libvirt.URI, "reason", err)
		return nil
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		d.watchLibvirt(ctx, c)
	}()
	return nil
}

func (d *Daemon) watchLibvirt(ctx context.Context, c *lv.Conn) {
	for {
		err := d.libvirtSession(ctx, c)
		c.Close()
		if ctx.Err() != nil {
			return
		}
		d.log.Warn("libvirt connection lost; reconnecting", "uri", d.cfg.Libvirt.URI, "err", err)
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(5 * time.Second):
			}
			if c, err = lv.Dial(d.cfg.Libvirt.URI); err == nil {
				break
			}
		}
	}
}

// libvirtSession follows lifecycle events and resynchronises with the list
// of running domains every 30 s (and at the start).
func (d *Daemon) libvirtSession(ctx context.Context, c *lv.Conn) error {
	ectx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, err := c.Events(ectx)
	if err != nil {
		return err
	}
	sync := func() error {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		doms, err := c.Running(sctx)
		if err != nil {
			return err
		}
		running := map[string]bool{}
		for _, dom := range doms {
			running[dom.Name] = true
			d.addDomain(c, dom)
		}
		for _, vm := range d.VMs() {
			if vm.Source == "libvirt" && !running[vm.Name] {
				d.RemoveVM(vm.Name, "the domain is no longer running")
			}
		}
		return nil
	}
	if err := sync(); err != nil {
		return err
	}
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.Done():
			return fmt.Errorf("libvirtd closed the connection")
		case <-t.C:
			if err := sync(); err != nil {
				return err
			}
		case ev, ok := <-events:
			if !ok {
				return fmt.Errorf("libvirt event stream ended")
			}
			d.libvirtEvent(ctx, c, ev)
		}
	}
}

func (d *Daemon) addDomain(c *lv.Conn, dom libvirt.Domain) {
	if _, ok := d.VM(dom.Name); ok {
		return
	}
	if vm, ok := d.VM(dom.Name); ok && vm.Source != "libvirt" {
		return // a plain QEMU VM of that name is configured
	}
	d.AddVM(dom.Name, "libvirt", VMSettings{}, libvirtConnector{c, dom})
}

func (d *Daemon) libvirtEvent(ctx context.Context, c *lv.Conn, ev lv.Event) {
	d.log.Info("libvirt event", "domain", ev.Domain, "event", ev.Type)
	switch ev.Type {
	case "started", "resumed", "suspended":
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		dom, err := c.Lookup(lctx, ev.Domain)
		cancel()
		if err == nil {
			d.addDomain(c, dom)
		}
		if vm, ok := d.VM(ev.Domain); ok {
			vm.poke()
		}
	case "crashed":
		if vm, ok := d.VM(ev.Domain); ok && vm.Source == "libvirt" {
			vm.setState(ctx, StateCrashed, "libvirt reports the domain crashed")
			vm.alarmsEval(ctx, time.Now(), map[string]float64{})
		}
	case "stopped", "undefined":
		if vm, ok := d.VM(ev.Domain); ok && vm.Source == "libvirt" {
			// let a crash be seen (and its alarm act) before the VM goes
			if vm.currentState() != StateCrashed {
				vm.setState(ctx, StateStopped, "libvirt reports the domain "+ev.Type)
			}
			go func() {
				select {
				case <-time.After(2 * time.Second):
				case <-ctx.Done():
				}
				d.RemoveVM(ev.Domain, "the domain "+ev.Type)
			}()
		}
	}
}
