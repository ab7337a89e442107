package backup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/kopia/kopia/repo"
	"github.com/lima-vm/go-qcow2reader/image"
	"libvirt.org/go/libvirtxml"

	"github.com/vmwatch/vmwatch/hv/lv"
)

// CheckpointPrefix names the libvirt checkpoints vmwatch makes; older ones
// are deleted after each backup.
const CheckpointPrefix = "vmwatch-"

// DefaultScratch holds the images libvirt's backup job writes until they
// are in the repository.
const DefaultScratch = "/var/tmp/vmwatch-backup"

// BackupOptions configure one backup of a libvirt domain.
type BackupOptions struct {
	Domain string
	URI    string // default qemu:///system
	// Full ignores the previous restore point.
	Full bool
	// Scratch is a directory for the backup job's images (they hold the
	// changed clusters, or the whole disk for a full backup, until stored).
	Scratch string
	// Freeze asks the QEMU guest agent, when there is one, to freeze the
	// guest's file systems while the backup's point in time is taken.
	Freeze bool
	// Security and Findings record the VM's security state (see Point).
	Security string
	Findings []Finding
	Progress Progress
	Log      *slog.Logger
	// RateLimit bounds the disk read rate in bytes per second (0: none).
	RateLimit int64
}

type diskInfo struct {
	target, source, format string
	size                   int64
	mode, reason, base     string
	baseDisk               *Disk
	checkpoint             string // inherited (offline) or new
	scratch                string
}

// libvirt domain states (virDomainState)
const (
	stateRunning = 1
	statePaused  = 3
)

