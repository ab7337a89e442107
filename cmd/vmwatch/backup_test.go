package main

import (
	"strings"
	"testing"
	"time"

	"github.com/vmwatch/vmwatch/backup"
)

// A restore point without disks (restore used to index p.Disks[0] and
// panic) is an error that names the point and says what to do instead.
func TestRestoreDiskNoDisks(t *testing.T) {
	p := &backup.Point{ID: "k1234abcd", Domain: "web1", Time: time.Unix(1700000000, 0)}
	_, err := restoreDisk(p, "")
	if err == nil {
		t.Fatal("restoreDisk of a point without disks: no error")
	}
	for _, want := range []string{"k1234abcd", "web1", "no disks", "vmwatch backups", "vmwatch backup -t libvirt:web1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if _, err := restoreDisk(p, "vdb"); err == nil {
		t.Error("restoreDisk(--disk vdb) of a point without disks: no error")
	}
}

func TestRestoreDiskDefault(t *testing.T) {
	p := &backup.Point{ID: "k1", Disks: []backup.Disk{{Target: "vda"}, {Target: "vdb"}}}
	for _, c := range []struct{ give, want string }{{"", "vda"}, {"vdb", "vdb"}} {
		got, err := restoreDisk(p, c.give)
		if err != nil || got != c.want {
			t.Errorf("restoreDisk(%q) = %q, %v; want %q", c.give, got, err, c.want)
		}
	}
}
