package backup

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/kopia/kopia/fs"
	"github.com/kopia/kopia/repo"
	"github.com/kopia/kopia/repo/manifest"
	"github.com/kopia/kopia/repo/object"
	"github.com/kopia/kopia/snapshot"
	"github.com/kopia/kopia/snapshot/snapshotfs"
)

// SourceHost and SourceUser name the kopia snapshot source of every restore
// point; the path is "libvirt:DOMAIN".
const (
	SourceHost = "vmwatch"
	SourceUser = "vmwatch"
	metaFile   = "vmwatch.json"
	xmlFile    = "domain.xml"
)

// Segment is one fixed-size piece of a disk image, stored as one object.
type Segment struct {
	Object string `json:"object"`
	SHA256 string `json:"sha256"`
}

// Disk is one disk of a restore point.
type Disk struct {
	Target     string `json:"target"` // vda
	Source     string `json:"source"` // the image file at backup time
	Format     string `json:"format"` // qcow2, raw
	Size       int64  `json:"size"`   // virtual size in bytes
	Mode       string `json:"mode"`   // full or incremental
	Base       string `json:"base,omitempty"`
	FullReason string `json:"full_reason,omitempty"`
	// Checkpoint is the libvirt checkpoint whose dirty bitmap counts the
	// changes since this point; the next incremental backup starts there.
	Checkpoint  string    `json:"checkpoint,omitempty"`
	Object      string    `json:"object"` // the whole image
	SegmentSize int64     `json:"segment_size"`
	Segments    []Segment `json:"segments"`
	Read        int64     `json:"read"`    // bytes read from the disk
	Changed     int64     `json:"changed"` // bytes of segments that differ from the base
}

// Finding is a finding open on the VM when the point was taken.
type Finding struct {
	ID       string `json:"id"`
	Severity string `json:"severity"`
	Title    string `json:"title"`
	Since    string `json:"since,omitempty"`
}

// Point is a restore point.
type Point struct {
	ID       string        `json:"id"`
	Domain   string        `json:"domain"`
	Host     string        `json:"host"`
	Time     time.Time     `json:"time"`
	Duration time.Duration `json:"duration_ns"`
	Kind     string        `json:"kind"` // full or incremental (incremental when any disk is)
	State    string        `json:"domain_state"`
	Read     int64         `json:"read"`
	Added    int64         `json:"added"`
	Size     int64         `json:"size"`
	Disks    []Disk        `json:"disks"`
	// Security is "clean", "findings" or "unknown: why"; Findings the open
	// findings (medium and above) at backup time.
	Security string    `json:"security"`
	Findings []Finding `json:"findings,omitempty"`
	root     object.ID
}

func sourceOf(domain string) snapshot.SourceInfo {
	return snapshot.SourceInfo{Host: SourceHost, UserName: SourceUser, Path: "libvirt:" + domain}
}

// savePoint writes the point's directory (disk images, domain XML, metadata)
// and its snapshot manifest; it sets p.ID.
func savePoint(ctx context.Context, w repo.RepositoryWriter, p *Point, domainXML string) error {
	b := &snapshotfs.DirManifestBuilder{}
	mt := fs.UTCTimestamp(p.Time.UnixNano())
	for _, d := range p.Disks {
		oid, err := object.ParseID(d.Object)
		if err != nil {
			return err
		}
		b.AddEntry(&snapshot.DirEntry{Name: d.Target + ".img", Type: snapshot.EntryTypeFile, Permissions: 0o600, FileSize: d.Size, ModTime: mt, ObjectID: oid})
	}
	put := func(name string, data []byte) error {
		ow := w.NewObjectWriter(ctx, object.WriterOptions{Description: name, Compressor: "zstd-fastest"})
		defer ow.Close()
		if _, err := ow.Write(data); err != nil {
			return err
		}
		oid, err := ow.Result()
		if err != nil {
			return err
		}
		b.AddEntry(&snapshot.DirEntry{Name: name, Type: snapshot.EntryTypeFile, Permissions: 0o600, FileSize: int64(len(data)), ModTime: mt, ObjectID: oid})
		return nil
	}
	meta, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return err
	}
	if err := put(metaFile, meta); err != nil {
		return err
	}
	if err := put(xmlFile, []byte(domainXML)); err != nil {
		return err
	}
	dm := b.Build(mt, "")
	root, err := snapshotfs.WriteDirManifest(ctx, w, "", dm, "zstd-fastest")
	if err != nil {
		return err
	}
	man := &snapshot.Manifest{
		Source:      sourceOf(p.Domain),
		Description: fmt.Sprintf("vmwatch %s backup of %s", p.Kind, p.Domain),
		StartTime:   mt,
		EndTime:     fs.UTCTimestamp(p.Time.Add(p.Duration).UnixNano()),
		RootEntry:   &snapshot.DirEntry{Name: "libvirt:" + p.Domain, Type: snapshot.EntryTypeDirectory, ObjectID: root, DirSummary: dm.Summary},
		Tags: map[string]string{
			"vmwatch-kind":     p.Kind,
			"vmwatch-read":     strconv.FormatInt(p.Read, 10),
			"vmwatch-added":    strconv.FormatInt(p.Added, 10),
			"vmwatch-size":     strconv.FormatInt(p.Size, 10),
			"vmwatch-security": p.Security,
			"vmwatch-findings": strconv.Itoa(len(p.Findings)),
		},
	}
	id, err := snapshot.SaveSnapshot(ctx, w, man)
	if err != nil {
		return err
	}
	p.ID = string(id)
	p.root = root
	return nil
}