// Backup takes a restore point of a libvirt domain: through a libvirt
// backup job (a consistent point in time, the guest keeps running) when
// it runs, by reading its disk images when it is shut off.
func Backup(ctx context.Context, r *Repo, opt BackupOptions) (*Point, error) {
	log := opt.Log
	if log == nil {
		log = slog.Default()
	}
	log = log.With("domain", opt.Domain)
	if opt.URI == "" {
		opt.URI = "qemu:///system"
	}
	if opt.Scratch == "" {
		opt.Scratch = DefaultScratch
	}
	start := time.Now()
	c, err := lv.Dial(opt.URI)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	dom, err := c.L.DomainLookupByName(opt.Domain)
	if err != nil {
		return nil, fmt.Errorf("domain %s: %w (virsh list --all shows the domains)", opt.Domain, err)
	}
	state, _, err := c.L.DomainGetState(dom, 0)
	if err != nil {
		return nil, fmt.Errorf("domain %s: state: %w", opt.Domain, err)
	}
	live := state == stateRunning || state == statePaused
	xmlDesc, err := c.L.DomainGetXMLDesc(dom, libvirt.DomainXMLSecure)
	if err != nil {
		return nil, fmt.Errorf("domain %s: XML: %w", opt.Domain, err)
	}
	var dx libvirtxml.Domain
	if err := dx.Unmarshal(xmlDesc); err != nil {
		return nil, fmt.Errorf("domain %s: XML: %w", opt.Domain, err)
	}
	disks, err := domainDisks(c, dom, &dx, log)
	if err != nil {
		return nil, err
	}
	if len(disks) == 0 {
		return nil, fmt.Errorf("domain %s has no file or block disk to back up", opt.Domain)
	}

	// the previous restore point is the base of an incremental backup
	var prev *Point
	if pts, err := r.Points(ctx, opt.Domain); err != nil {
		return nil, err
	} else if len(pts) > 0 && !opt.Full {
		if prev, err = r.Load(ctx, pts[len(pts)-1]); err != nil {
			log.Warn("previous restore point unreadable; taking a full backup", "point", pts[len(pts)-1].ID, "err", err)
			prev = nil
		}
	}
	var bitmaps map[string]map[string]bitmapState
	if live {
		if bitmaps, err = queryBitmaps(ctx, c, dom); err != nil {
			log.Warn("cannot read the dirty bitmaps; taking full backups", "err", err)
		}
	}
	for _, d := range disks {
		d.mode, d.reason = "full", planIncremental(c, dom, live, prev, d, bitmaps, opt.Full)
		if d.reason == "" {
			d.mode = "incremental"
		} else if prev != nil && !opt.Full {
			log.Warn("full backup of a disk", "disk", d.target, "why", d.reason)
		}
	}

	p := &Point{Domain: opt.Domain, Time: start.UTC(), Security: opt.Security, Findings: opt.Findings, State: "shut off"}
	if live {
		p.State = "running"
		if state == statePaused {
			p.State = "paused"
		}
	}
	log.Debug("backup planned", "took", time.Since(start))
	before, err := r.StoredBytes(ctx)
	if err != nil {
		return nil, fmt.Errorf("repository %s: %w", r.Location, err)
	}
	var cleanup func()
	if live {
		t0 := time.Now()
		cleanup, err = runBackupJob(ctx, c, dom, opt, disks, log)
		log.Debug("backup job done", "took", time.Since(t0))
		if cleanup != nil {
			defer cleanup()
		}
		if err != nil {
			return nil, err
		}
	} else {
		for _, d := range disks {
			if prev != nil {
				if pd := prev.disk(d.target); pd != nil && pd.Source == d.source {
					d.checkpoint = pd.Checkpoint // the bitmap still counts from there
				}
			}
			d.mode, d.baseDisk = "full", nil
			if d.reason == "" {
				d.reason = "the domain is shut off: the whole disk is read (unchanged data is stored once)"
			}
		}
	}

	err = repo.WriteSession(ctx, r.rep, repo.WriteSessionOptions{Purpose: "vmwatch backup " + opt.Domain}, func(ctx context.Context, w repo.RepositoryWriter) error {
		var total, done int64
		lim := newLimiter(opt.RateLimit)
		for _, d := range disks {
			total += d.size
		}
		for _, d := range disks {
			var (
				img  image.Image
				f    *os.File
				oerr error
			)
			if live {
				img, f, oerr = openTarget(d.scratch)
			} else {
				img, f, oerr = openDisk(d.source)
			}
			if oerr != nil {
				return oerr
			}
			var prog Progress
			if opt.Progress != nil {
				base := done
				prog = func(n, _ int64) { opt.Progress(base+n, total) }
			}
			var base *Disk
			if d.mode == "incremental" {
				base = d.baseDisk
			}
			t0 := time.Now()
			sd, err := ingest(ctx, r, w, img, d.size, base, prog, lim)
			log.Debug("disk stored", "disk", d.target, "took", time.Since(t0))
			img.Close()
			f.Close()
			if err != nil {
				return fmt.Errorf("disk %s (%s): %w", d.target, d.source, err)
			}
			done += d.size
			sd.Target, sd.Source, sd.Format, sd.Checkpoint, sd.FullReason = d.target, d.source, d.format, d.checkpoint, d.reason
			if d.mode == "incremental" {
				sd.Base, sd.FullReason = d.base, ""
			}
			p.Disks = append(p.Disks, *sd)
			p.Read += sd.Read
			p.Size += sd.Size
		}
		p.Kind = "full"
		for _, d := range p.Disks {
			if d.Mode == "incremental" {
				p.Kind = "incremental"
			}
		}
		if err := w.Flush(ctx); err != nil {
			return err
		}
		after, err := r.StoredBytes(ctx)
		if err != nil {
			return err
		}
		p.Added = after - before
		p.Duration = time.Since(start)
		return savePoint(ctx, w, p, xmlDesc)
	})
	if err != nil {
		return nil, fmt.Errorf("backup of %s: %w", opt.Domain, err)
	}
	if live {
		pruneCheckpoints(c, dom, disks, log)
	}
	log.Info("restore point saved", "point", p.ID, "kind", p.Kind, "read", p.Read, "added", p.Added, "size", p.Size, "duration", p.Duration.Round(time.Millisecond))
	return p, nil
}

func (p *Point) disk(target string) *Disk {
	for i := range p.Disks {
		if p.Disks[i].Target == target {
			return &p.Disks[i]
		}
	}
	return nil
}

// domainDisks lists the disks of a domain that can be backed up.
func domainDisks(c *lv.Conn, dom libvirt.Domain, dx *libvirtxml.Domain, log *slog.Logger) ([]*diskInfo, error) {
	var out []*diskInfo
	if dx.Devices == nil {
		return nil, nil
	}
	for _, d := range dx.Devices.Disks {
		if d.Device != "" && d.Device != "disk" || d.Target == nil {
			continue
		}
		di := &diskInfo{target: d.Target.Dev, format: "raw"}
		if d.Driver != nil && d.Driver.Type != "" {
			di.format = d.Driver.Type
		}
		switch {
		case d.Source != nil && d.Source.File != nil:
			di.source = d.Source.File.File
		case d.Source != nil && d.Source.Block != nil:
			di.source = d.Source.Block.Dev
		default:
			log.Warn("disk not backed up: only file and block disks are supported", "disk", di.target)
			continue
		}
		if di.source == "" {
			continue // an empty drive
		}
		_, capacity, _, err := c.L.DomainGetBlockInfo(dom, di.target, 0)
		if err != nil {
			return nil, fmt.Errorf("disk %s (%s): size: %w", di.target, di.source, err)
		}
		di.size = int64(capacity)
		out = append(out, di)
	}
	return out, nil
}

