package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/vmwatch/vmwatch/journal"
	"github.com/vmwatch/vmwatch/linux"
	"github.com/vmwatch/vmwatch/testvm"
)

// daemon is a running vmwatch serve.
type daemon struct {
	cmd    *exec.Cmd
	url    string
	state  string
	stderr *strings.Builder
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startDaemon runs vmwatch serve with a configuration file.
func startDaemon(t *testing.T, config string, args ...string) *daemon {
	t.Helper()
	dir := t.TempDir()
	port := freePort(t)
	state := filepath.Join(dir, "state")
	cfgPath := filepath.Join(dir, "vmwatch.yaml")
	config = fmt.Sprintf("listen: 127.0.0.1:%d\nstate_dir: %s\n", port, state) + config
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	d := &daemon{url: fmt.Sprintf("http://127.0.0.1:%d", port), state: state, stderr: &strings.Builder{}}
	d.cmd = exec.Command(vmwatchBin, append([]string{"serve", "-c", cfgPath, "--log-level", "info"}, args...)...)
	d.cmd.Stderr = d.stderr
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// whatever the test did to its guests, the daemon recovered no
		// panic (a recovered one keeps it up, but is a defect)
		if resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(d.url + "/metrics"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			for _, l := range strings.Split(string(b), "\n") {
				if f := strings.Fields(l); len(f) == 2 && strings.HasPrefix(f[0], "vmwatch_panics_total{") && f[1] != "0" {
					t.Errorf("vmwatch serve recovered from panics: %s", l)
				}
			}
		}
		d.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- d.cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			d.cmd.Process.Kill()
			<-done // stderr is complete only once Wait returned
			t.Errorf("vmwatch serve did not stop within 15 s of SIGTERM")
		}
		if strings.Contains(d.stderr.String(), "panic recovered") {
			t.Errorf("vmwatch serve logged a recovered panic")
		}
		if t.Failed() {
			t.Logf("vmwatch serve stderr:\n%s", d.stderr.String())
		}
	})
	waitFor(t, 20*time.Second, "the API to answer", func() bool {
		resp, err := http.Get(d.url + "/api/health")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == 200
	})
	return d
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func (d *daemon) get(t *testing.T, path string, v any) {
	t.Helper()
	resp, err := http.Get(d.url + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s: %s", path, resp.Status, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("GET %s: %v: %s", path, err, b)
	}
}

type apiVM struct {
	Name         string             `json:"name"`
	State        string             `json:"state"`
	Health       string             `json:"health"`
	Kernel       string             `json:"kernel"`
	Error        string             `json:"error"`
	OpenFindings int                `json:"open_findings"`
	Metrics      map[string]float64 `json:"metrics"`
	LastCheck    *time.Time         `json:"last_check"`
	CycleMs      float64            `json:"cycle_ms"`
	Booting      bool               `json:"booting"`
}

func (d *daemon) vms(t *testing.T) map[string]apiVM {
	var list []apiVM
	d.get(t, "/api/vms", &list)
	out := map[string]apiVM{}
	for _, v := range list {
		out[v.Name] = v
	}
	return out
}

// hungQMP listens on a unix socket and never answers: a QEMU that hangs.
func hungQMP(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "hung.sock")
	l, err := net.Listen("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return p
}

