package backup

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Problem is a block of a restore point that does not read back as it was
// stored.
type Problem struct {
	Point  string `json:"point"`
	Domain string `json:"domain"`
	Disk   string `json:"disk"`
	Offset int64  `json:"offset"`
	Error  string `json:"error"`
}

func (p Problem) String() string {
	return fmt.Sprintf("restore point %s (%s) disk %s at byte %d: %s", p.Point, p.Domain, p.Disk, p.Offset, p.Error)
}

// readDisk streams a disk of a point segment by segment, checking each
// segment's SHA-256; visit gets each good segment. Problems are collected
// (verify goes on past a bad segment); restore stops at the first.
func (r *Repo) readDisk(ctx context.Context, p *Point, d *Disk, stopAtFirst bool, visit func(off int64, b []byte) error, progress Progress) ([]Problem, error) {
	var probs []Problem
	buf := make([]byte, SegmentSize)
	for i, s := range d.Segments {
		if err := ctx.Err(); err != nil {
			return probs, err
		}
		off := int64(i) * d.SegmentSize
		b := buf[:min(d.SegmentSize, d.Size-off)]
		err := r.readObject(ctx, s.Object, b)
		if err == nil {
			sum := sha256.Sum256(b)
			if hex.EncodeToString(sum[:]) != s.SHA256 {
				err = errors.New("SHA-256 of the segment differs from the one recorded at backup time")
			}
		}
		if err != nil {
			probs = append(probs, Problem{Point: p.ID, Domain: p.Domain, Disk: d.Target, Offset: off, Error: err.Error()})
			if stopAtFirst {
				return probs, nil
			}
			continue
		}
		if visit != nil {
			if err := visit(off, b); err != nil {
				return probs, err
			}
		}
		if progress != nil {
			progress(off+int64(len(b)), d.Size)
		}
	}
	return probs, nil
}

// Verify re-reads every segment of every disk of a point from the
// repository, and its metadata and domain XML.
func (r *Repo) Verify(ctx context.Context, p *Point, progress Progress) ([]Problem, error) {
	full, err := r.Load(ctx, p)
	if err != nil {
		return []Problem{{Point: p.ID, Domain: p.Domain, Error: err.Error()}}, nil
	}
	var probs []Problem
	if _, err := r.DomainXML(ctx, full); err != nil {
		probs = append(probs, Problem{Point: p.ID, Domain: p.Domain, Error: err.Error()})
	}
	for i := range full.Disks {
		ps, err := r.readDisk(ctx, full, &full.Disks[i], false, nil, progress)
		probs = append(probs, ps...)
		if err != nil {
			return probs, err
		}
	}
	return probs, nil
}

// RestoreDisk writes one disk of a point to dst: a raw image (sparse: zero
// blocks are not written) or, when format is "qcow2", a qcow2 image made by
// qemu-img convert from a raw file beside dst. dst must not exist unless
// overwrite is set.
func (r *Repo) RestoreDisk(ctx context.Context, p *Point, target, dst, format string, overwrite bool, progress Progress) error {
	var d *Disk
	for i := range p.Disks {
		if p.Disks[i].Target == target {
			d = &p.Disks[i]
		}
	}
	if d == nil {
		var have []string
		for _, x := range p.Disks {
			have = append(have, x.Target)
		}
		return fmt.Errorf("restore point %s has no disk %q (it has %s)", p.ID, target, strings.Join(have, ", "))
	}
	if format == "" {
		format = "raw"
		if strings.HasSuffix(dst, ".qcow2") {
			format = "qcow2"
		}
	}
	if format != "raw" && format != "qcow2" {
		return fmt.Errorf("restore to %s: format %q (raw or qcow2)", dst, format)
	}
	if _, err := os.Stat(dst); err == nil && !overwrite {
		return fmt.Errorf("restore to %s: the file exists (remove it or choose another path)", dst)
	}
	rawPath := dst
	if format == "qcow2" {
		rawPath = filepath.Join(filepath.Dir(dst), "."+filepath.Base(dst)+".raw.tmp")
	}
	tmp := rawPath + ".part"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("restore to %s: %w", dst, err)
	}
	defer os.Remove(tmp)
	probs, err := r.readDisk(ctx, p, d, true, func(off int64, b []byte) error {
		for o := 0; o < len(b); o += 64 << 10 {
			blk := b[o:min(o+64<<10, len(b))]
			if isZero(blk) {
				continue
			}
			if _, err := f.WriteAt(blk, off+int64(o)); err != nil {
				return err
			}
		}
		return nil
	}, progress)
	if err == nil && len(probs) > 0 {
		err = fmt.Errorf("%s (run vmwatch verify; restore from another point)", probs[0])
	}
	if err == nil {
		err = f.Truncate(d.Size)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("restore %s of %s to %s: %w", target, p.ID, dst, err)
	}
	if err := os.Rename(tmp, rawPath); err != nil {
		return err
	}
	if format == "qcow2" {
		defer os.Remove(rawPath)
		out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", rawPath, dst+".part").CombinedOutput()
		if err != nil {
			os.Remove(dst + ".part")
			return fmt.Errorf("qemu-img convert to %s: %v: %s (apt-get install qemu-utils)", dst, err, out)
		}
		if err := os.Rename(dst+".part", dst); err != nil {
			return err
		}
	}
	return nil
}