type bitmapState struct {
	Name         string `json:"name"`
	Recording    bool   `json:"recording"`
	Persistent   bool   `json:"persistent"`
	Inconsistent bool   `json:"inconsistent"`
	Busy         bool   `json:"busy"`
}

// queryBitmaps reads the dirty bitmaps of every image of a running domain
// from QEMU (query-named-block-nodes through libvirt): image file -> name.
func queryBitmaps(ctx context.Context, c *lv.Conn, dom libvirt.Domain) (map[string]map[string]bitmapState, error) {
	raw, err := c.NewMonitor(dom).Run(ctx, "query-named-block-nodes", map[string]any{"flat": true})
	if err != nil {
		return nil, err
	}
	var nodes []struct {
		File    string        `json:"file"`
		Image   struct{}      `json:"image"`
		Bitmaps []bitmapState `json:"dirty-bitmaps"`
	}
	if err := json.Unmarshal(raw, &nodes); err != nil {
		return nil, fmt.Errorf("query-named-block-nodes: %w", err)
	}
	out := map[string]map[string]bitmapState{}
	for _, n := range nodes {
		if out[n.File] == nil {
			out[n.File] = map[string]bitmapState{}
		}
		for _, b := range n.Bitmaps {
			out[n.File][b.Name] = b
		}
	}
	return out, nil
}

// planIncremental says why a disk needs a full backup, or "" when an
// incremental one from the previous point is sound.
func planIncremental(c *lv.Conn, dom libvirt.Domain, live bool, prev *Point, d *diskInfo, bitmaps map[string]map[string]bitmapState, full bool) string {
	switch {
	case full:
		return "--full was given"
	case prev == nil:
		return "no earlier restore point of this domain"
	}
	pd := prev.disk(d.target)
	switch {
	case pd == nil:
		return "the disk is new since restore point " + prev.ID
	case pd.Source != d.source:
		return fmt.Sprintf("the disk's image changed from %s to %s (an external snapshot or a replaced disk)", pd.Source, d.source)
	case pd.Size != d.size:
		return fmt.Sprintf("the disk was resized from %d to %d bytes", pd.Size, d.size)
	case d.format != "qcow2":
		return "a " + d.format + " image has no dirty bitmaps"
	case pd.Checkpoint == "":
		return "restore point " + prev.ID + " left no checkpoint for this disk"
	case !live:
		return "the domain is shut off"
	}
	if _, err := c.L.DomainCheckpointLookupByName(dom, pd.Checkpoint, 0); err != nil {
		return fmt.Sprintf("checkpoint %s of restore point %s is gone from libvirt", pd.Checkpoint, prev.ID)
	}
	if bitmaps == nil {
		return "the dirty bitmaps could not be read"
	}
	b, ok := bitmaps[d.source][pd.Checkpoint]
	switch {
	case !ok:
		return fmt.Sprintf("the image %s has no dirty bitmap %s (lost, or the VM was restarted from another image)", d.source, pd.Checkpoint)
	case b.Inconsistent:
		return fmt.Sprintf("dirty bitmap %s is inconsistent (QEMU stopped without saving it, e.g. a crash)", pd.Checkpoint)
	case !b.Recording:
		return fmt.Sprintf("dirty bitmap %s is not recording", pd.Checkpoint)
	}
	d.base, d.baseDisk = prev.ID, pd
	return ""
}