// TestServeAlarmResponse: the daemon watches plain QEMU guests; a hung
// monitor does not stall the others; a guest that is attacked (a task
// unlinked from the task list) raises a critical alarm within two check
// intervals, the webhook receives it, the VM is paused and evidence is
// captured, and the journal verifies.
func TestServeAlarmResponse(t *testing.T) {
	if err := testvm.EnsureLibvirtd(); err != nil {
		t.Fatal(err)
	}
	domain := guest(t, "vmwatch-e2e-lv", func(k *testvm.Kernel) testvm.Config {
		return testvm.Config{Libvirt: true}
	}, "6.1")
	if _, err := domain.Run("setsid sleep 1000779 </dev/null >/dev/null 2>&1 &"); err != nil {
		t.Fatal(err)
	}
	marker := guestPID(t, domain, "^sleep 1000779$")
	victim := attackGuest(t, "6.12", "serve")
	other := standard(t, "6.1")
	hooks := make(chan map[string]any, 16)
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var m map[string]any
		json.NewDecoder(r.Body).Decode(&m)
		hooks <- m
	}))
	defer hook.Close()
	hung := hungQMP(t)
	d := startDaemon(t, fmt.Sprintf(`
libvirt: {enabled: true}
defaults: {check_interval: 2s, metrics_interval: 2s}
vms:
  - {name: victim, qmp: %s}
  - {name: other, qmp: %s}
  - {name: hung, qmp: %s}
default_alarms: true
alarms:
  - name: rootkit-response
    finding: {severity: critical}
    level: critical
    actions:
      - webhook: %s/alarm?token=secret123
      - pause_vm: true
      - capture_evidence: true
  - name: domain-evidence
    vms: [%s]
    metric: guest_tasks
    critical: 1
    actions: [{capture_evidence: true}]
`, victim.QMPPath, other.QMPPath, hung, hook.URL, domain.Name))

	waitFor(t, 60*time.Second, "the plain QEMU guests and the libvirt domain to be checked", func() bool {
		v := d.vms(t)
		return v["victim"].LastCheck != nil && v["other"].LastCheck != nil && v[domain.Name].LastCheck != nil
	})
	checkLibvirt(t, d, domain)
	checkDomainEvidence(t, d, domain, marker)
	waitFor(t, 10*time.Second, "the hung monitor to be reported", func() bool {
		h := d.vms(t)["hung"]
		return h.State == "unreachable" && h.Error != ""
	})
	v := d.vms(t)
	for _, name := range []string{"victim", "other"} {
		if v[name].State != "running" || v[name].Kernel == "" || v[name].OpenFindings != 0 || v[name].Health != "green" {
			t.Errorf("%s: %+v", name, v[name])
		}
		if v[name].CycleMs > 1500 {
			t.Errorf("%s: cycle took %.0f ms", name, v[name].CycleMs)
		}
	}
	// the hung VM does not hold the others back: their checks go on
	first := *d.vms(t)["other"].LastCheck
	waitFor(t, 10*time.Second, "the other guest's next check", func() bool { return d.vms(t)["other"].LastCheck.After(first) })

	// attack: unlink sleep 1000002 from the task list, as a kernel exploit would
	pid := guestPID(t, victim, "^sleep 1000002$")
	pl := newPlanter(t, victim)
	o := pl.layout([]int64{pid}, "")
	tag := "/" + strconv.FormatInt(pid, 10)
	pl.paused(func() {
		pl.unlink(pl.need(o, "task_tasks"+tag), pl.need(o, "task_tasks_next"+tag), pl.need(o, "task_tasks_prev"+tag))
	})
	attacked := time.Now()

	var got map[string]any
	select {
	case got = <-hooks:
	case <-time.After(20 * time.Second):
		t.Fatalf("no webhook within 20 s of the attack; VM: %+v", d.vms(t)["victim"])
	}
	t.Logf("webhook after %v: %v", time.Since(attacked).Round(time.Millisecond), got["message"])
	if got["alarm"] != "rootkit-response" || got["to"] != "critical" || got["vm"] != "victim" || !strings.Contains(fmt.Sprint(got["findings"]), "hidden-process") {
		t.Errorf("webhook body %v", got)
	}
	if time.Since(attacked) > 3*2*time.Second+5*time.Second {
		t.Errorf("alarm took %v (interval 2 s)", time.Since(attacked))
	}
	waitFor(t, 20*time.Second, "the VM to be paused by the response action", func() bool {
		st, err := victim.QMP("query-status", nil)
		return err == nil && strings.Contains(string(st), `"paused"`)
	})
	// the finding is on the API with the pid
	var fs []struct {
		ID       string `json:"id"`
		Evidence struct {
			PIDs []int64 `json:"pids"`
		} `json:"evidence"`
	}
	d.get(t, "/api/vms/victim/findings", &fs)
	if len(fs) == 0 || fs[0].ID != "hidden-process" || len(fs[0].Evidence.PIDs) == 0 || fs[0].Evidence.PIDs[0] != pid {
		t.Errorf("findings on the API: %+v", fs)
	}
	// the dashboard, in a real browser, shows the attacked VM's critical finding
	shot := filepath.Join(artifactDir(t), "dashboard-attacked-vm.png")
	dom := browse(t, d.url+"/vm/victim", shot)
	if !strings.Contains(dom, "is hidden from the task list") || !strings.Contains(dom, "sev-critical") {
		t.Errorf("the dashboard does not show the critical finding:\n%.2000s", dom)
	}
	overview := browse(t, d.url+"/", filepath.Join(artifactDir(t), "dashboard-overview.png"))
	if !strings.Contains(overview, "victim") || !strings.Contains(overview, "l-critical") {
		t.Errorf("the overview does not show the VM as critical:\n%.2000s", overview)
	}
	t.Logf("screenshots in %s", artifactDir(t))
	// the victim's evidence (the libvirt domain's may be journaled first)
	var victimEv journal.Record
	waitFor(t, 60*time.Second, "the victim's evidence in the journal", func() bool {
		var ev []journal.Record
		d.get(t, "/api/journal?kind=evidence", &ev)
		for _, r := range ev {
			if r.VM == "victim" {
				victimEv = r
				return true
			}
		}
		return false
	})
	checkEvidence(t, victimEv, pid)
	// secrets stay out of the journal
	var recs []journal.Record
	d.get(t, "/api/journal?limit=1000", &recs)
	for _, r := range recs {
		if strings.Contains(string(r.Data)+r.Message, "secret123") {
			t.Errorf("journal record %d holds the webhook's token", r.Seq)
		}
	}
	if strings.Contains(d.stderr.String(), "secret123") {
		t.Errorf("the log holds the webhook's token")
	}
	out, stderr, err := vmwatchRun("journal", "verify", "--journal", filepath.Join(d.state, "journal.db"))
	if err != nil || !strings.Contains(string(out), "intact") {
		t.Errorf("journal verify: %v %s %s", err, out, stderr)
	}
	victim.QMP("cont", nil)
}

