package backup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/kopia/kopia/repo"
	"github.com/kopia/kopia/repo/content"
	"github.com/kopia/kopia/repo/logging"
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

// CollectStats is what garbage collection leaves: the bytes of contents
// that restore points refer to, and of those no point refers to any more
// (released by kopia when its safety margins allow).
type CollectStats struct {
	LiveBytes         int64 `json:"live_bytes"`
	UnreferencedBytes int64 `json:"unreferenced_bytes"`
}

// Collect runs kopia's snapshot garbage collection and full maintenance,
// which marks the contents no restore point refers to any more and
// releases their space once kopia's safety margins allow. With now=false
// the margins are kopia's defaults (space goes only after two collections
// at least a day apart, so that a backup writing at the same time is never
// harmed); now=true drops them and is safe only when nothing else writes
// to the repository.
func (r *Repo) Collect(ctx context.Context, now bool) (CollectStats, error) {
	var cs CollectStats
	dr, ok := r.rep.(repo.DirectRepository)
	if !ok {
		return cs, errors.New("garbage collection needs a direct repository connection")
	}
	safety := maintenance.SafetyFull
	if now {
		safety = maintenance.SafetyNone
	}
	if os.Getenv("VMWATCH_KOPIA_LOG") != "" {
		ctx = logging.WithLogger(ctx, logging.ToWriter(os.Stderr))
	}
	ctx, w, err := dr.NewDirectWriter(ctx, repo.WriteSessionOptions{Purpose: "vmwatch prune"})
	if err != nil {
		return cs, err
	}
	defer w.Close(ctx)
	if err := snapshotmaintenance.Run(ctx, w, maintenance.ModeFull, true, safety); err != nil {
		return cs, fmt.Errorf("repository %s: garbage collection: %w", r.Location, err)
	}
	if err := w.Flush(ctx); err != nil {
		return cs, err
	}
	return contentStats(ctx, w.ContentManager())
}

// ContentStats counts the bytes of live and unreferenced contents.
func (r *Repo) ContentStats(ctx context.Context) (CollectStats, error) {
	dr, ok := r.rep.(repo.DirectRepository)
	if !ok {
		return CollectStats{}, errors.New("content statistics need a direct repository connection")
	}
	return contentStats(ctx, dr.ContentReader())
}

func contentStats(ctx context.Context, cr content.Reader) (CollectStats, error) {
	var cs CollectStats
	err := cr.IterateContents(ctx, content.IterateOptions{IncludeDeleted: true}, func(ci content.Info) error {
		if ci.Deleted {
			cs.UnreferencedBytes += int64(ci.PackedLength)
		} else {
			cs.LiveBytes += int64(ci.PackedLength)
		}
		return nil
	})
	return cs, err
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
