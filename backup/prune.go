package backup

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/kopia/kopia/repo"
	"github.com/kopia/kopia/repo/maintenance"
	"github.com/kopia/kopia/snapshot/snapshotmaintenance"
)

// Keep is a retention policy with the meaning of Proxmox Backup Server's
// prune options: keep-last keeps the newest N points; keep-daily keeps the
// newest point of each of the last N days that have points (days without
// points do not count), and so on for weeks (ISO weeks) and months. The
// options are applied in that order; a period that already holds a point
// kept by an earlier option is not counted again. All zero keeps all.
type Keep struct {
	Last, Daily, Weekly, Monthly int
}

func (k Keep) none() bool { return k.Last == 0 && k.Daily == 0 && k.Weekly == 0 && k.Monthly == 0 }

// Decision is what prune does with one point, and why.
type Decision struct {
	Point  *Point `json:"point"`
	Keep   bool   `json:"keep"`
	Reason string `json:"reason"` // keep-last, keep-daily, ... or "" when removed
}

// Select applies a policy to the points of one domain. The result is
// sorted newest first. loc is the time zone of days, weeks and months.
func Select(points []*Point, k Keep, loc *time.Location) []Decision {
	list := append([]*Point(nil), points...)
	sort.SliceStable(list, func(i, j int) bool { return list[i].Time.After(list[j].Time) })
	mark := map[*Point]string{} // reason, or "-" for removed
	if k.none() {
		for _, p := range list {
			mark[p] = "keep-all"
		}
	}
	period := func(f func(time.Time) string, n int, reason string) {
		if n <= 0 {
			return
		}
		covered := map[string]bool{}
		for _, p := range list {
			if r, ok := mark[p]; ok && r != "-" {
				covered[f(p.Time.In(loc))] = true
			}
		}
		kept := map[string]bool{}
		for _, p := range list {
			if _, ok := mark[p]; ok {
				continue
			}
			id := f(p.Time.In(loc))
			if covered[id] {
				continue
			}
			if kept[id] {
				mark[p] = "-"
				continue
			}
			if len(kept) >= n {
				break
			}
			kept[id] = true
			mark[p] = reason
		}
	}
	seq := 0
	period(func(time.Time) string { seq++; return fmt.Sprint(seq) }, k.Last, "keep-last")
	period(func(t time.Time) string { return t.Format("2006-01-02") }, k.Daily, "keep-daily")
	period(func(t time.Time) string { y, w := t.ISOWeek(); return fmt.Sprintf("%d-W%02d", y, w) }, k.Weekly, "keep-weekly")
	period(func(t time.Time) string { return t.Format("2006-01") }, k.Monthly, "keep-monthly")
	out := make([]Decision, len(list))
	for i, p := range list {
		r := mark[p]
		if r == "-" {
			r = ""
		}
		out[i] = Decision{Point: p, Keep: r != "", Reason: r}
	}
	return out
}

// Collect runs kopia's snapshot garbage collection and full maintenance,
// which deletes the contents no restore point refers to any more. With
// now=false kopia's safety margins apply (a content is deleted only after
// two collections at least a day apart, so that a backup writing at the
// same time is never harmed); now=true deletes at once and is safe only
// when nothing else writes to the repository.
func (r *Repo) Collect(ctx context.Context, now bool) error {
	dr, ok := r.rep.(repo.DirectRepository)
	if !ok {
		return errors.New("garbage collection needs a direct repository connection")
	}
	safety := maintenance.SafetyFull
	if now {
		safety = maintenance.SafetyNone
	}
	ctx, w, err := dr.NewDirectWriter(ctx, repo.WriteSessionOptions{Purpose: "vmwatch prune"})
	if err != nil {
		return err
	}
	defer w.Close(ctx)
	if err := snapshotmaintenance.Run(ctx, w, maintenance.ModeFull, true, safety); err != nil {
		return fmt.Errorf("repository %s: garbage collection: %w", r.Location, err)
	}
	return w.Flush(ctx)
}

// ParseSize reads a size with an optional K, M or G suffix (powers of 1024).
func ParseSize(s string) (int64, error) {
	if s == "" {
		return 0, fmt.Errorf("empty size (e.g. 512K, 50M, 1G)")
	}
	mult := int64(1)
	switch strings.ToUpper(s[len(s)-1:]) {
	case "K":
		mult = 1 << 10
	case "M":
		mult = 1 << 20
	case "G":
		mult = 1 << 30
	}
	if mult > 1 {
		s = s[:len(s)-1]
	}
	var n int64
	if _, err := fmt.Sscan(s, &n); err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a size (e.g. 512K, 50M, 1G)", s)
	}
	return n * mult, nil
}
