package monitor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/cronexpr"

	"github.com/vmwatch/vmwatch/backup"
	"github.com/vmwatch/vmwatch/detect"
	"github.com/vmwatch/vmwatch/journal"
)

// BackupConf schedules backups of libvirt domains into one repository.
type BackupConf struct {
	// Repo is a directory, s3://BUCKET/PREFIX or sftp://USER@HOST/PATH.
	Repo string `yaml:"repo"`
	// PasswordFile holds the repository password (else
	// $VMWATCH_REPO_PASSWORD; without either the repository is not
	// confidential).
	PasswordFile string `yaml:"password_file"`
	// Scratch is where backup jobs write until the data is stored.
	Scratch string `yaml:"scratch"`
	// RateLimit bounds the disk read rate of a backup, e.g. "50M" per second.
	RateLimit string           `yaml:"rate_limit"`
	Schedules []BackupSchedule `yaml:"schedules"`
	rate      int64
}

// BackupSchedule backs up some domains at the times of a cron expression
// and then prunes their restore points.
type BackupSchedule struct {
	// Domains are libvirt domain names; "*" is every libvirt domain the
	// daemon watches (running ones).
	Domains []string `yaml:"domains"`
	// Cron is "minute hour day-of-month month day-of-week" (a sixth field
	// is the year; seven fields are "second minute hour day-of-month month
	// day-of-week year"), or @hourly, @daily, @weekly.
	Cron string `yaml:"cron"`
	// Keep is the retention policy applied after each backup (all zero:
	// keep everything).
	Keep struct {
		Last    int `yaml:"last"`
		Daily   int `yaml:"daily"`
		Weekly  int `yaml:"weekly"`
		Monthly int `yaml:"monthly"`
	} `yaml:"keep"`
	expr *cronexpr.Expression
}

func (b *BackupConf) validate() error {
	var errs []error
	if len(b.Schedules) > 0 && b.Repo == "" {
		errs = append(errs, errors.New("backup: schedules need a repo"))
	}
	if b.RateLimit != "" {
		r, err := backup.ParseSize(b.RateLimit)
		if err != nil {
			errs = append(errs, fmt.Errorf("backup.rate_limit: %w", err))
		}
		b.rate = r
	}
	if b.PasswordFile != "" {
		if _, err := os.Stat(b.PasswordFile); err != nil {
			errs = append(errs, fmt.Errorf("backup.password_file: %w", err))
		}
	}
	for i := range b.Schedules {
		s := &b.Schedules[i]
		e, err := cronexpr.Parse(s.Cron)
		if err != nil {
			errs = append(errs, fmt.Errorf("backup.schedules[%d].cron %q: %w", i, s.Cron, err))
			continue
		}
		s.expr = e
		if len(s.Domains) == 0 {
			errs = append(errs, fmt.Errorf("backup.schedules[%d]: no domains (names, or \"*\" for every libvirt domain)", i))
		}
		if s.Keep.Last < 0 || s.Keep.Daily < 0 || s.Keep.Weekly < 0 || s.Keep.Monthly < 0 {
			errs = append(errs, fmt.Errorf("backup.schedules[%d].keep: negative count", i))
		}
	}
	return errors.Join(errs...)
}

// BackupStatus is the outcome of a domain's scheduled backups.
type BackupStatus struct {
	LastSuccess  time.Time     `json:"last_success"`
	LastPoint    string        `json:"last_point"`
	LastDuration time.Duration `json:"last_duration_ns"`
	LastRead     int64         `json:"last_read"`
	LastAdded    int64         `json:"last_added"`
	Failures     int64         `json:"failures"`
	LastError    string        `json:"last_error,omitempty"`
}

// BackupStatuses returns the status of every domain a schedule has tried
// to back up since the daemon started.
func (d *Daemon) BackupStatuses() map[string]BackupStatus {
	d.bmu.Lock()
	defer d.bmu.Unlock()
	out := make(map[string]BackupStatus, len(d.bstatus))
	for k, v := range d.bstatus {
		out[k] = v
	}
	return out
}

func (d *Daemon) setBackupStatus(domain string, f func(*BackupStatus)) {
	d.bmu.Lock()
	defer d.bmu.Unlock()
	if d.bstatus == nil {
		d.bstatus = map[string]BackupStatus{}
	}
	st := d.bstatus[domain]
	f(&st)
	d.bstatus[domain] = st
}

// backups runs the backup schedules until ctx ends.
func (d *Daemon) backups(ctx context.Context) {
	sch := d.cfg.Backup.Schedules
	if len(sch) == 0 {
		return
	}
	next := make([]time.Time, len(sch))
	now := time.Now()
	for i := range sch {
		next[i] = sch[i].expr.Next(now)
		d.log.Info("backup schedule", "domains", strings.Join(sch[i].Domains, ","), "cron", sch[i].Cron, "next", next[i].Format(time.DateTime))
	}
	for {
		first := slices.MinFunc(next, func(a, b time.Time) int { return a.Compare(b) })
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(first)):
		}
		now := time.Now()
		for i := range sch {
			if !next[i].After(now) {
				d.runSchedule(ctx, &sch[i])
				next[i] = sch[i].expr.Next(time.Now())
			}
		}
	}
}