// checkLibvirt: the libvirt domain is watched with metrics that agree with
// `virsh domstats`; a domain started after the daemon is picked up, and
// dropped when it is destroyed.
func checkLibvirt(t *testing.T, d *daemon, domain *testvm.VM) {
	v := d.vms(t)[domain.Name]
	if v.State != "running" || v.Kernel == "" || v.OpenFindings != 0 {
		t.Errorf("libvirt domain: %+v", v)
	}
	out, err := exec.Command("virsh", "-c", "qemu:///system", "domstats", domain.Name).Output()
	if err != nil {
		t.Fatal(err)
	}
	stats := map[string]float64{}
	for _, l := range strings.Split(string(out), "\n") {
		if k, val, ok := strings.Cut(strings.TrimSpace(l), "="); ok {
			if f, err := strconv.ParseFloat(val, 64); err == nil {
				stats[k] = f
			}
		}
	}
	v = d.vms(t)[domain.Name]
	if got, want := v.Metrics["balloon_bytes"], stats["balloon.current"]*1024; got != want {
		t.Errorf("balloon: vmwatch %.0f, virsh domstats %.0f", got, want)
	}
	if got, want := v.Metrics["cpu_seconds"], stats["cpu.time"]/1e9; got > want+0.01 || got < want-3 {
		t.Errorf("CPU time: vmwatch %.3f s, virsh domstats %.3f s", got, want)
	}
	// a domain started after the daemon
	late, err := testvm.Start(context.Background(), testvm.Config{Kernel: domain.Kernel, Name: "vmwatch-e2e-lv-late", Libvirt: true})
	if err != nil {
		t.Fatal(err)
	}
	defer late.Stop()
	waitFor(t, 30*time.Second, "the new domain to be picked up", func() bool {
		l := d.vms(t)[late.Name]
		return l.State == "running" && l.Kernel != ""
	})
	// it was picked up while its kernel booted: no check ran before the
	// kernel was up (the code it had not patched into its final form yet
	// looked like 18 inline hooks), the first one finds nothing
	sawBooting := false
	waitFor(t, 90*time.Second, "the new domain to be checked once booted", func() bool {
		l := d.vms(t)[late.Name]
		sawBooting = sawBooting || l.Booting
		// last_check is the last try; booting clears once a check ran
		return l.LastCheck != nil && !l.Booting && l.Error == ""
	})
	if l := d.vms(t)[late.Name]; l.OpenFindings != 0 || l.Booting {
		t.Errorf("the domain started after the daemon, once checked: %+v", l)
	}
	t.Logf("the domain started after the daemon: checks waited for its kernel to boot: %v", sawBooting)
	late.Stop()
	waitFor(t, 20*time.Second, "the destroyed domain to be dropped", func() bool {
		_, ok := d.vms(t)[late.Name]
		return !ok
	})
	// and no finding was ever opened on it
	var recs []journal.Record
	d.get(t, "/api/journal?limit=1000", &recs)
	for _, r := range recs {
		if r.VM == late.Name && r.Kind == journal.KindFindingOpened {
			t.Errorf("the domain started after the daemon: %s %s: %s", r.Kind, r.Subject, r.Message)
		}
	}
}

