package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/vmwatch/vmwatch/linux"
	"github.com/vmwatch/vmwatch/target"
)

const targetUsage = "qmp:PATH | libvirt:DOMAIN | pid:N | dump:PATH | memfile:PATH[,machine=q35|pc]"

// session is one opened guest with its kernel located.
type session struct {
	tg     *target.Target
	k      *linux.Kernel
	resume func() (time.Duration, error)
	paused time.Duration
	open   time.Duration
}

// openSession opens the target, pauses it if asked, and bootstraps the kernel.
func openSession(ctx context.Context, g *globalFlags) (*session, error) {
	if g.target == "" {
		return nil, fmt.Errorf("no target: give -t %s", targetUsage)
	}
	switch g.output {
	case "table", "json", "jsonl":
	default:
		return nil, fmt.Errorf("-o %q: want table, json or jsonl", g.output)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(g.timeout)*time.Second)
	defer cancel()
	t0 := time.Now()
	tg, err := target.Open(ctx, g.target, target.Options{NoDirect: g.noDirect, Machine: g.machine})
	if err != nil {
		return nil, err
	}
	s := &session{tg: tg}
	if g.pause {
		if s.resume, err = tg.Pause(ctx); err != nil {
			tg.Close()
			return nil, err
		}
	}
	s.k, err = linux.Open(tg.Mem, linux.Options{CPUs: tg.CPUs, SystemMap: g.systemMap, ISF: g.isf, Logger: slog.Default()})
	if err != nil {
		s.close()
		return nil, fmt.Errorf("%s: %w", g.target, err)
	}
	s.open = time.Since(t0)
	return s, nil
}

// close resumes the VM if it was paused and releases the target.
func (s *session) close() {
	if s.resume != nil {
		d, err := s.resume()
		s.resume = nil
		s.paused = d
		if err != nil {
			slog.Error("resume the VM failed; it is still paused", "target", s.tg.Spec, "err", err)
		} else {
			slog.Info("VM was paused", "target", s.tg.Spec, "paused", d)
		}
	}
	s.tg.Close()
}

// withSession runs fn on an opened guest and closes it (resuming a paused VM
// as soon as the reading is done, before output).
func withSession(ctx context.Context, g *globalFlags, fn func(s *session) (any, error)) (any, *session, error) {
	s, err := openSession(ctx, g)
	if err != nil {
		return nil, nil, err
	}
	v, err := fn(s)
	s.close()
	return v, s, err
}