// Points lists the restore points, oldest first; domain "" lists all.
// Only the summaries are loaded (from the manifests' tags); Load reads the
// rest.
func (r *Repo) Points(ctx context.Context, domain string) ([]*Point, error) {
	var src *snapshot.SourceInfo
	if domain != "" {
		s := sourceOf(domain)
		src = &s
	}
	ids, err := snapshot.ListSnapshotManifests(ctx, r.rep, src, nil)
	if err != nil {
		return nil, fmt.Errorf("repository %s: list restore points: %w", r.Location, err)
	}
	mans, err := snapshot.LoadSnapshots(ctx, r.rep, ids)
	if err != nil {
		return nil, fmt.Errorf("repository %s: load restore points: %w", r.Location, err)
	}
	var out []*Point
	for _, m := range mans {
		if m.Source.Host != SourceHost || m.Source.UserName != SourceUser || len(m.Source.Path) < 8 || m.Source.Path[:8] != "libvirt:" || m.IncompleteReason != "" {
			continue
		}
		p := &Point{ID: string(m.ID), Domain: m.Source.Path[8:], Host: SourceHost, Time: m.StartTime.ToTime().UTC(),
			Duration: m.EndTime.ToTime().Sub(m.StartTime.ToTime()), Kind: m.Tags["vmwatch-kind"], Security: m.Tags["vmwatch-security"], root: m.RootObjectID()}
		p.Read, _ = strconv.ParseInt(m.Tags["vmwatch-read"], 10, 64)
		p.Added, _ = strconv.ParseInt(m.Tags["vmwatch-added"], 10, 64)
		p.Size, _ = strconv.ParseInt(m.Tags["vmwatch-size"], 10, 64)
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Time.Equal(out[j].Time) {
			return out[i].Time.Before(out[j].Time)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// Point finds a restore point by its id (a unique prefix is enough).
func (r *Repo) Point(ctx context.Context, id string) (*Point, error) {
	all, err := r.Points(ctx, "")
	if err != nil {
		return nil, err
	}
	var found *Point
	for _, p := range all {
		if p.ID == id {
			return r.Load(ctx, p)
		}
		if len(id) >= 4 && len(p.ID) > len(id) && p.ID[:len(id)] == id {
			if found != nil {
				return nil, fmt.Errorf("restore point %q is ambiguous (%s, %s); give more of the id", id, found.ID, p.ID)
			}
			found = p
		}
	}
	if found == nil {
		return nil, fmt.Errorf("restore point %q not in %s (list them with vmwatch backups)", id, r.Location)
	}
	return r.Load(ctx, found)
}

// dir reads the directory of a point.
func (r *Repo) dir(ctx context.Context, p *Point) (map[string]*snapshot.DirEntry, error) {
	rd, err := r.rep.OpenObject(ctx, p.root)
	if err != nil {
		return nil, fmt.Errorf("restore point %s: directory: %w", p.ID, err)
	}
	defer rd.Close()
	var dm snapshot.DirManifest
	if err := json.NewDecoder(io.LimitReader(rd, 64<<20)).Decode(&dm); err != nil {
		return nil, fmt.Errorf("restore point %s: directory: %w", p.ID, err)
	}
	out := map[string]*snapshot.DirEntry{}
	for _, e := range dm.Entries {
		out[e.Name] = e
	}
	return out, nil
}

func (r *Repo) readEntry(ctx context.Context, p *Point, name string, limit int64) ([]byte, error) {
	ents, err := r.dir(ctx, p)
	if err != nil {
		return nil, err
	}
	e := ents[name]
	if e == nil {
		return nil, fmt.Errorf("restore point %s has no %s", p.ID, name)
	}
	rd, err := r.rep.OpenObject(ctx, e.ObjectID)
	if err != nil {
		return nil, fmt.Errorf("restore point %s: %s: %w", p.ID, name, err)
	}
	defer rd.Close()
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, io.LimitReader(rd, limit)); err != nil {
		return nil, fmt.Errorf("restore point %s: %s: %w", p.ID, name, err)
	}
	return buf.Bytes(), nil
}

// Load reads a point's full metadata (disks, segments, findings).
func (r *Repo) Load(ctx context.Context, p *Point) (*Point, error) {
	b, err := r.readEntry(ctx, p, metaFile, 1<<30)
	if err != nil {
		return nil, err
	}
	full, err := parsePoint(b)
	if err != nil {
		return nil, fmt.Errorf("restore point %s: %s: %w", p.ID, metaFile, err)
	}
	full.ID, full.root = p.ID, p.root
	return full, nil
}

// parsePoint reads a point's metadata and checks that it describes images
// this version can read: a repository may be damaged, or (without a
// password of its own) forged.
func parsePoint(b []byte) (*Point, error) {
	p := &Point{}
	if err := json.Unmarshal(b, p); err != nil {
		return nil, err
	}
	if len(p.Disks) > 1024 {
		return nil, fmt.Errorf("%d disks", len(p.Disks))
	}
	for i := range p.Disks {
		d := &p.Disks[i]
		switch {
		case d.Target == "" || len(d.Target) > 64 || strings.ContainsAny(d.Target, "/\x00"):
			return nil, fmt.Errorf("disk %d: bad target name %q", i, d.Target)
		case d.SegmentSize != SegmentSize:
			return nil, fmt.Errorf("disk %s: segment size %d (this version reads %d)", d.Target, d.SegmentSize, SegmentSize)
		case d.Size < 0 || d.Size > 1<<50:
			return nil, fmt.Errorf("disk %s: size %d", d.Target, d.Size)
		case int64(len(d.Segments)) != nsegs(d.Size):
			return nil, fmt.Errorf("disk %s: %d segments for %d bytes", d.Target, len(d.Segments), d.Size)
		}
		for j, sg := range d.Segments {
			if len(sg.SHA256) != 64 || sg.Object == "" {
				return nil, fmt.Errorf("disk %s: segment %d: bad object or hash", d.Target, j)
			}
		}
	}
	return p, nil
}

// DomainXML returns the domain definition saved with a point.
func (r *Repo) DomainXML(ctx context.Context, p *Point) (string, error) {
	b, err := r.readEntry(ctx, p, xmlFile, 16<<20)
	return string(b), err
}

// Delete removes restore points (their manifests; the data they alone
// referenced is freed by Maintenance).
func (r *Repo) Delete(ctx context.Context, ids []string) error {
	return repo.WriteSession(ctx, r.rep, repo.WriteSessionOptions{Purpose: "vmwatch prune"}, func(ctx context.Context, w repo.RepositoryWriter) error {
		for _, id := range ids {
			if err := w.DeleteManifest(ctx, manifest.ID(id)); err != nil {
				return fmt.Errorf("delete restore point %s: %w", id, err)
			}
		}
		return nil
	})
}

// BeforeCompromise picks the newest restore point taken before the VM was
// compromised: the newest point must hold an open high or critical
// finding; the compromise began at the earliest of the points since which
// such findings were open without a break (or the earliest "since" time
// they carry); the pick is the newest point before that without any. points
// must be loaded (Load) and sorted oldest first.
func BeforeCompromise(points []*Point) (*Point, string, error) {
	bad := func(p *Point) (bool, time.Time) {
		var first time.Time
		hit := false
		for _, f := range p.Findings {
			if f.Severity == "high" || f.Severity == "critical" {
				hit = true
				if t, err := time.Parse(time.RFC3339, f.Since); err == nil && (first.IsZero() || t.Before(first)) {
					first = t
				}
			}
		}
		if hit && (first.IsZero() || p.Time.Before(first)) {
			first = p.Time
		}
		return hit, first
	}
	if len(points) == 0 {
		return nil, "", fmt.Errorf("no restore points")
	}
	last := points[len(points)-1]
	if hit, _ := bad(last); !hit {
		return nil, "", fmt.Errorf("the newest restore point of %s (%s, security %q) has no open high or critical finding; choose one with --point", last.Domain, last.ID, last.Security)
	}
	since := last.Time
	for i := len(points) - 1; i >= 0; i-- {
		hit, t := bad(points[i])
		if !hit {
			break
		}
		if t.Before(since) {
			since = t
		}
	}
	for i := len(points) - 1; i >= 0; i-- {
		p := points[i]
		if hit, _ := bad(p); !hit && p.Time.Before(since) && !strings.HasPrefix(p.Security, "unknown") && p.Security != "not checked" {
			return p, fmt.Sprintf("compromised since %s (first open high or critical finding); restoring %s of %s, the newest restore point before it", since.Local().Format(time.DateTime), p.ID, p.Time.Local().Format(time.DateTime)), nil
		}
	}
	return nil, "", fmt.Errorf("no restore point of %s was taken (and checked clean) before %s, when the open high or critical findings began", last.Domain, since.Local().Format(time.DateTime))
}