// runBackupJob starts a libvirt push-mode backup of all disks, with a new
// checkpoint, and waits for it. The returned cleanup removes the job's
// images.
func runBackupJob(ctx context.Context, c *lv.Conn, dom libvirt.Domain, opt BackupOptions, disks []*diskInfo, log *slog.Logger) (func(), error) {
	dir := filepath.Join(opt.Scratch, opt.Domain)
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return nil, fmt.Errorf("scratch directory %s: %w", dir, err)
	}
	os.Chmod(opt.Scratch, 0o711)
	if err := endStaleJob(ctx, c, dom, dir, log); err != nil {
		return nil, err
	}
	old, _ := filepath.Glob(filepath.Join(dir, "*.qcow2"))
	for _, f := range old {
		os.Remove(f)
	}
	cleanup := func() {
		for _, d := range disks {
			if d.scratch != "" {
				os.Remove(d.scratch)
			}
		}
	}
	cp := fmt.Sprintf("%s%s", CheckpointPrefix, time.Now().UTC().Format("20060102T150405.000000000Z"))
	build := func() (string, string, error) {
		bx := libvirtxml.DomainBackup{Push: &libvirtxml.DomainBackupPush{Disks: &libvirtxml.DomainBackupPushDisks{}}}
		cx := libvirtxml.DomainCheckpoint{Name: cp, Description: "vmwatch backup", Disks: &libvirtxml.DomainCheckpointDisks{}}
		for _, d := range disks {
			d.scratch = filepath.Join(dir, d.target+".qcow2")
			pd := libvirtxml.DomainBackupPushDisk{Name: d.target, Backup: "yes", BackupMode: "full",
				Driver: &libvirtxml.DomainBackupDiskDriver{Type: "qcow2"},
				Target: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: d.scratch}}}
			if d.mode == "incremental" {
				pd.BackupMode, pd.Incremental = "incremental", d.baseDisk.Checkpoint
			}
			bx.Push.Disks.Disks = append(bx.Push.Disks.Disks, pd)
			if d.format == "qcow2" {
				d.checkpoint = cp
				cx.Disks.Disks = append(cx.Disks.Disks, libvirtxml.DomainCheckpointDisk{Name: d.target, Checkpoint: "bitmap"})
			} else {
				d.checkpoint = ""
				cx.Disks.Disks = append(cx.Disks.Disks, libvirtxml.DomainCheckpointDisk{Name: d.target, Checkpoint: "no"})
			}
		}
		b, err := bx.Marshal()
		if err != nil {
			return "", "", err
		}
		cs, err := cx.Marshal()
		return b, cs, err
	}
	bxml, cxml, err := build()
	if err != nil {
		return cleanup, err
	}
	thaw := freeze(c, dom, opt.Freeze, log)
	err = c.L.DomainBackupBegin(dom, bxml, libvirt.OptString{cxml}, 0)
	if err != nil && anyIncremental(disks) {
		log.Warn("libvirt refused the incremental backup; taking a full backup of every disk", "err", err)
		for _, d := range disks {
			if d.mode == "incremental" {
				d.mode, d.reason, d.baseDisk = "full", "libvirt refused the incremental backup: "+err.Error(), nil
			}
		}
		if bxml, cxml, err = build(); err == nil {
			err = c.L.DomainBackupBegin(dom, bxml, libvirt.OptString{cxml}, 0)
		}
	}
	thaw()
	if err != nil {
		return cleanup, fmt.Errorf("domain %s: backup job: %w", opt.Domain, err)
	}
	return cleanup, waitJob(ctx, c, dom, opt, log)
}

func anyIncremental(disks []*diskInfo) bool {
	for _, d := range disks {
		if d.mode == "incremental" {
			return true
		}
	}
	return false
}

// freeze freezes the guest's file systems through the QEMU guest agent
// when asked and possible; the result thaws them.
func freeze(c *lv.Conn, dom libvirt.Domain, want bool, log *slog.Logger) func() {
	if !want {
		return func() {}
	}
	n, err := c.L.DomainFsfreeze(dom, nil, 0)
	if err != nil {
		log.Info("no guest agent answered; the backup is crash-consistent", "err", err)
		return func() {}
	}
	log.Info("the guest agent froze the guest's file systems", "filesystems", n)
	return func() {
		if _, err := c.L.DomainFsthaw(dom, nil, 0); err != nil {
			log.Error("thaw of the guest's file systems failed; thaw them with virsh domfsthaw", "err", err)
		}
	}
}

// libvirt job types and completion states (virDomainJobType)
const (
	jobNone      = 0
	jobCompleted = 3
	jobFailed    = 4
	jobCancelled = 5
)

