package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"libvirt.org/go/libvirtxml"

	"github.com/vmwatch/vmwatch/backup"
	"github.com/vmwatch/vmwatch/detect"
	"github.com/vmwatch/vmwatch/hv/lv"
)

// repoFlags locate the backup repository.
type repoFlags struct {
	repo, passwordFile string
}

func (rf *repoFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&rf.repo, "repo", os.Getenv("VMWATCH_REPO"), "the backup repository: a directory, s3://BUCKET/PREFIX or sftp://USER@HOST/PATH ($VMWATCH_REPO)")
	cmd.Flags().StringVar(&rf.passwordFile, "password-file", "", "a file holding the repository password (else $VMWATCH_REPO_PASSWORD; without either the repository is not confidential)")
}

func (rf *repoFlags) open(ctx context.Context, create bool) (*backup.Repo, error) {
	return backup.Open(ctx, backup.Options{Location: rf.repo, PasswordFile: rf.passwordFile, Create: create})
}

// progressPrinter draws "done / total, rate" on a terminal, at most a few
// times a second; it prints nothing when stderr is not a terminal.
func progressPrinter(what string) (backup.Progress, func()) {
	fi, err := os.Stderr.Stat()
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return nil, func() {}
	}
	start, last := time.Now(), time.Time{}
	p := func(done, total int64) {
		if time.Since(last) < 200*time.Millisecond && done < total {
			return
		}
		last = time.Now()
		rate := float64(done) / max(time.Since(start).Seconds(), 1e-3)
		fmt.Fprintf(os.Stderr, "\r%s: %s / %s (%.0f%%), %s/s   ", what, hb(done), hb(total), 100*float64(done)/float64(max(total, 1)), hb(int64(rate)))
	}
	return p, func() {
		if !last.IsZero() {
			fmt.Fprintln(os.Stderr)
		}
	}
}

func hb(n int64) string { return human(uint64(max(n, 0))) }

func libvirtDomain(target string) (string, error) {
	name, ok := strings.CutPrefix(target, "libvirt:")
	if !ok || name == "" {
		return "", fmt.Errorf("-t %q: backups need a libvirt domain, -t libvirt:NAME", target)
	}
	return name, nil
}

// securityState runs the detectors against a running domain for the
// restore point's record.
func securityState(ctx context.Context, g *globalFlags, domain string) (string, []backup.Finding) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	gg := *g
	gg.target = "libvirt:" + domain
	var rep *detect.Report
	_, _, err := withSession(ctx, &gg, func(s *session) (any, error) {
		rs, err := detect.DefaultRules()
		if err != nil {
			return nil, err
		}
		rep, err = detect.Run(ctx, s.k, detect.Options{VM: domain, Rules: rs})
		return rep, err
	})
	if err != nil {
		slog.Warn("security check before the backup failed; the restore point's security state is unknown", "domain", domain, "err", err)
		return "unknown: " + err.Error(), nil
	}
	var fs []backup.Finding
	for _, f := range rep.Findings {
		if f.Severity >= detect.Medium {
			fs = append(fs, backup.Finding{ID: f.ID, Severity: f.Severity.String(), Title: f.Title, Since: f.Time.UTC().Format(time.RFC3339)})
		}
	}
	if len(fs) == 0 {
		return "clean", nil
	}
	return "findings", fs
}

