package backup

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/kopia/kopia/repo"
	"github.com/kopia/kopia/repo/object"
	"github.com/lima-vm/go-qcow2reader"
	"github.com/lima-vm/go-qcow2reader/image"
	"github.com/lima-vm/go-qcow2reader/image/qcow2"
	"github.com/lima-vm/go-qcow2reader/image/raw"
)

// SegmentSize is the unit of change tracking in the repository: an
// incremental backup rewrites only the segments that hold changed clusters
// and refers to the others.
const SegmentSize = 4 << 20

// source is what a backup reads: the target image of a libvirt backup job
// (where, for an incremental backup, only the changed clusters are
// allocated) or a disk image itself.
type source interface {
	io.ReaderAt
	Extent(start, length int64) (image.Extent, error)
	Size() int64
}

// notBelow stands in for the backing file of an incremental backup's
// target (libvirt makes the live disk its backing file): clusters that
// the job did not write read as "not allocated here", and are never read.
type notBelow struct{ size int64 }

func (n notBelow) ReadAt(p []byte, off int64) (int, error) { clear(p); return len(p), nil }
func (n notBelow) Close() error                            { return nil }
func (n notBelow) Type() image.Type                        { return raw.Type }
func (n notBelow) Size() int64                             { return n.size }
func (n notBelow) Readable() error                         { return nil }
func (n notBelow) Extent(start, length int64) (image.Extent, error) {
	return image.Extent{Start: start, Length: length, Zero: true}, nil
}

// openTarget opens the qcow2 file a backup job wrote, ignoring its backing
// file.
func openTarget(path string) (image.Image, *os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	img, err := qcow2.Open(f, func(ra io.ReaderAt, t image.Type) (image.Image, error) {
		if c, ok := ra.(io.Closer); ok {
			c.Close()
		}
		return notBelow{size: 1 << 62}, nil
	})
	if err == nil {
		err = img.Readable()
	}
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("backup target %s: %w", path, err)
	}
	return img, f, nil
}

// openDisk opens a disk image (qcow2 with its backing chain, or raw) for an
// offline backup.
func openDisk(path string) (image.Image, *os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("disk %s: %w", path, err)
	}
	img, err := qcow2reader.Open(f)
	if err == nil {
		err = img.Readable()
	}
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("disk %s: %w", path, err)
	}
	return img, f, nil
}

// Progress reports bytes done of a total.
type Progress func(done, total int64)

