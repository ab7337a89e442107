package backup

import (
	"strings"
	"testing"
	"time"
)

// The expected decisions were worked out by hand from Proxmox Backup
// Server's documented prune semantics (newest first, one point per period,
// periods already covered by an earlier option do not count).
func TestSelect(t *testing.T) {
	at := func(s string) time.Time {
		tm, err := time.Parse("2006-01-02 15:04", s)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	names := map[string]string{
		"A": "2026-11-28 18:00", "B": "2026-11-28 06:00", "C": "2026-11-27 18:00", "D": "2026-11-27 06:00",
		"E": "2026-11-26 12:00", "F": "2026-11-23 12:00", "G": "2026-11-20 12:00", "H": "2026-11-15 12:00",
		"I": "2026-10-31 12:00", "J": "2026-10-01 12:00", "K": "2026-09-15 12:00",
	}
	var pts []*Point
	for id, s := range names {
		pts = append(pts, &Point{ID: id, Time: at(s)})
	}
	run := func(k Keep) string {
		var kept, reasons []string
		for _, d := range Select(pts, k, time.UTC) {
			if d.Keep {
				kept = append(kept, d.Point.ID)
				reasons = append(reasons, d.Point.ID+"="+d.Reason)
			}
		}
		return strings.Join(kept, "") + " " + strings.Join(reasons, ",")
	}
	cases := []struct {
		k    Keep
		want string
	}{
		{Keep{Last: 1, Daily: 2, Weekly: 2, Monthly: 2}, "ACEGHIK A=keep-last,C=keep-daily,E=keep-daily,G=keep-weekly,H=keep-weekly,I=keep-monthly,K=keep-monthly"},
		{Keep{Last: 3}, "ABC A=keep-last,B=keep-last,C=keep-last"},
		{Keep{Daily: 3}, "ACE A=keep-daily,C=keep-daily,E=keep-daily"},
		{Keep{Weekly: 3}, "AGH A=keep-weekly,G=keep-weekly,H=keep-weekly"},
		{Keep{Monthly: 5}, "AIK A=keep-monthly,I=keep-monthly,K=keep-monthly"},
		{Keep{}, "ABCDEFGHIJK A=keep-all,B=keep-all,C=keep-all,D=keep-all,E=keep-all,F=keep-all,G=keep-all,H=keep-all,I=keep-all,J=keep-all,K=keep-all"},
	}
	for _, c := range cases {
		if got := run(c.k); got != c.want {
			t.Errorf("%+v:\n got %s\nwant %s", c.k, got, c.want)
		}
	}
}