func newBackupCmd(g *globalFlags) *cobra.Command {
	var (
		rf      repoFlags
		full    bool
		scratch string
		noFrz   bool
		noCheck bool
		rate    string
	)
	cmd := &cobra.Command{
		Use:   "backup -t libvirt:NAME --repo DIR",
		Short: "Back up every disk of a libvirt domain (incremental after the first)",
		Long: `backup stores a restore point of a libvirt domain in a deduplicating,
compressed repository. A running domain is backed up through a libvirt backup
job, from one point in time while the guest keeps running; the first backup is
full, later ones read only the clusters that changed since the previous restore
point (a libvirt checkpoint, a QEMU dirty bitmap in the qcow2 image). When the
chain is broken (checkpoint or bitmap gone or inconsistent, a disk added,
resized or replaced) that disk is backed up in full and the reason is logged.
A shut-off domain is backed up by reading its images.

Before the backup, the detectors of vmwatch check run against a running guest
and the open findings are kept with the restore point (see restore
--before-compromise).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			domain, err := libvirtDomain(g.target)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			state, err := domainState(domain)
			if err != nil { // before a repository is created for nothing
				return err
			}
			r, err := rf.open(ctx, true)
			if err != nil {
				return err
			}
			defer r.Close(context.WithoutCancel(ctx))
			opt := backup.BackupOptions{Domain: domain, Full: full, Scratch: scratch, Freeze: !noFrz, Security: "not checked"}
			if rate != "" {
				if opt.RateLimit, err = backup.ParseSize(rate); err != nil {
					return fmt.Errorf("--rate-limit: %w", err)
				}
			}
			if !noCheck && state == 1 { // running
				opt.Security, opt.Findings = securityState(ctx, g, domain)
			}
			var done func()
			opt.Progress, done = progressPrinter("backup " + domain)
			p, err := backup.Backup(ctx, r, opt)
			done()
			if err != nil {
				return err
			}
			return emit(os.Stdout, g.output, p, func(tw *tabwriter.Writer) {
				linef(tw, "restore point %s: %s backup of %s in %s", p.ID, p.Kind, domain, p.Duration.Round(time.Millisecond))
				row(tw, "DISK", "MODE", "SIZE", "READ", "CHANGED", "WHY FULL")
				for _, d := range p.Disks {
					row(tw, d.Target, d.Mode, hb(d.Size), hb(d.Read), hb(d.Changed), orDash(d.FullReason))
				}
				linef(tw, "read %s of %s; added %s to the repository; security: %s", hb(p.Read), hb(p.Size), hb(p.Added), shortSecurity(p.Security))
				for _, f := range p.Findings {
					linef(tw, "  open finding: %s %s: %s", strings.ToUpper(f.Severity), f.ID, f.Title)
				}
			})
		},
	}
	rf.add(cmd)
	f := cmd.Flags()
	f.BoolVar(&full, "full", false, "back up every disk in full, whatever the previous restore point")
	f.StringVar(&scratch, "scratch", backup.DefaultScratch, "directory for the backup job's images until they are stored")
	f.BoolVar(&noFrz, "no-freeze", false, "do not ask a QEMU guest agent to freeze the guest's file systems")
	f.BoolVar(&noCheck, "no-check", false, "do not run the detectors before the backup")
	f.StringVar(&rate, "rate-limit", "", "read the disks at most this fast, per second (e.g. 50M)")
	return cmd
}

// shortSecurity drops the reason of an unknown security state (it is in
// the JSON output and was logged at backup time).
func shortSecurity(s string) string {
	if strings.HasPrefix(s, "unknown") {
		return "unknown"
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// domainState is the libvirt state of a domain (1 running, 3 paused, 5
// shut off).
func domainState(name string) (int32, error) {
	c, err := lv.Dial("qemu:///system")
	if err != nil {
		return 0, err
	}
	defer c.Close()
	dom, err := c.L.DomainLookupByName(name)
	if err != nil {
		return 0, fmt.Errorf("domain %s: %w (virsh list --all shows the domains)", name, err)
	}
	st, _, err := c.L.DomainGetState(dom, 0)
	return st, err
}

func newBackupsCmd(g *globalFlags) *cobra.Command {
	var rf repoFlags
	var domain string
	cmd := &cobra.Command{
		Use:   "backups --repo DIR",
		Short: "List the restore points in a repository",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			r, err := rf.open(ctx, false)
			if err != nil {
				return err
			}
			defer r.Close(context.WithoutCancel(ctx))
			pts, err := r.Points(ctx, domain)
			if err != nil {
				return err
			}
			if pts == nil {
				pts = []*backup.Point{}
			}
			return emit(os.Stdout, g.output, pts, func(tw *tabwriter.Writer) {
				if len(pts) == 0 {
					fmt.Fprintln(tw, "no restore points")
					return
				}
				row(tw, "ID", "DOMAIN", "TIME", "KIND", "SIZE", "READ", "ADDED", "DURATION", "SECURITY")
				for _, p := range pts {
					row(tw, p.ID, p.Domain, p.Time.Local().Format("2006-01-02 15:04:05"), p.Kind, hb(p.Size), hb(p.Read), hb(p.Added), p.Duration.Round(time.Millisecond), shortSecurity(p.Security))
				}
			})
		},
	}
	rf.add(cmd)
	cmd.Flags().StringVar(&domain, "domain", "", "only this domain's restore points")
	return cmd
}

func newVerifyCmd(g *globalFlags) *cobra.Command {
	var rf repoFlags
	var point, domain string
	cmd := &cobra.Command{
		Use:   "verify --repo DIR [--point ID]",
		Short: "Re-read restore points and check every block against its recorded hash (exit 1 on damage)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			r, err := rf.open(ctx, false)
			if err != nil {
				return err
			}
			defer r.Close(context.WithoutCancel(ctx))
			var pts []*backup.Point
			if point != "" {
				p, err := r.Point(ctx, point)
				if err != nil {
					return err
				}
				pts = append(pts, p)
			} else if pts, err = r.Points(ctx, domain); err != nil {
				return err
			}
			probs := []backup.Problem{}
			for _, p := range pts {
				prog, done := progressPrinter("verify " + p.ID)
				ps, err := r.Verify(ctx, p, prog)
				done()
				if err != nil {
					return err
				}
				probs = append(probs, ps...)
				if len(ps) == 0 {
					slog.Info("restore point verified", "point", p.ID, "domain", p.Domain)
				}
			}
			if err := emit(os.Stdout, g.output, probs, func(tw *tabwriter.Writer) {
				if len(probs) == 0 {
					fmt.Fprintf(tw, "%d restore points verified, no damage\n", len(pts))
					return
				}
				for _, p := range probs {
					linef(tw, "DAMAGED: %s", p.String())
				}
			}); err != nil {
				return err
			}
			if len(probs) > 0 {
				return exitError_(1)
			}
			return nil
		},
	}
	rf.add(cmd)
	cmd.Flags().StringVar(&point, "point", "", "verify only this restore point")
	cmd.Flags().StringVar(&domain, "domain", "", "verify only this domain's restore points")
	return cmd
}

func newPruneCmd(g *globalFlags) *cobra.Command {
	var rf repoFlags
	var k backup.Keep
	var dry, gcNow bool
	var domain string
	cmd := &cobra.Command{
		Use:   "prune --repo DIR --keep-last N --keep-daily N --keep-weekly N --keep-monthly N",
		Short: "Remove restore points outside the retention policy (as Proxmox Backup Server's prune)",
		Long: `prune applies the keep options to each domain's restore points, newest first:
keep-last keeps the newest N; keep-daily the newest point of each of the last N
days that have points (days without points do not count); keep-weekly and
keep-monthly likewise for ISO weeks and months. A period already covered by an
earlier option is not counted again. Without any keep option nothing is
removed. The data only the removed points held is released by kopia's garbage
collection, which runs after each prune with kopia's safety margins (a
content goes only after two collections a day apart, so a backup running at
the same time is never harmed); --gc-now releases it at once and is safe only
when nothing else writes to the repository.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			r, err := rf.open(ctx, false)
			if err != nil {
				return err
			}
			defer r.Close(context.WithoutCancel(ctx))
			pts, err := r.Points(ctx, domain)
			if err != nil {
				return err
			}
			byDomain := map[string][]*backup.Point{}
			var order []string
			for _, p := range pts {
				if byDomain[p.Domain] == nil {
					order = append(order, p.Domain)
				}
				byDomain[p.Domain] = append(byDomain[p.Domain], p)
			}
			var all []backup.Decision
			var remove []string
			for _, d := range order {
				for _, dec := range backup.Select(byDomain[d], k, time.Local) {
					all = append(all, dec)
					if !dec.Keep {
						remove = append(remove, dec.Point.ID)
					}
				}
			}
			if !dry && len(remove) > 0 {
				if err := r.Delete(ctx, remove); err != nil {
					return err
				}
				cs, err := r.Collect(ctx, gcNow)
				if err != nil {
					return err
				}
				fmt.Fprintf(os.Stderr, "vmwatch: removed %d restore points; %s of data is no longer referenced (kopia releases it when its safety margins allow), %s is in use\n",
					len(remove), hb(cs.UnreferencedBytes), hb(cs.LiveBytes))
			}
			type out struct {
				ID     string    `json:"id"`
				Domain string    `json:"domain"`
				Time   time.Time `json:"time"`
				Keep   bool      `json:"keep"`
				Reason string    `json:"reason,omitempty"`
			}
			rows := []out{}
			for _, d := range all {
				rows = append(rows, out{d.Point.ID, d.Point.Domain, d.Point.Time, d.Keep, d.Reason})
			}
			return emit(os.Stdout, g.output, rows, func(tw *tabwriter.Writer) {
				row(tw, "ID", "DOMAIN", "TIME", "ACTION", "WHY")
				for _, o := range rows {
					act := "remove"
					if dry {
						act = "would remove"
					}
					if o.Keep {
						act = "keep"
					}
					row(tw, o.ID, o.Domain, o.Time.Local().Format("2006-01-02 15:04:05"), act, orDash(o.Reason))
				}
			})
		},
	}
	rf.add(cmd)
	f := cmd.Flags()
	f.IntVar(&k.Last, "keep-last", 0, "keep the newest N restore points")
	f.IntVar(&k.Daily, "keep-daily", 0, "keep the newest point of each of the last N days with points")
	f.IntVar(&k.Weekly, "keep-weekly", 0, "keep the newest point of each of the last N weeks with points")
	f.IntVar(&k.Monthly, "keep-monthly", 0, "keep the newest point of each of the last N months with points")
	f.BoolVar(&dry, "dry-run", false, "only print what would be removed")
	f.BoolVar(&gcNow, "gc-now", false, "release the removed points' data at once (only when nothing else writes to the repository)")
	f.StringVar(&domain, "domain", "", "prune only this domain's restore points")
	return cmd
}