// ingest stores one disk image as segments. With base == nil every cluster
// that does not read as zeros is read (a full backup); otherwise only the
// clusters allocated in src are read and laid over the base's segments
// (an incremental backup).
func ingest(ctx context.Context, r *Repo, w repo.RepositoryWriter, src source, size int64, base *Disk, progress Progress, lim *limiter) (*Disk, error) {
	d := &Disk{Size: size, SegmentSize: SegmentSize, Mode: "full"}
	if base != nil {
		d.Mode, d.Base = "incremental", base.Object
		if base.Size != size || base.SegmentSize != SegmentSize || int64(len(base.Segments)) != nsegs(size) {
			return nil, fmt.Errorf("incremental backup over a base of another size (%d, not %d bytes)", base.Size, size)
		}
	}
	n := nsegs(size)
	d.Segments = make([]Segment, n)
	type job struct {
		i   int64
		buf []byte
	}
	jobs := make(chan job)
	pool := sync.Pool{New: func() any { return make([]byte, SegmentSize) }}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		werr    error
		changed int64
	)
	zero := map[int64]Segment{}
	workers := max(2, runtime.GOMAXPROCS(0))
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				sum := sha256.Sum256(j.buf)
				s := Segment{SHA256: hex.EncodeToString(sum[:])}
				if base != nil && base.Segments[j.i].SHA256 == s.SHA256 {
					s.Object = base.Segments[j.i].Object
				} else {
					id, err := putObject(ctx, w, j.buf, fmt.Sprintf("segment %d", j.i))
					s.Object = id
					mu.Lock()
					if err != nil && werr == nil {
						werr = err
					}
					changed += int64(len(j.buf))
					mu.Unlock()
				}
				d.Segments[j.i] = s
				pool.Put(j.buf[:cap(j.buf)])
			}
		}()
	}
	fail := func(err error) (*Disk, error) {
		close(jobs)
		wg.Wait()
		return nil, err
	}
	for i := int64(0); i < n; i++ {
		if err := ctx.Err(); err != nil {
			return fail(err)
		}
		mu.Lock()
		err := werr
		mu.Unlock()
		if err != nil {
			return fail(err)
		}
		off := i * SegmentSize
		end := min(off+SegmentSize, size)
		// which clusters of this segment are to be read or zeroed
		type span struct {
			off, n int64
			zero   bool
		}
		var spans []span
		for pos := off; pos < end; {
			ext, err := src.Extent(pos, end-pos)
			if err != nil {
				return fail(fmt.Errorf("extent at %d: %w", pos, err))
			}
			l := min(ext.Start+ext.Length, end) - pos
			if l <= 0 {
				return fail(fmt.Errorf("image extent at %d has no length", pos))
			}
			take := !ext.Zero
			if base != nil {
				take = ext.Allocated
			}
			if take {
				spans = append(spans, span{pos, l, ext.Zero})
			}
			pos += l
		}
		if base != nil && len(spans) == 0 {
			d.Segments[i] = base.Segments[i]
			continue
		}
		if base == nil && len(spans) == 0 { // reads as zeros: one shared object
			l := end - off
			if zero[l].Object == "" {
				z := make([]byte, l)
				id, err := putObject(ctx, w, z, "zero segment")
				if err != nil {
					return fail(err)
				}
				sum := sha256.Sum256(z)
				zero[l] = Segment{Object: id, SHA256: hex.EncodeToString(sum[:])}
			}
			d.Segments[i] = zero[l]
			if progress != nil {
				progress(end, size)
			}
			continue
		}
		buf := pool.Get().([]byte)[:end-off]
		if base != nil {
			if err := r.readObject(ctx, base.Segments[i].Object, buf); err != nil {
				return fail(fmt.Errorf("base segment %d: %w", i, err))
			}
		} else {
			clear(buf)
		}
		for _, s := range spans {
			part := buf[s.off-off : s.off-off+s.n]
			if s.zero {
				clear(part)
				continue
			}
			if _, err := src.ReadAt(part, s.off); err != nil && !(errors.Is(err, io.EOF) && s.off+s.n == size) {
				return fail(fmt.Errorf("read at %d: %w", s.off, err))
			}
			d.Read += s.n
			if err := lim.wait(ctx, s.n); err != nil {
				return fail(err)
			}
		}
		jobs <- job{i, buf}
		if progress != nil {
			progress(end, size)
		}
	}
	close(jobs)
	wg.Wait()
	if werr != nil {
		return nil, werr
	}
	d.Changed = changed
	ids := make([]object.ID, len(d.Segments))
	for i, s := range d.Segments {
		id, err := object.ParseID(s.Object)
		if err != nil {
			return nil, err
		}
		ids[i] = id
	}
	if len(ids) == 0 { // an empty disk
		id, err := putObject(ctx, w, nil, "empty image")
		if err != nil {
			return nil, err
		}
		d.Object = id
		return d, nil
	}
	oid, err := w.ConcatenateObjects(ctx, ids, repo.ConcatenateOptions{Compressor: "zstd-fastest"})
	if err != nil {
		return nil, fmt.Errorf("concatenate %d segments: %w", len(ids), err)
	}
	d.Object = oid.String()
	return d, nil
}

func nsegs(size int64) int64 { return (size + SegmentSize - 1) / SegmentSize }

func putObject(ctx context.Context, w repo.RepositoryWriter, data []byte, desc string) (string, error) {
	ow := w.NewObjectWriter(ctx, object.WriterOptions{Description: desc, Compressor: "zstd-fastest"})
	defer ow.Close()
	if _, err := ow.Write(data); err != nil {
		return "", err
	}
	id, err := ow.Result()
	if err != nil {
		return "", err
	}
	return id.String(), nil
}

// readObject reads a whole object of exactly len(buf) bytes.
func (r *Repo) readObject(ctx context.Context, id string, buf []byte) error {
	rd, err := r.OpenObject(ctx, id)
	if err != nil {
		return err
	}
	defer rd.Close()
	if rd.Length() != int64(len(buf)) {
		return fmt.Errorf("object %s has %d bytes, expected %d", id, rd.Length(), len(buf))
	}
	_, err = io.ReadFull(rd, buf)
	return err
}

// isZero reports whether b holds only zero bytes.
func isZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	return len(b) == 0 || bytes.Count(b, []byte{0}) == len(b)
}

// limiter bounds the rate at which a backup reads the disk (bytes per
// second), so that a backup does not starve the VMs of I/O.
type limiter struct {
	rate  int64
	start time.Time
	n     int64
}

func newLimiter(rate int64) *limiter {
	if rate <= 0 {
		return nil
	}
	return &limiter{rate: rate, start: time.Now()}
}

func (l *limiter) wait(ctx context.Context, n int64) error {
	if l == nil {
		return nil
	}
	l.n += n
	due := l.start.Add(time.Duration(float64(l.n) / float64(l.rate) * float64(time.Second)))
	if d := time.Until(due); d > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
		}
	}
	return nil
}
