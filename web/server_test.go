package web

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmwatch/vmwatch/monitor"
)

func daemon(t *testing.T, token string) *monitor.Daemon {
	f := false
	cfg := &monitor.Config{StateDir: t.TempDir(), Token: token}
	cfg.Libvirt.Enabled = &f
	cfg.Journal.Path = filepath.Join(cfg.StateDir, "j.db")
	cfg.SetDefaults()
	d, err := monitor.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Stop)
	return d
}

func TestTokenRequired(t *testing.T) {
	s, err := New(daemon(t, "s3cret"), nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	for _, c := range []struct {
		path, auth string
		want       int
	}{
		{"/api/vms", "", 401},
		{"/api/vms", "Bearer wrong", 401},
		{"/api/vms", "Bearer s3cret", 200},
		{"/metrics", "", 401},
		{"/", "", 401},
		{"/static/style.css", "", 200},
		{"/api/health", "", 200},
	} {
		req, _ := http.NewRequest("GET", srv.URL+c.path, nil)
		if c.auth != "" {
			req.Header.Set("Authorization", c.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("%s with %q: %d, want %d", c.path, c.auth, resp.StatusCode, c.want)
		}
	}
	// /login sets a cookie that opens the dashboard
	jar := &cookieJar{}
	cl := &http.Client{Jar: jar}
	resp, err := cl.Get(srv.URL + "/login?token=s3cret")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("login: %v %v", err, resp)
	}
	resp.Body.Close()
}

type urlT = url.URL

type cookieJar struct{ c []*http.Cookie }

func (j *cookieJar) SetCookies(u *urlT, cs []*http.Cookie) { j.c = append(j.c, cs...) }
func (j *cookieJar) Cookies(u *urlT) []*http.Cookie        { return j.c }

func TestConfigNeedsTokenOffLoopback(t *testing.T) {
	cfg := &monitor.Config{Listen: "0.0.0.0:8080"}
	cfg.SetDefaults()
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "token") {
		t.Fatalf("non-loopback without token: %v", err)
	}
	cfg.Token = "x"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if !monitor.IsLoopback("127.0.0.1:80") || !monitor.IsLoopback("[::1]:80") || monitor.IsLoopback(":8080") {
		t.Fatal("IsLoopback")
	}
}