func newRestoreCmd(g *globalFlags) *cobra.Command {
	var (
		rf         repoFlags
		point      string
		to         string
		disk       string
		format     string
		domain     string
		beforeComp bool
		onto       bool
		asDomain   string
		dir        string
		yes        bool
		force      bool
	)
	cmd := &cobra.Command{
		Use:   "restore --repo DIR --point ID (--to FILE | --onto-domain | --as-domain NAME --dir DIR)",
		Short: "Restore a disk to an image file, the whole restore point onto its domain, or as a new domain",
		Long: `restore writes a restore point back:
  --to FILE             one disk (--disk, default the first) to a raw or qcow2 image
                        (by --format, else by the file's extension)
  --onto-domain         every disk over the domain's own images; the domain must be
                        shut off; asks for confirmation unless --yes
  --as-domain NAME      every disk into --dir and a new domain NAME defined from the
                        saved domain XML (new UUID and MAC addresses)
--before-compromise (with --domain) picks the newest restore point taken before
the first of the domain's high or critical findings that is still open at
its newest restore point.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			modes := 0
			for _, b := range []bool{to != "", onto, asDomain != ""} {
				if b {
					modes++
				}
			}
			if modes != 1 {
				return errors.New("choose one of --to FILE, --onto-domain, --as-domain NAME")
			}
			r, err := rf.open(ctx, false)
			if err != nil {
				return err
			}
			defer r.Close(context.WithoutCancel(ctx))
			var p *backup.Point
			switch {
			case beforeComp && point != "":
				return errors.New("--point and --before-compromise exclude each other")
			case beforeComp:
				if domain == "" {
					return errors.New("--before-compromise needs --domain NAME")
				}
				pts, err := r.Points(ctx, domain)
				if err != nil {
					return err
				}
				full := make([]*backup.Point, len(pts))
				for i, x := range pts {
					if full[i], err = r.Load(ctx, x); err != nil {
						return err
					}
				}
				pick, why, err := backup.BeforeCompromise(full)
				if err != nil {
					return err
				}
				fmt.Fprintf(os.Stderr, "vmwatch: %s\n", why)
				p = pick
			case point != "":
				if p, err = r.Point(ctx, point); err != nil {
					return err
				}
			default:
				return errors.New("give --point ID (see vmwatch backups) or --before-compromise --domain NAME")
			}
			if disk, err = restoreDisk(p, disk); err != nil {
				return err
			}
			switch {
			case to != "":
				prog, done := progressPrinter("restore " + disk)
				err := r.RestoreDisk(ctx, p, disk, to, format, force, prog)
				done()
				if err != nil {
					return err
				}
				fmt.Fprintf(os.Stdout, "restored disk %s of %s (%s, %s) to %s\n", disk, p.ID, p.Domain, p.Time.Local().Format(time.DateTime), to)
				return nil
			case onto:
				return restoreOnto(ctx, r, p, yes)
			default:
				return restoreAs(ctx, r, p, asDomain, dir)
			}
		},
	}
	rf.add(cmd)
	f := cmd.Flags()
	f.StringVar(&point, "point", "", "the restore point's id (a unique prefix will do)")
	f.StringVar(&to, "to", "", "write one disk to this image file")
	f.StringVar(&disk, "disk", "", "the disk (target name, e.g. vdb) for --to")
	f.StringVar(&format, "format", "", "raw or qcow2 for --to (default: by extension, else raw)")
	f.BoolVar(&force, "force", false, "overwrite the --to file")
	f.StringVar(&domain, "domain", "", "the domain, for --before-compromise")
	f.BoolVar(&beforeComp, "before-compromise", false, "pick the newest restore point before the domain's first open high or critical finding")
	f.BoolVar(&onto, "onto-domain", false, "overwrite the domain's own disk images (the domain must be shut off)")
	f.BoolVar(&yes, "yes", false, "do not ask for confirmation")
	f.StringVar(&asDomain, "as-domain", "", "define a new domain with this name from the restore point")
	f.StringVar(&dir, "dir", "", "directory for the new domain's images (--as-domain)")
	return cmd
}

// restoreDisk checks that p holds disks to restore and returns the disk
// that --to writes: disk when given, else the point's first. A point without
// disks would restore nothing (and --as-domain would define a domain on the
// original images), so it is an error whatever the mode.
func restoreDisk(p *backup.Point, disk string) (string, error) {
	if len(p.Disks) == 0 {
		return "", fmt.Errorf("restore point %s of %s (%s) holds no disks, so there is nothing to restore from it: choose another point (vmwatch backups --domain %s) or take a new backup (vmwatch backup -t libvirt:%s)",
			p.ID, p.Domain, p.Time.Local().Format(time.DateTime), p.Domain, p.Domain)
	}
	if disk == "" {
		return p.Disks[0].Target, nil
	}
	return disk, nil
}

// restoreOnto writes every disk of a point over the domain's images.
func restoreOnto(ctx context.Context, r *backup.Repo, p *backup.Point, yes bool) error {
	c, err := lv.Dial("qemu:///system")
	if err != nil {
		return err
	}
	defer c.Close()
	dom, err := c.L.DomainLookupByName(p.Domain)
	if err != nil {
		return fmt.Errorf("domain %s: %w (restore it with --as-domain instead)", p.Domain, err)
	}
	if st, _, err := c.L.DomainGetState(dom, 0); err != nil {
		return err
	} else if st != 5 {
		return fmt.Errorf("domain %s is not shut off (virsh shutdown %s first)", p.Domain, p.Domain)
	}
	if !yes {
		fmt.Fprintf(os.Stderr, "Overwrite the disks of %s (", p.Domain)
		for i, d := range p.Disks {
			if i > 0 {
				fmt.Fprint(os.Stderr, ", ")
			}
			fmt.Fprintf(os.Stderr, "%s=%s", d.Target, d.Source)
		}
		fmt.Fprintf(os.Stderr, ") with restore point %s of %s? Type yes: ", p.ID, p.Time.Local().Format(time.DateTime))
		line, _ := bufio.NewReader(os.Stdin).ReadString('\n')
		if strings.TrimSpace(line) != "yes" {
			return errors.New("not confirmed; nothing was changed")
		}
	}
	for _, d := range p.Disks {
		prog, done := progressPrinter("restore " + d.Target)
		tmp := d.Source + ".vmwatch-restore"
		err := r.RestoreDisk(ctx, p, d.Target, tmp, d.Format, true, prog)
		done()
		if err != nil {
			os.Remove(tmp)
			return err
		}
		if st, err := os.Stat(d.Source); err == nil {
			os.Chmod(tmp, st.Mode().Perm())
		}
		if err := os.Rename(tmp, d.Source); err != nil {
			return fmt.Errorf("replace %s: %w", d.Source, err)
		}
		slog.Info("disk restored", "domain", p.Domain, "disk", d.Target, "image", d.Source)
	}
	// the images have no dirty bitmaps now: drop vmwatch's checkpoints
	// (metadata only), so the next backup is a full one
	if err := backup.ForgetCheckpoints(c, dom); err != nil {
		slog.Warn("the next backup may try an incremental one and fall back to full", "domain", p.Domain, "err", err)
	}
	fmt.Fprintf(os.Stdout, "restored %d disks of %s from %s (%s)\n", len(p.Disks), p.Domain, p.ID, p.Time.Local().Format(time.DateTime))
	return nil
}

// restoreAs defines a new domain from a point's saved XML with its disks
// restored into dir.
func restoreAs(ctx context.Context, r *backup.Repo, p *backup.Point, name, dir string) error {
	if dir == "" {
		return errors.New("--as-domain needs --dir DIR for the new domain's images")
	}
	x, err := r.DomainXML(ctx, p)
	if err != nil {
		return err
	}
	var dx libvirtxml.Domain
	if err := dx.Unmarshal(x); err != nil {
		return fmt.Errorf("saved domain XML of %s: %w", p.ID, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	dx.Name, dx.UUID, dx.ID = name, "", nil
	paths := map[string]string{}
	for _, d := range p.Disks {
		ext := ".raw"
		if d.Format == "qcow2" {
			ext = ".qcow2"
		}
		dst, _ := filepath.Abs(filepath.Join(dir, name+"-"+d.Target+ext))
		prog, done := progressPrinter("restore " + d.Target)
		err := r.RestoreDisk(ctx, p, d.Target, dst, d.Format, false, prog)
		done()
		if err != nil {
			return err
		}
		os.Chmod(dst, 0o660)
		paths[d.Target] = dst
	}
	if dx.Devices != nil {
		for i := range dx.Devices.Disks {
			dd := &dx.Devices.Disks[i]
			if dd.Target == nil {
				continue
			}
			if dst, ok := paths[dd.Target.Dev]; ok {
				dd.Source = &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: dst}}
				dd.BackingStore = nil
			}
		}
		for i := range dx.Devices.Interfaces {
			dx.Devices.Interfaces[i].MAC = nil // libvirt makes new ones
			dx.Devices.Interfaces[i].Target = nil
		}
	}
	out, err := dx.Marshal()
	if err != nil {
		return err
	}
	xp := filepath.Join(dir, name+".xml")
	if err := os.WriteFile(xp, []byte(out), 0o644); err != nil {
		return err
	}
	c, err := lv.Dial("qemu:///system")
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.L.DomainDefineXML(out); err != nil {
		return fmt.Errorf("define domain %s (XML in %s): %w", name, xp, err)
	}
	fmt.Fprintf(os.Stdout, "defined domain %s from restore point %s with its disks in %s; start it with: virsh start %s\n", name, p.ID, dir, name)
	return nil
}