// runSchedule backs up the schedule's domains one after the other, then
// prunes each domain's restore points.
func (d *Daemon) runSchedule(ctx context.Context, s *BackupSchedule) {
	domains := s.Domains
	if slices.Contains(domains, "*") {
		domains = nil
		for _, vm := range d.VMs() {
			if vm.Source == "libvirt" {
				domains = append(domains, vm.Name)
			}
		}
		sort.Strings(domains)
	}
	if len(domains) == 0 {
		return
	}
	r, err := backup.Open(ctx, backup.Options{Location: d.cfg.Backup.Repo, PasswordFile: d.cfg.Backup.PasswordFile, Create: true})
	if err != nil {
		d.backupFailed(ctx, "", err)
		return
	}
	defer r.Close(context.WithoutCancel(ctx))
	for _, name := range domains {
		if ctx.Err() != nil {
			return
		}
		opt := backup.BackupOptions{Domain: name, URI: d.cfg.Libvirt.URI, Scratch: d.cfg.Backup.Scratch, Freeze: true,
			RateLimit: d.cfg.Backup.rate, Log: d.log}
		opt.Security, opt.Findings = d.securityOf(name)
		p, err := backup.Backup(ctx, r, opt)
		if err != nil {
			d.backupFailed(ctx, name, err)
			continue
		}
		d.setBackupStatus(name, func(st *BackupStatus) {
			st.LastSuccess, st.LastPoint, st.LastDuration, st.LastRead, st.LastAdded = p.Time.Add(p.Duration), p.ID, p.Duration, p.Read, p.Added
		})
		data, _ := json.Marshal(map[string]any{"point": p.ID, "kind": p.Kind, "read": p.Read, "added": p.Added, "size": p.Size,
			"duration_ms": p.Duration.Milliseconds(), "security": p.Security, "repo": d.cfg.Backup.Repo})
		d.record(ctx, journal.Record{Kind: journal.KindBackup, VM: name, Severity: "info", Subject: "backup",
			Message: fmt.Sprintf("%s backup of %s: restore point %s, read %d of %d bytes", p.Kind, name, p.ID, p.Read, p.Size), Data: data})
		k := backup.Keep{Last: s.Keep.Last, Daily: s.Keep.Daily, Weekly: s.Keep.Weekly, Monthly: s.Keep.Monthly}
		if k == (backup.Keep{}) {
			continue
		}
		pts, err := r.Points(ctx, name)
		if err != nil {
			d.backupFailed(ctx, name, err)
			continue
		}
		var remove []string
		for _, dec := range backup.Select(pts, k, time.Local) {
			if !dec.Keep {
				remove = append(remove, dec.Point.ID)
			}
		}
		if len(remove) == 0 {
			continue
		}
		if err := r.Delete(ctx, remove); err != nil {
			d.backupFailed(ctx, name, err)
			continue
		}
		if _, err := r.Collect(ctx, false); err != nil {
			d.log.Warn("backup repository garbage collection", "err", err)
		}
		data, _ = json.Marshal(map[string]any{"removed": remove})
		d.record(ctx, journal.Record{Kind: journal.KindBackup, VM: name, Severity: "info", Subject: "prune",
			Message: fmt.Sprintf("pruned %d restore points of %s", len(remove), name), Data: data})
	}
}

func (d *Daemon) backupFailed(ctx context.Context, domain string, err error) {
	d.log.Error("scheduled backup failed", "domain", domain, "err", err)
	if domain != "" {
		d.setBackupStatus(domain, func(st *BackupStatus) { st.Failures++; st.LastError = err.Error() })
	}
	d.record(ctx, journal.Record{Kind: journal.KindBackup, VM: domain, Severity: "high", Subject: "backup failed", Message: err.Error()})
}

// securityOf is a domain's security state for a restore point: the
// daemon's open findings (medium and above) since its last check.
func (d *Daemon) securityOf(name string) (string, []backup.Finding) {
	vm, ok := d.VM(name)
	if !ok {
		return "unknown: the daemon does not watch the domain (shut off?)", nil
	}
	vm.mu.RLock()
	defer vm.mu.RUnlock()
	if vm.lastCheck.IsZero() {
		return "unknown: not checked yet", nil
	}
	var fs []backup.Finding
	for k, f := range vm.open {
		if f.Severity >= detect.Medium {
			since := f.Time
			if t, ok := vm.since[k]; ok {
				since = t
			}
			fs = append(fs, backup.Finding{ID: f.ID, Severity: f.Severity.String(), Title: f.Title, Since: since.UTC().Format(time.RFC3339)})
		}
	}
	sort.Slice(fs, func(i, j int) bool { return fs[i].ID < fs[j].ID })
	if len(fs) == 0 {
		return "clean", nil
	}
	return "findings", fs
}
