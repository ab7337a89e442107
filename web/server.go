// Package web serves vmwatch's JSON API, the Prometheus metrics and the
// dashboard (html/template pages, htmx 2 and uPlot, all embedded in the
// binary). The dashboard reads only the API: its pages are shells whose
// parts htmx loads from /api/... as HTML fragments (the same endpoints
// answer JSON to everyone else), and whose charts read /api/.../metrics.
package web

import (
	"context"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vmwatch/vmwatch/journal"
	"github.com/vmwatch/vmwatch/monitor"
)

//go:embed static templates
var files embed.FS

// Server is the HTTP side of the daemon.
type Server struct {
	d    *monitor.Daemon
	log  *slog.Logger
	tmpl *template.Template
	mux  *http.ServeMux
	srv  *http.Server
}

// New builds the server for a daemon.
func New(d *monitor.Daemon, log *slog.Logger) (*Server, error) {
	t, err := template.New("").Funcs(funcs).ParseFS(files, "templates/*.html")
	if err != nil {
		return nil, err
	}
	s := &Server{d: d, log: log, tmpl: t, mux: http.NewServeMux()}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{d})
	static, _ := fs.Sub(files, "static")
	s.mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	s.mux.HandleFunc("GET /api/vms", s.apiVMs)
	s.mux.HandleFunc("GET /api/vms/{name}", s.apiVM)
	s.mux.HandleFunc("GET /api/vms/{name}/{view}", s.apiVMView)
	s.mux.HandleFunc("GET /api/journal", s.apiJournal)
	s.mux.HandleFunc("GET /api/health", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, map[string]string{"status": "ok"}) })
	s.mux.HandleFunc("GET /{$}", s.page("index"))
	s.mux.HandleFunc("GET /vm/{name}", s.page("vm"))
	s.mux.HandleFunc("GET /journal", s.page("journal"))
	s.mux.HandleFunc("GET /login", s.login)
	if os.Getenv("VMWATCH_PPROF") != "" { // profiling, behind the token like everything else
		s.mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		s.mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		s.mux.HandleFunc("GET /debug/pprof/heap", pprof.Index)
	}
	return s, nil
}

// Handler is the server's handler with authentication.
func (s *Server) Handler() http.Handler { return s.auth(s.mux) }

// ListenAndServe serves until ctx is done, then shuts down gracefully.
func (s *Server) ListenAndServe(ctx context.Context, ready func(addr string)) error {
	cfg := s.d.Config()
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	s.srv = &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	if ready != nil {
		ready(ln.Addr().String())
	}
	errc := make(chan error, 1)
	go func() {
		if cfg.TLS.Cert != "" {
			errc <- s.srv.ServeTLS(ln, cfg.TLS.Cert, cfg.TLS.Key)
		} else {
			errc <- s.srv.Serve(ln)
		}
	}()
	select {
	case <-ctx.Done():
		c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return s.srv.Shutdown(c)
	case err := <-errc:
		return err
	}
}