// TestServeLateVM: a VM that is not running when the daemon starts is
// picked up when it starts, and reported unreachable after it stops.
func TestServeLateVM(t *testing.T) {
	k, err := testvm.FetchKernel("6.1")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "qmp.sock")
	d := startDaemon(t, fmt.Sprintf("libvirt: {enabled: false}\ndefaults: {check_interval: 2s, metrics_interval: 2s}\nvms:\n  - {name: late, qmp: %s}\n", sock))
	waitFor(t, 10*time.Second, "the VM to be unreachable", func() bool { return d.vms(t)["late"].State == "unreachable" })
	vm, err := testvm.Start(context.Background(), testvm.Config{Kernel: k, Name: "late", Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the VM to be picked up", func() bool { v := d.vms(t)["late"]; return v.State == "running" && v.Kernel != "" })
	vm.Stop()
	waitFor(t, 15*time.Second, "the stopped VM to be noticed", func() bool { return d.vms(t)["late"].State == "unreachable" })
	var recs []journal.Record
	d.get(t, "/api/vms/late/journal?kind=lifecycle", &recs)
	if len(recs) < 3 {
		t.Errorf("lifecycle records: %+v", recs)
	}
}

// TestJournalSurvivesSIGKILL: a writer killed with SIGKILL in the middle of a
// burst of records loses none it acknowledged, and the chain verifies.
func TestJournalSurvivesSIGKILL(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal.db")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "VMWATCH_JOURNAL_WRITER="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acked := map[int64]bool{}
	sc := bufio.NewScanner(out)
	deadline := time.Now().Add(2 * time.Second)
	for sc.Scan() {
		n, err := strconv.ParseInt(sc.Text(), 10, 64)
		if err == nil {
			acked[n] = true
		}
		if time.Now().After(deadline) && len(acked) > 50 {
			break
		}
	}
	cmd.Process.Kill() // SIGKILL
	cmd.Wait()
	j, err := journal.Open(path, journal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	recs, err := j.List(context.Background(), journal.Query{})
	if err != nil {
		t.Fatal(err)
	}
	have := map[int64]bool{}
	for _, r := range recs {
		have[r.Seq] = true
	}
	for n := range acked {
		if !have[n] {
			t.Errorf("acknowledged record %d is lost", n)
		}
	}
	if _, probs, err := j.Verify(context.Background()); err != nil || len(probs) != 0 {
		t.Errorf("after SIGKILL: %v %v", err, probs)
	}
	t.Logf("%d records acknowledged before SIGKILL, %d in the journal", len(acked), len(recs))
}

// journalWriter is the child of TestJournalSurvivesSIGKILL: it appends
// records and prints each sequence number once Append returned.
func journalWriter(path string) {
	j, err := journal.Open(path, journal.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for i := 0; ; i++ {
		r, err := j.Append(context.Background(), journal.Record{VM: "burst", Kind: journal.KindFindingOpened, Severity: "high", Subject: fmt.Sprint(i), Message: "burst"})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(r.Seq)
	}
}

// TestJournalVerifyFindsEdits: `vmwatch journal verify` names an edited row.
func TestJournalVerifyFindsEdits(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal.db")
	j, err := journal.Open(path, journal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		j.Append(context.Background(), journal.Record{VM: "web1", Kind: journal.KindAlarm, Severity: "critical", Subject: "x", Message: fmt.Sprint("alarm ", i)})
	}
	j.Close()
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE records SET severity = 'info' WHERE seq = 6`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	out, _, err := vmwatchRun("journal", "verify", "--journal", path)
	if exitCode(err) != 1 || !strings.Contains(string(out), "record 6: edited") {
		t.Errorf("journal verify after an edit: exit %d: %s", exitCode(err), out)
	}
}

// artifactDir is where browser screenshots go ($VMWATCH_ARTIFACTS, else e2e/artifacts).
func artifactDir(t *testing.T) string {
	d := os.Getenv("VMWATCH_ARTIFACTS")
	if d == "" {
		d = "artifacts"
	}
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(d)
	return abs
}

// browse loads a page in headless Chromium (Debian's chromium package),
// lets its scripts run, and returns the DOM; it saves a screenshot too.
func browse(t *testing.T, url, screenshot string) string {
	t.Helper()
	flags := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + t.TempDir(), "--window-size=1300,1700", "--virtual-time-budget=10000"}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dom, err := exec.CommandContext(ctx, "chromium", append(flags, "--dump-dom", url)...).Output()
	if err != nil {
		t.Fatalf("chromium --dump-dom %s: %v", url, err)
	}
	if out, err := exec.CommandContext(ctx, "chromium", append(flags, "--screenshot="+screenshot, url)...).CombinedOutput(); err != nil {
		t.Errorf("chromium --screenshot: %v: %s", err, out)
	}
	return string(dom)
}

// checkEvidence opens the memory dump an evidence record names: it exists,
// its SHA-256 is the recorded one, and vmwatch reads the attacked guest
// from it, hidden process included (hidden-process finds it in the dump).
func checkEvidence(t *testing.T, rec journal.Record, pid int64) {
	t.Helper()
	dump := evidenceDump(t, rec)
	fs := checkTarget(t, "dump:"+dump, "--only", "hidden-process")
	found := false
	for _, f := range fs {
		found = found || f.ID == "hidden-process" && hasPID(pid)(f)
	}
	if !found {
		t.Errorf("the evidence dump does not show the hidden process %d: %s", pid, summary(fs))
	}
}

// evidenceDump returns the memory dump an evidence record names, once its
// SHA-256 is checked against the record's.
func evidenceDump(t *testing.T, rec journal.Record) string {
	t.Helper()
	var data struct {
		Dump   string `json:"dump"`
		SHA256 string `json:"dump_sha256"`
	}
	if err := json.Unmarshal(rec.Data, &data); err != nil || data.Dump == "" {
		t.Fatalf("evidence record without a dump: %s (%v)", rec.Data, err)
	}
	f, err := os.Open(data.Dump)
	if err != nil {
		t.Fatalf("evidence dump: %v", err)
	}
	h := sha256.New()
	_, err = io.Copy(h, f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != data.SHA256 {
		t.Errorf("evidence dump %s: sha256 %s, the journal says %s", data.Dump, got, data.SHA256)
	}
	return data.Dump
}

// checkDomainEvidence: evidence of a libvirt domain, whose QEMU runs as
// libvirt-qemu and cannot open a file in the daemon's state directory, is
// captured (an alarm on the domain's task count triggers it), and its dump
// shows a process the guest started before.
func checkDomainEvidence(t *testing.T, d *daemon, domain *testvm.VM, marker int64) {
	t.Helper()
	var ev []journal.Record
	waitFor(t, 90*time.Second, "the libvirt domain's evidence in the journal", func() bool {
		d.get(t, "/api/journal?kind=evidence&vm="+domain.Name, &ev)
		for _, r := range ev {
			if r.VM == domain.Name {
				return true
			}
		}
		ev = nil
		return false
	})
	var rec journal.Record
	for _, r := range ev {
		if r.VM == domain.Name {
			rec = r
		}
	}
	dump := evidenceDump(t, rec)
	var ps []linux.Process
	vmwatchJSON(t, &ps, "ps", "-t", "dump:"+dump)
	seen := false
	for _, p := range ps {
		seen = seen || p.PID == marker && strings.Join(p.Cmdline, " ") == "sleep 1000779"
	}
	if !seen {
		t.Errorf("the domain's evidence dump %s does not show its process %d (sleep 1000779) among %d", dump, marker, len(ps))
	}
}
