package backup

import (
	"context"
	cryptorand "crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kopia/kopia/repo"
)

func qemuIO(t *testing.T, img string, cmds ...string) {
	t.Helper()
	args := []string{"-f", "qcow2"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	if out, err := exec.Command("qemu-io", append(args, img)...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io %v: %v: %s (apt-get install qemu-utils)", cmds, err, out)
	}
}

func qemuImg(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %v: %v: %s (apt-get install qemu-utils)", args, err, out)
	}
}

// rawSHA is the checksum of an image's content as qemu-img reads it.
func rawSHA(t *testing.T, img string) string {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "x.raw")
	qemuImg(t, "convert", "-O", "raw", img, raw)
	return fileSHA(t, raw)
}

func fileSHA(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestIngestRestore stores an image in full, then an incremental change
// shaped like a libvirt backup job's target (a qcow2 overlay, backed by the
// live disk, with only the changed clusters allocated, one of them written
// as zeros), and restores both; qemu-img is the judge of the content.
func TestIngestRestore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.qcow2")
	qemuImg(t, "create", "-f", "qcow2", disk, "21M") // not a multiple of the segment size
	qemuIO(t, disk, "write -P 0x11 0 5M", "write -P 0x22 12M 64k", "write -P 0x33 20M 1M")
	full := rawSHA(t, disk)

	r, err := Open(ctx, Options{Location: filepath.Join(dir, "repo"), Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(ctx)
	img, f, err := openDisk(disk)
	if err != nil {
		t.Fatal(err)
	}
	d1 := storeSource(t, r, img, img.Size(), nil, "unit", time.Now().Add(-time.Hour))
	img.Close()
	f.Close()
	if want := int64(5<<20 + 64<<10 + 1<<20); d1.Read != want {
		t.Errorf("full: read %d bytes, want %d (the clusters that are not zero)", d1.Read, want)
	}

	// the changes, as a backup job's target would hold them
	overlay := filepath.Join(dir, "incr.qcow2")
	qemuImg(t, "create", "-f", "qcow2", "-b", disk, "-F", "qcow2", overlay)
	qemuIO(t, overlay, "write -P 0x44 1M 128k", "write -z 12M 64k", "write -P 0x55 16M 64k")
	want2 := rawSHA(t, overlay)
	img, f, err = openTarget(overlay)
	if err != nil {
		t.Fatal(err)
	}
	d2 := storeSource(t, r, img, d1.Size, d1, "unit", time.Now())
	img.Close()
	f.Close()
	if want := int64(128<<10 + 64<<10); d2.Read != want {
		t.Errorf("incremental: read %d bytes, want %d (the allocated data clusters)", d2.Read, want)
	}
	if d2.Segments[1] != d1.Segments[1] || d2.Segments[0] == d1.Segments[0] {
		t.Errorf("incremental: segment 0 changed and segment 1 did not, got %v / %v", d2.Segments[:2], d1.Segments[:2])
	}

	pts, err := r.Points(ctx, "unit")
	if err != nil || len(pts) != 2 {
		t.Fatalf("points: %v %v", pts, err)
	}
	for i, want := range []string{full, want2} {
		p, err := r.Load(ctx, pts[i])
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(dir, "restored"+p.ID+".raw")
		if err := r.RestoreDisk(ctx, p, "vda", out, "", false, nil); err != nil {
			t.Fatal(err)
		}
		if got := fileSHA(t, out); got != want {
			t.Errorf("restore point %d: sha256 %s, qemu-img reads %s", i+1, got, want)
		}
		if probs, err := r.Verify(ctx, p, nil); err != nil || len(probs) != 0 {
			t.Errorf("verify point %d: %v %v", i+1, probs, err)
		}
	}
	if err := r.RestoreDisk(ctx, pts[0], "vdz", filepath.Join(dir, "x"), "", false, nil); err == nil {
		t.Error("restore of a disk the point does not have did not fail")
	}
}

// BenchmarkIngest stores a qcow2 image holding 128 MiB of random data (a
// full backup without libvirt: the storage side's throughput).
func BenchmarkIngest(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	raw := filepath.Join(dir, "x.raw")
	f, _ := os.Create(raw)
	buf := make([]byte, 1<<20)
	for i := 0; i < 128; i++ {
		cryptorand.Read(buf)
		f.Write(buf)
	}
	f.Close()
	disk := filepath.Join(dir, "x.qcow2")
	if out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, disk).CombinedOutput(); err != nil {
		b.Fatalf("%v: %s", err, out)
	}
	b.SetBytes(128 << 20)
	for i := 0; i < b.N; i++ {
		b.StopTimer() // a new repository each time (else all is deduplicated)
		r, err := Open(ctx, Options{Location: filepath.Join(dir, fmt.Sprint("repo", i)), Create: true})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		img, f, err := openDisk(disk)
		if err != nil {
			b.Fatal(err)
		}
		err = repo.WriteSession(ctx, r.rep, repo.WriteSessionOptions{Purpose: "bench"}, func(ctx context.Context, w repo.RepositoryWriter) error {
			_, err := ingest(ctx, r, w, img, img.Size(), nil, nil, nil)
			return err
		})
		img.Close()
		f.Close()
		b.StopTimer()
		r.Close(ctx)
		b.StartTimer()
		if err != nil {
			b.Fatal(err)
		}
	}
}

// storeImage stores a disk image as a full restore point of domain and
// returns it loaded.
func storeImage(t *testing.T, r *Repo, disk, domain string) *Point {
	t.Helper()
	return storeImageAt(t, r, disk, domain, time.Now())
}

func storeImageAt(t *testing.T, r *Repo, disk, domain string, at time.Time) *Point {
	t.Helper()
	img, f, err := openDisk(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	defer img.Close()
	storeSource(t, r, img, img.Size(), nil, domain, at)
	pts, err := r.Points(context.Background(), domain)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pts {
		if p.Time.Equal(at.UTC()) {
			full, err := r.Load(context.Background(), p)
			if err != nil {
				t.Fatal(err)
			}
			return full
		}
	}
	t.Fatalf("the point stored at %v is not listed", at)
	return nil
}

// storeSource stores an image (full, or incremental over base) as a
// restore point of domain with disk vda, and returns the disk.
func storeSource(t *testing.T, r *Repo, src source, size int64, base *Disk, domain string, at time.Time) *Disk {
	t.Helper()
	ctx := context.Background()
	p := &Point{Domain: domain, Time: at}
	var out *Disk
	err := repo.WriteSession(ctx, r.rep, repo.WriteSessionOptions{Purpose: "test"}, func(ctx context.Context, w repo.RepositoryWriter) error {
		d, err := ingest(ctx, r, w, src, size, base, nil, nil)
		if err != nil {
			return err
		}
		d.Target = "vda"
		out = d
		p.Disks = []Disk{*d}
		return savePoint(ctx, w, p, "<domain/>")
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestPruneRepository: restore points with synthetic timestamps (the ones
// of TestSelect) are pruned in a real repository: exactly the points the
// policy keeps remain, each still restores, and the data only the removed
// ones held is released.
func TestPruneRepository(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	r, err := Open(ctx, Options{Location: filepath.Join(dir, "repo"), Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(ctx)
	disk := filepath.Join(dir, "disk.qcow2")
	names := []string{"K", "J", "I", "H", "G", "F", "E", "D", "C", "B", "A"}
	times := []string{"2026-09-15 12:00", "2026-10-01 12:00", "2026-10-31 12:00", "2026-11-15 12:00", "2026-11-20 12:00",
		"2026-11-23 12:00", "2026-11-26 12:00", "2026-11-27 06:00", "2026-11-27 18:00", "2026-11-28 06:00", "2026-11-28 18:00"}
	ids := map[string]string{}
	content := map[string]string{}
	for i, n := range names {
		// each point holds different random data (incompressible)
		raw := filepath.Join(dir, "rand.raw")
		b := make([]byte, 1<<20)
		cryptorand.Read(b)
		os.WriteFile(raw, b, 0o600)
		os.Truncate(raw, 4<<20)
		os.Remove(disk)
		qemuImg(t, "convert", "-f", "raw", "-O", "qcow2", raw, disk)
		at, _ := time.Parse("2006-01-02 15:04", times[i])
		p := storeImageAt(t, r, disk, "unit", at)
		ids[p.ID] = n
		content[n] = rawSHA(t, disk)
	}
	pts, err := r.Points(ctx, "unit")
	if err != nil {
		t.Fatal(err)
	}
	var remove []string
	for _, d := range Select(pts, Keep{Last: 1, Daily: 2, Weekly: 2, Monthly: 2}, time.UTC) {
		if !d.Keep {
			remove = append(remove, d.Point.ID)
		}
	}
	before, err := r.ContentStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	diskBefore := treeBytes(t, filepath.Join(dir, "repo"))
	if err := r.Delete(ctx, remove); err != nil {
		t.Fatal(err)
	}
	cs, err := r.Collect(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	pts, err = r.Points(ctx, "unit")
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, p := range pts {
		kept = append(kept, ids[p.ID])
		full, err := r.Load(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(dir, "r-"+p.ID)
		if err := r.RestoreDisk(ctx, full, "vda", out, "raw", false, nil); err != nil {
			t.Fatalf("restore of kept point %s after prune: %v", ids[p.ID], err)
		}
		if got := fileSHA(t, out); got != content[ids[p.ID]] {
			t.Errorf("kept point %s restores to other data after prune", ids[p.ID])
		}
	}
	if got := strings.Join(kept, ""); got != "KIHGECA" {
		t.Errorf("kept %s, want KIHGECA (oldest first)", got)
	}
	// four points of 1 MiB random data each were removed: their data is no
	// longer referenced. With no safety margin kopia either keeps it marked
	// deleted in the index or, when the deletion is older than the
	// collection's start (a matter of which second each fell in), drops it
	// from the index and deletes its packs: then the repository's files
	// shrink instead.
	diskAfter := treeBytes(t, filepath.Join(dir, "repo"))
	if freed := before.LiveBytes - cs.LiveBytes; freed < 4<<20 || (cs.UnreferencedBytes < 4<<20 && diskBefore-diskAfter < 4<<20) {
		t.Errorf("after prune: live %d -> %d bytes, unreferenced %d, repository files %d -> %d bytes; want 4 MiB less live, and 4 MiB unreferenced or 4 MiB less on disk",
			before.LiveBytes, cs.LiveBytes, cs.UnreferencedBytes, diskBefore, diskAfter)
	}
}

// treeBytes is the size of the regular files under dir.
func treeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			n += fi.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