// auth requires the token (Bearer header, cookie, or ?token= on /login)
// when one is configured.
func (s *Server) auth(next http.Handler) http.Handler {
	token := s.d.Config().Token
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if token == "" || strings.HasPrefix(r.URL.Path, "/static/") || r.URL.Path == "/login" || r.URL.Path == "/api/health" {
			next.ServeHTTP(w, r)
			return
		}
		got := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		if c, err := r.Cookie("vmwatch_token"); err == nil && got == "" {
			got = c.Value
		}
		if subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="vmwatch"`)
			http.Error(w, "unauthorized: send the token as 'Authorization: Bearer TOKEN', or open /login?token=TOKEN once", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	token := s.d.Config().Token
	if token != "" && subtle.ConstantTimeCompare([]byte(r.URL.Query().Get("token")), []byte(token)) != 1 {
		http.Error(w, "wrong token", http.StatusUnauthorized)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: "vmwatch_token", Value: token, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// respond answers JSON, or an HTML fragment for htmx.
func (s *Server) respond(w http.ResponseWriter, r *http.Request, fragment string, data any) {
	if r.Header.Get("HX-Request") == "true" && fragment != "" {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if err := s.tmpl.ExecuteTemplate(w, fragment, data); err != nil {
			s.log.Error("template", "name", fragment, "err", err)
		}
		return
	}
	writeJSON(w, data)
}

func (s *Server) apiVMs(w http.ResponseWriter, r *http.Request) {
	out := []monitor.VMInfo{}
	for _, vm := range s.d.VMs() {
		out = append(out, vm.Info())
	}
	s.respond(w, r, "vm-rows", out)
}

func (s *Server) vm(w http.ResponseWriter, r *http.Request) (*monitor.VM, bool) {
	vm, ok := s.d.VM(r.PathValue("name"))
	if !ok {
		http.Error(w, fmt.Sprintf("no VM named %q is watched", r.PathValue("name")), http.StatusNotFound)
	}
	return vm, ok
}

func (s *Server) apiVM(w http.ResponseWriter, r *http.Request) {
	vm, ok := s.vm(w, r)
	if !ok {
		return
	}
	s.respond(w, r, "vm-summary", vm.Info())
}

func (s *Server) apiVMView(w http.ResponseWriter, r *http.Request) {
	vm, ok := s.vm(w, r)
	if !ok {
		return
	}
	switch r.PathValue("view") {
	case "processes":
		s.respond(w, r, "processes", vm.Processes())
	case "top":
		s.respond(w, r, "top", vm.Top())
	case "modules":
		s.respond(w, r, "modules", vm.Modules())
	case "sockets":
		s.respond(w, r, "sockets", vm.Sockets())
	case "findings":
		s.respond(w, r, "findings", vm.Findings())
	case "alarms":
		s.respond(w, r, "alarms", vm.Alarms())
	case "guest":
		s.respond(w, r, "", vm.Guest())
	case "metrics":
		since := time.Now().Add(-time.Hour)
		if v, err := strconv.Atoi(r.URL.Query().Get("since")); err == nil && v > 0 {
			since = time.Now().Add(-time.Duration(v) * time.Second)
		}
		names := vm.MetricNames()
		if q := r.URL.Query().Get("names"); q != "" {
			names = strings.Split(q, ",")
		}
		out := map[string][]monitor.Point{}
		for _, n := range names {
			out[n] = vm.History(n, since)
		}
		writeJSON(w, out)
	case "journal":
		s.journal(w, r, vm.Name)
	default:
		http.Error(w, "unknown view "+r.PathValue("view")+" (processes, top, modules, sockets, findings, alarms, guest, metrics, journal)", http.StatusNotFound)
	}
}

func (s *Server) apiJournal(w http.ResponseWriter, r *http.Request) {
	s.journal(w, r, r.URL.Query().Get("vm"))
}

func (s *Server) journal(w http.ResponseWriter, r *http.Request, vm string) {
	limit := 100
	if v, err := strconv.Atoi(r.URL.Query().Get("limit")); err == nil && v > 0 && v <= 10000 {
		limit = v
	}
	recs, err := s.d.Journal().List(r.Context(), journal.Query{VM: vm, Kind: r.URL.Query().Get("kind"), Limit: limit, Desc: true})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if recs == nil {
		recs = []journal.Record{}
	}
	s.respond(w, r, "journal-rows", recs)
}

type pageData struct {
	Title string
	Name  string
	Page  string
}

func (s *Server) page(name string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		data := pageData{Title: "vmwatch", Page: name}
		if name == "vm" {
			vm, ok := s.vm(w, r)
			if !ok {
				return
			}
			data.Name, data.Title = vm.Name, vm.Name+" — vmwatch"
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if err := s.tmpl.ExecuteTemplate(w, name+".html", data); err != nil {
			s.log.Error("page", "name", name, "err", err)
		}
	}
}

var funcs = template.FuncMap{
	"bytes": func(v any) string {
		var f float64
		switch x := v.(type) {
		case float64:
			f = x
		case uint64:
			f = float64(x)
		case int64:
			f = float64(x)
		}
		switch {
		case f >= 1<<30:
			return fmt.Sprintf("%.1f GiB", f/(1<<30))
		case f >= 1<<20:
			return fmt.Sprintf("%.1f MiB", f/(1<<20))
		case f >= 1<<10:
			return fmt.Sprintf("%.0f KiB", f/(1<<10))
		}
		return fmt.Sprintf("%.0f B", f)
	},
	"pct":   func(v float64) string { return fmt.Sprintf("%.0f %%", v) },
	"f2":    func(v float64) string { return fmt.Sprintf("%.2f", v) },
	"join":  strings.Join,
	"since": func(t time.Time) string { return time.Since(t).Round(time.Second).String() },
	"ts":    func(t time.Time) string { return t.Local().Format("2006-01-02 15:04:05") },
	"metric": func(m map[string]float64, k string) float64 {
		return m[k]
	},
	"has": func(m map[string]float64, k string) bool { _, ok := m[k]; return ok },
	"sorted": func(m map[string]float64) []string {
		var k []string
		for x := range m {
			k = append(k, x)
		}
		sort.Strings(k)
		return k
	},
}