// waitJob waits for the domain's backup job to end, reporting progress.
func waitJob(ctx context.Context, c *lv.Conn, dom libvirt.Domain, opt BackupOptions, log *slog.Logger) error {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		typ, _, _, total, processed, _, _, _, _, ftotal, fprocessed, _, err := c.L.DomainGetJobInfo(dom)
		if err != nil {
			return fmt.Errorf("domain %s: backup job: %w", opt.Domain, err)
		}
		if typ == jobNone {
			break
		}
		if total == 0 {
			total, processed = ftotal, fprocessed
		}
		if opt.Progress != nil && total > 0 {
			log.Debug("backup job", "done", processed, "total", total)
		}
		select {
		case <-ctx.Done():
			c.L.DomainAbortJob(dom)
			return ctx.Err()
		case <-t.C:
		}
	}
	typ, params, err := c.L.DomainGetJobStats(dom, libvirt.DomainJobStatsCompleted)
	if err != nil {
		return fmt.Errorf("domain %s: backup job result: %w", opt.Domain, err)
	}
	if typ == jobCompleted {
		return nil
	}
	msg := "no reason given"
	for _, p := range params {
		if p.Field == "errmsg" {
			msg = fmt.Sprint(p.Value.I)
		}
	}
	what := "failed"
	if typ == jobCancelled {
		what = "was cancelled"
	}
	return fmt.Errorf("domain %s: the backup job %s: %s", opt.Domain, what, msg)
}

// endStaleJob aborts a backup job into our scratch directory that an
// earlier vmwatch left behind (killed while it waited); any other job is
// an error.
func endStaleJob(ctx context.Context, c *lv.Conn, dom libvirt.Domain, dir string, log *slog.Logger) error {
	typ, _, _, _, _, _, _, _, _, _, _, _, err := c.L.DomainGetJobInfo(dom)
	if err != nil || typ == jobNone {
		return err
	}
	x, err := c.L.DomainBackupGetXMLDesc(dom, 0)
	if err != nil || !strings.Contains(x, dir+"/") {
		return fmt.Errorf("the domain has a job running (virsh domjobinfo shows it); try again when it has ended")
	}
	log.Warn("aborting a backup job left by an earlier vmwatch run", "scratch", dir)
	if err := c.L.DomainAbortJob(dom); err != nil {
		log.Debug("abort", "err", err)
	}
	for range 100 {
		typ, _, _, _, _, _, _, _, _, _, _, _, err := c.L.DomainGetJobInfo(dom)
		if err != nil {
			return err
		}
		if typ == jobNone {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return errors.New("the earlier backup job does not end; abort it with virsh domjobabort")
}

// ownCheckpoints lists the checkpoints of a domain that vmwatch made.
func ownCheckpoints(c *lv.Conn, dom libvirt.Domain) ([]libvirt.DomainCheckpoint, error) {
	cps, _, err := c.L.DomainListAllCheckpoints(dom, -1, 0)
	if err != nil {
		return nil, err
	}
	var out []libvirt.DomainCheckpoint
	for _, cp := range cps {
		if strings.HasPrefix(cp.Name, CheckpointPrefix) {
			out = append(out, cp)
		}
	}
	return out, nil
}

// pruneCheckpoints deletes vmwatch's older checkpoints of the domain: the
// next incremental backup needs only the newest.
func pruneCheckpoints(c *lv.Conn, dom libvirt.Domain, disks []*diskInfo, log *slog.Logger) {
	keep := map[string]bool{}
	for _, d := range disks {
		keep[d.checkpoint] = true
	}
	cps, err := ownCheckpoints(c, dom)
	if err != nil {
		log.Warn("cannot list checkpoints", "err", err)
		return
	}
	for _, cp := range cps {
		if keep[cp.Name] {
			continue
		}
		if err := c.L.DomainCheckpointDelete(cp, 0); err != nil {
			// its bitmap is gone (QEMU crashed): drop libvirt's record
			if err2 := c.L.DomainCheckpointDelete(cp, libvirt.DomainCheckpointDeleteMetadataOnly); err2 != nil {
				log.Warn("cannot delete an old checkpoint", "checkpoint", cp.Name, "err", err, "metadata_only", err2)
			} else {
				log.Info("deleted the record of a checkpoint whose bitmap is gone", "checkpoint", cp.Name, "err", err)
			}
		}
	}
}

// ForgetCheckpoints drops libvirt's records of vmwatch's checkpoints of a
// domain whose images were replaced (a restore: they have no bitmaps any
// more), so that its next backup is a full one.
func ForgetCheckpoints(c *lv.Conn, dom libvirt.Domain) error {
	cps, err := ownCheckpoints(c, dom)
	if err != nil {
		return err
	}
	for _, cp := range cps {
		if err := c.L.DomainCheckpointDelete(cp, libvirt.DomainCheckpointDeleteMetadataOnly); err != nil {
			return fmt.Errorf("checkpoint %s: %w", cp.Name, err)
		}
	}
	return nil
}
