package e2e

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmwatch/vmwatch/detect"
	"github.com/vmwatch/vmwatch/linux"
	"github.com/vmwatch/vmwatch/testvm"
)

// The per-process views (maps, lsof, envars, caps) against the guest's own
// /proc: every process, line by line.

// TestProcViews runs lsof, envars and caps on both kernels' standard
// guests (maps: TestVMAs).
func TestProcViews(t *testing.T) {
	forEachKernel(t, func(t *testing.T, series string) {
		vm := standard(t, series)
		tg := fmt.Sprintf("pid:%d", vm.PID())
		plantFDs(t, vm)
		t.Run("lsof", func(t *testing.T) { checkLsof(t, vm, tg) })
		t.Run("envars", func(t *testing.T) { checkEnvars(t, vm, tg) })
		t.Run("caps", func(t *testing.T) { checkCaps(t, vm, tg, false) })
		t.Run("extract", func(t *testing.T) { checkExtract(t, vm, tg) })
		t.Run("core", func(t *testing.T) { checkCore(t, vm, tg) })
		t.Run("kernel core", func(t *testing.T) { checkKernelCore(t, vm, tg) })
	})
}

// fdSleeper is the process plantFDs leaves running: its descriptors are a
// file read part way (3), a deleted file written to (4), a file opened for
// appending (5) and one for reading and writing (6); its stdout is a pipe
// and its environment has a variable of the test's own.
const fdSleeper = "sleep 1000020"

// plantFDs starts fdSleeper once per guest.
func plantFDs(t *testing.T, vm *testvm.VM) {
	t.Helper()
	script := `mkdir -p /tmp; [ -e /tmp/vmw-fds ] || { touch /tmp/vmw-fds; printf 'first line\nsecond line\n' > /tmp/vmw-read; ` +
		`( VMW_PLANTED=fd-test sh -c 'exec 3</tmp/vmw-read; read l <&3; exec 4>/tmp/vmw-deleted; echo hello >&4; ` +
		`rm /tmp/vmw-deleted; exec 5>>/tmp/vmw-append; exec 6<>/tmp/vmw-rw; echo $$ > /tmp/vmw-fds.pid; exec ` + fdSleeper + `' | sleep 1000021 ) ` +
		`</dev/null >/dev/null 2>/tmp/vmw-fds.err & sleep 1; }; cat /tmp/vmw-fds.err; true`
	out, err := vm.Run(script)
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(out) != "" {
		t.Logf("planting the descriptors: %s", out)
	}
}

// sleeperPID is the pid of fdSleeper (the shell that became it wrote it).
func sleeperPID(t *testing.T, vm *testvm.VM) int64 {
	t.Helper()
	out, err := vm.Run("cat /tmp/vmw-fds.pid")
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
	if err != nil {
		t.Fatalf("pid of %q: %q", fdSleeper, out)
	}
	return pid
}

// guestFD is a descriptor as the guest's /proc shows it.
type guestFD struct {
	link                string
	flags, ino, mnt, ok string
	pos                 int64
}

// guestFDs reads every process's descriptors with two commands: ls -l of
// the fd directories (the links; GNU ls told not to quote them) and grep of
// the fdinfo files.
func guestFDs(t *testing.T, vm *testvm.VM, pids ...int64) map[int64]map[int]guestFD {
	t.Helper()
	fd, info := "/proc/[0-9]*/fd/", "/proc/[0-9]*/fdinfo/*"
	if len(pids) > 0 {
		var a, b []string
		for _, p := range pids {
			a = append(a, fmt.Sprintf("/proc/%d/fd/", p))
			b = append(b, fmt.Sprintf("/proc/%d/fdinfo/*", p))
		}
		fd, info = strings.Join(a, " "), strings.Join(b, " ")
	}
	out, err := vm.RunTimeout(fmt.Sprintf(`QUOTING_STYLE=literal ls -l %s 2>/dev/null; `+
		`grep -H -E '^(pos|flags|mnt_id|ino):' %s 2>/dev/null | sed 's|^|I |'; true`, fd, info), 3*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	m := map[int64]map[int]guestFD{}
	var cur int64 = -1
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimRight(line, "\r")
		if d, ok := strings.CutSuffix(strings.TrimSuffix(line, ":"), "/fd/"); ok && strings.HasPrefix(d, "/proc/") {
			cur, _ = strconv.ParseInt(strings.TrimPrefix(d, "/proc/"), 10, 64)
			m[cur] = map[int]guestFD{}
			continue
		}
		if rest, ok := strings.CutPrefix(line, "I /proc/"); ok {
			// I /proc/PID/fdinfo/N:key:\tvalue
			pidS, rest, _ := strings.Cut(rest, "/")
			pid, _ := strconv.ParseInt(pidS, 10, 64)
			file, kv, ok := strings.Cut(rest, ":")
			if !ok || m[pid] == nil {
				continue
			}
			fd, err := strconv.Atoi(strings.TrimPrefix(file, "fdinfo/"))
			if err != nil {
				continue
			}
			k, v, _ := strings.Cut(kv, ":")
			v = strings.TrimSpace(v)
			g, ok := m[pid][fd]
			if !ok {
				continue
			}
			switch k {
			case "pos":
				g.pos, _ = strconv.ParseInt(v, 10, 64)
			case "flags":
				g.flags = v
			case "mnt_id":
				g.mnt = v
			case "ino":
				g.ino = v
			}
			m[pid][fd] = g
			continue
		}
		l, target, ok := strings.Cut(line, " -> ")
		if cur < 0 || !ok {
			continue
		}
		f := strings.Fields(l)
		fd, err := strconv.Atoi(f[len(f)-1])
		if err != nil {
			continue
		}
		m[cur][fd] = guestFD{link: target, ok: "yes"}
	}
	return m
}

// checkLsof compares `vmwatch lsof` of every process with the guest's
// /proc/PID/fd links and fdinfo (flags, inode, mount id; the position
// within what /proc showed before and after, for files being written),
// read before and after; a process whose descriptors changed in between is
// compared again, up to three times. fdSleeper's descriptors are checked by
// name: a file read part way, a deleted file, O_APPEND, a pipe.
func checkLsof(t *testing.T, vm *testvm.VM, tg string) {
	t.Helper()
	sleeper := sleeperPID(t, vm)
	var todo []int64
	compared, fds := 0, 0
	kinds := map[string]int{}
	for round := 0; round < 3; round++ {
		before := guestFDs(t, vm, todo...)
		var ours []struct {
			PID int64      `json:"pid"`
			FDs []linux.FD `json:"fds"`
		}
		args := []string{"lsof", "-t", tg}
		for _, p := range todo {
			args = append(args, strconv.FormatInt(p, 10))
		}
		out, stderr, err := vmwatchRun(append(args, "-o", "json")...)
		if err != nil {
			t.Fatalf("vmwatch lsof: %v\n%s", err, stderr)
		}
		if err := json.Unmarshal(out, &ours); err != nil {
			t.Fatal(err)
		}
		after := guestFDs(t, vm, todo...)
		todo = nil
		for _, p := range ours {
			b, okB := before[p.PID]
			a, okA := after[p.PID]
			if !okA || !okB {
				continue // started or ended meanwhile
			}
			diff := fdDiff(p.FDs, b, a)
			if diff == "" {
				compared++
				fds += len(p.FDs)
				for _, d := range p.FDs {
					kinds[strings.SplitN(d.Path, ":", 2)[0]]++
				}
				continue
			}
			if round == 2 {
				t.Errorf("descriptors of pid %d differ from /proc/%d/fd and fdinfo:\n%s", p.PID, p.PID, diff)
			}
			todo = append(todo, p.PID)
		}
		if len(todo) == 0 {
			break
		}
	}
	t.Logf("%d processes, %d descriptors equal to /proc/PID/fd and fdinfo (%v)", compared, fds, kinds)
	if compared < 8 {
		t.Errorf("only %d processes compared", compared)
	}
	// the planted descriptors, by what the test made them
	var ours []struct {
		FDs []linux.FD `json:"fds"`
	}
	vmwatchJSON(t, &ours, "lsof", "-t", tg, strconv.FormatInt(sleeper, 10))
	if len(ours) != 1 {
		t.Fatalf("lsof %d: %d processes", sleeper, len(ours))
	}
	by := map[int]linux.FD{}
	for _, d := range ours[0].FDs {
		by[d.FD] = d
	}
	const oAppend, oRdwr, oWronly = 0o2000, 2, 1
	checks := []struct {
		fd   int
		ok   bool
		what string
	}{
		{1, strings.HasPrefix(by[1].Path, "pipe:[") && by[1].Type == "FIFO", "stdout a pipe"},
		{3, by[3].Path == "/tmp/vmw-read" && by[3].Pos > 0 && by[3].Type == "REG", "/tmp/vmw-read read part way"},
		{4, by[4].Path == "/tmp/vmw-deleted (deleted)" && by[4].Deleted && by[4].Pos == 6, "a deleted file with 6 bytes written"},
		{5, by[5].Path == "/tmp/vmw-append" && by[5].Flags&oAppend != 0 && by[5].Flags&3 == oWronly, "O_APPEND|O_WRONLY"},
		{6, by[6].Path == "/tmp/vmw-rw" && by[6].Flags&3 == oRdwr, "O_RDWR"},
	}
	for _, c := range checks {
		if !c.ok {
			t.Errorf("fd %d of %q: want %s, got %+v", c.fd, fdSleeper, c.what, by[c.fd])
		}
	}
}

// fdDiff says how vmwatch's descriptors differ from /proc's, "" when they
// equal what /proc showed before or after (a position between the two: a
// file written meanwhile moved on).
func fdDiff(ours []linux.FD, before, after map[int]guestFD) string {
	if d := fdDiffNoPos(ours, after); d != "" {
		if fdDiffNoPos(ours, before) != "" {
			return d
		}
	}
	for _, o := range ours {
		lo, hi := before[o.FD].pos, after[o.FD].pos
		if lo > hi {
			lo, hi = hi, lo
		}
		if o.Pos < lo || o.Pos > hi {
			return fmt.Sprintf("fd %d %s: position %d, /proc %d before and %d after", o.FD, o.Path, o.Pos, before[o.FD].pos, after[o.FD].pos)
		}
	}
	return ""
}

// fdDiffNoPos compares everything but the positions.
func fdDiffNoPos(ours []linux.FD, v map[int]guestFD) string {
	var d []string
	if len(v) != len(ours) {
		d = append(d, fmt.Sprintf("%d descriptors, /proc has %d", len(ours), len(v)))
	}
	for _, o := range ours {
		g, ok := v[o.FD]
		if !ok {
			d = append(d, fmt.Sprintf("fd %d %q: not in /proc", o.FD, o.Path))
			continue
		}
		got := fmt.Sprintf("%s flags 0%o ino %d mnt_id %d", o.Path, o.Flags, o.Inode, o.MntID)
		want := fmt.Sprintf("%s flags %s ino %s mnt_id %s", g.link, g.flags, g.ino, g.mnt)
		if got != want {
			d = append(d, fmt.Sprintf("fd %d: vmwatch %q, /proc %q", o.FD, got, want))
		}
	}
	return strings.Join(d, "\n")
}

// checkEnvars compares `vmwatch envars` of every process with the guest's
// /proc/PID/environ, and finds the variable the test set.
func checkEnvars(t *testing.T, vm *testvm.VM, tg string) {
	t.Helper()
	sleeper := sleeperPID(t, vm)
	// one command for all processes: head prints each file after a
	// header line ("==> /proc/PID/environ <==", after a blank line from the
	// second on); base64 carries the NULs over the serial console
	headers := regexp.MustCompile(`(?:^|\n)==> /proc/([0-9]+)/environ <==\n`)
	read := func() map[int64][]string {
		out, err := vm.RunTimeout(`head -c 262144 /proc/[0-9]*/environ 2>/dev/null | base64 -w0; echo; true`, 3*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(out))
		if err != nil {
			t.Fatalf("environ over the console: %v", err)
		}
		m := map[int64][]string{}
		idx := headers.FindAllSubmatchIndex(raw, -1)
		for i, h := range idx {
			pid, _ := strconv.ParseInt(string(raw[h[2]:h[3]]), 10, 64)
			end := len(raw)
			if i+1 < len(idx) {
				end = idx[i+1][0]
			}
			s := strings.TrimRight(string(raw[h[1]:end]), "\x00")
			if s == "" {
				m[pid] = nil
				continue
			}
			m[pid] = strings.Split(s, "\x00")
		}
		return m
	}
	before := read()
	var ours []struct {
		PID     int64    `json:"pid"`
		Environ []string `json:"environ"`
		Errors  []string `json:"errors"`
	}
	vmwatchJSON(t, &ours, "envars", "-t", tg)
	after := read()
	compared, vars := 0, 0
	planted := false
	for _, p := range ours {
		b, okB := before[p.PID]
		a, okA := after[p.PID]
		if !okA || !okB || len(a) == 0 && len(b) == 0 && len(p.Environ) == 0 {
			continue
		}
		if !slices.Equal(p.Environ, a) && !slices.Equal(p.Environ, b) {
			t.Errorf("environment of pid %d differs from /proc/%d/environ:\nvmwatch %q\n/proc   %q (errors %v)", p.PID, p.PID, p.Environ, a, p.Errors)
			continue
		}
		compared++
		vars += len(p.Environ)
		if p.PID == sleeper && slices.Contains(p.Environ, "VMW_PLANTED=fd-test") {
			planted = true
		}
	}
	t.Logf("%d processes, %d variables equal to /proc/PID/environ", compared, vars)
	if compared < 8 || !planted {
		t.Errorf("%d processes compared; the planted variable found: %v", compared, planted)
	}
}

// checkCaps compares `vmwatch caps` of every process with the Cap* lines
// of the guest's /proc/PID/status. On the system guest some of systemd's
// services run with a reduced bounding set, and the unprivileged user's
// sleeper with none: variety is required there.
func checkCaps(t *testing.T, vm *testvm.VM, tg string, system bool) {
	t.Helper()
	read := func() map[int64]string {
		out, err := vm.RunTimeout(`grep -H '^Cap' /proc/[0-9]*/status 2>/dev/null; true`, 3*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		m := map[int64]string{}
		for _, line := range strings.Split(out, "\n") {
			// /proc/PID/status:CapInh:\t0000000000000000
			rest, ok := strings.CutPrefix(strings.TrimRight(line, "\r"), "/proc/")
			if !ok {
				continue
			}
			pidS, kv, ok := strings.Cut(rest, "/status:")
			pid, err := strconv.ParseInt(pidS, 10, 64)
			if !ok || err != nil {
				continue
			}
			k, v, _ := strings.Cut(kv, ":")
			m[pid] += k + "=" + strings.TrimSpace(v) + " "
		}
		return m
	}
	before := read()
	var ours []struct {
		PID int64 `json:"pid"`
		linux.Capabilities
	}
	vmwatchJSON(t, &ours, "caps", "-t", tg)
	after := read()
	compared := 0
	distinct := map[string]bool{}
	for _, p := range ours {
		got := fmt.Sprintf("CapInh=%016x CapPrm=%016x CapEff=%016x CapBnd=%016x CapAmb=%016x ",
			p.Inheritable, p.Permitted, p.Effective, p.Bounding, p.Ambient)
		b, okB := before[p.PID]
		a, okA := after[p.PID]
		if !okA || !okB {
			continue
		}
		if got != a && got != b {
			t.Errorf("capabilities of pid %d: vmwatch %q, /proc/%d/status %q", p.PID, got, p.PID, a)
			continue
		}
		compared++
		distinct[got] = true
	}
	t.Logf("%d processes, %d distinct capability sets equal to /proc/PID/status", compared, len(distinct))
	if compared < 20 || system && len(distinct) < 3 {
		t.Errorf("%d processes compared, %d distinct sets", compared, len(distinct))
	}
}

// checkPtrace traces a sleep with a Python tracer (PTRACE_ATTACH through
// ctypes, then PTRACE_CONT): vmwatch ptrace must show every thread the
// guest's /proc shows a TracerPid for, and check must report the tracer,
// which is no debugger. Both processes are killed at the end (the tracee
// is detached by the tracer's exit), so later checks see a clean guest.
func checkPtrace(t *testing.T, vm *testvm.VM, tg string) {
	py := `import ctypes,os,time; l=ctypes.CDLL(None,use_errno=True); p=int(open("/tmp/vmw-tracee.pid").read()); ` +
		`r=l.ptrace(16,p,0,0); os.waitpid(p,0); l.ptrace(7,p,0,0); open("/tmp/vmw-tracer.pid","w").write("%d %d" % (r, os.getpid())); time.sleep(1000070)`
	out, err := vm.Run(`rm -f /tmp/vmw-tracer.pid; sleep 1000071 </dev/null >/dev/null 2>&1 & echo $! > /tmp/vmw-tracee.pid; ` +
		`python3 -c '` + py + `' </dev/null >/dev/null 2>/tmp/vmw-tracer.err & ` +
		`for i in 1 2 3 4 5 6 7 8 9 10; do [ -s /tmp/vmw-tracer.pid ] && break; sleep 1; done; cat /tmp/vmw-tracer.err; echo; cat /tmp/vmw-tracee.pid /tmp/vmw-tracer.pid`)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(out)
	if len(f) < 3 || f[len(f)-2] != "0" {
		t.Fatalf("planting the tracer: %q (want the tracee's pid, ptrace's 0 and the tracer's pid)", out)
	}
	tracee, _ := strconv.ParseInt(f[len(f)-3], 10, 64)
	tracer, _ := strconv.ParseInt(f[len(f)-1], 10, 64)
	defer vm.Run(fmt.Sprintf("kill %d %d; true", tracer, tracee))
	guestRE := regexp.MustCompile(`^/proc/\d+/task/(\d+)/status:TracerPid:\s*(\d+)$`)
	out, err = vm.Run(`grep -H TracerPid /proc/[0-9]*/task/*/status 2>/dev/null | grep -v "TracerPid:\s*0$"; true`)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if m := guestRE.FindStringSubmatch(l); m != nil {
			want[m[1]+" "+m[2]] = true
		}
	}
	var ours []struct {
		TID       int64  `json:"tid"`
		PID       int64  `json:"pid"`
		TracerPID int64  `json:"tracer_pid"`
		Comm      string `json:"comm"`
	}
	vmwatchJSON(t, &ours, "ptrace", "-t", tg)
	got := map[string]bool{}
	for _, p := range ours {
		got[fmt.Sprintf("%d %d", p.TID, p.TracerPID)] = true
	}
	if !maps.Equal(got, want) {
		t.Errorf("traced threads (tid tracer): vmwatch %v, the guest's TracerPid %v", got, want)
	}
	if !want[fmt.Sprintf("%d %d", tracee, tracer)] {
		t.Errorf("the guest does not show %d tracing %d: %v", tracer, tracee, want)
	}
	found := false
	for _, fd := range check(t, vm, "--only", "ptrace") {
		if fd.ID == "ptrace-tracer" && fd.Severity == detect.High && slices.Contains(fd.Evidence.PIDs, tracee) && slices.Contains(fd.Evidence.PIDs, tracer) {
			found = true
		}
	}
	if !found {
		t.Errorf("check --only ptrace did not report %d tracing %d", tracer, tracee)
	}
	t.Logf("%d traced threads equal to the guest's TracerPid; the tracer reported", len(got))
}

// checkLibraries compares libraries with what a Python script in the guest
// (testdata/elf_build_ids.py) reads from the files on disk: for every
// process, each ELF file mapped from offset 0, the address of that mapping
// and the build id in the file's notes.
func checkLibraries(t *testing.T, vm *testvm.VM, tg string) {
	script, err := os.ReadFile("testdata/elf_build_ids.py")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Run("echo " + base64.StdEncoding.EncodeToString(script) + " | base64 -d > /tmp/vmw-elf.py"); err != nil {
		t.Fatal(err)
	}
	var ours []struct {
		PID       int64 `json:"pid"`
		Libraries []struct {
			Path    string `json:"path"`
			Base    string `json:"base"`
			BuildID string `json:"build_id"`
			Main    bool   `json:"main"`
			Errors  []string
		} `json:"libraries"`
	}
	vmwatchJSON(t, &ours, "libraries", "-t", tg)
	var pids []string
	got := map[string]bool{}
	mains, vdsos := 0, 0
	for _, p := range ours {
		pids = append(pids, strconv.FormatInt(p.PID, 10))
		for _, l := range p.Libraries {
			base, _ := strconv.ParseUint(strings.TrimPrefix(l.Base, "0x"), 16, 64)
			id := l.BuildID
			if id == "" {
				id = "-"
			}
			switch {
			case l.Path == "[vdso]":
				if l.BuildID != "" {
					vdsos++
				}
			case strings.HasSuffix(l.Path, " (deleted)"):
			default:
				got[fmt.Sprintf("%d %d %s %s", p.PID, base, id, l.Path)] = true
			}
			if l.Main {
				mains++
			}
		}
	}
	out, err := vm.RunTimeout("python3 /tmp/vmw-elf.py "+strings.Join(pids, " "), 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		want[l] = true
	}
	// a process that ended between the two reads is in one of them only
	for _, p := range ours {
		prefix := strconv.FormatInt(p.PID, 10) + " "
		inGuest := false
		for w := range want {
			if strings.HasPrefix(w, prefix) {
				inGuest = true
				break
			}
		}
		if !inGuest {
			maps.DeleteFunc(got, func(k string, _ bool) bool { return strings.HasPrefix(k, prefix) })
		}
	}
	if !maps.Equal(got, want) {
		var missing, extra []string
		for w := range want {
			if !got[w] {
				missing = append(missing, w)
			}
		}
		for g := range got {
			if !want[g] {
				extra = append(extra, g)
			}
		}
		t.Errorf("libraries differ from the files' own build ids:\nonly in the guest: %q\nonly in vmwatch: %q", missing, extra)
	}
	if len(want) < 50 || mains < len(pids)/2 || vdsos < len(pids)/2 {
		t.Errorf("%d objects compared, %d programs marked, %d vDSOs with a build id, of %d processes", len(want), mains, vdsos, len(pids))
	}
	t.Logf("%d processes, %d ELF objects with base and build id equal to the files'; %d vDSOs", len(pids), len(want), vdsos)
}

// checkExtract runs a copy of sleep that is deleted once it runs, and
// extracts it through --exe: the SHA-256 must equal what sha256sum gave
// for the file before it was deleted. A file open in fdSleeper is
// extracted by path, against the guest's sha256sum.
func checkExtract(t *testing.T, vm *testvm.VM, tg string) {
	plantFDs(t, vm)
	out, err := vm.Run(`d=/tmp/vmw-x; [ -e /tmp/vmw-x.pid ] || { mkdir -p $d && cp -L $(which sleep) $d/sleep && ` +
		`sha256sum $d/sleep > /tmp/vmw-x.sum && ( $d/sleep 1000080 </dev/null >/dev/null 2>&1 & echo $! > /tmp/vmw-x.pid ) && sleep 1 && rm -rf $d; }; ` +
		`cat /tmp/vmw-x.pid /tmp/vmw-x.sum; sha256sum /tmp/vmw-read`)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(out)
	if len(f) != 5 {
		t.Fatalf("planting the deleted program: %q", out)
	}
	pid, want, wantRead := f[0], f[1], f[3]
	// a deleted program running is what check reports: later clean checks
	// of this guest must not see it
	defer vm.Run("kill " + pid + "; rm -f /tmp/vmw-x.pid /tmp/vmw-x.sum; true")
	type result struct {
		Path     string `json:"path"`
		Size     int64  `json:"size"`
		Complete bool   `json:"complete"`
		SHA256   string `json:"sha256"`
	}
	dir := t.TempDir()
	for _, c := range []struct {
		args      []string
		sum, path string
	}{
		{[]string{"--exe", pid}, want, "/tmp/vmw-x/sleep (deleted)"},
		{[]string{"/tmp/vmw-read"}, wantRead, "/tmp/vmw-read"},
	} {
		outFile := filepath.Join(dir, "out")
		var r result
		vmwatchJSON(t, &r, append([]string{"extract", "file", "-t", tg, "--to", outFile}, c.args...)...)
		b, err := os.ReadFile(outFile)
		if err != nil {
			t.Fatal(err)
		}
		host := sha256.Sum256(b)
		if r.SHA256 != c.sum || hex.EncodeToString(host[:]) != c.sum || !r.Complete || r.Path != c.path || int64(len(b)) != r.Size {
			t.Errorf("extract file %v: %+v, %d bytes written (sha256 %x); the guest's sha256sum %s, path %s", c.args, r, len(b), host, c.sum, c.path)
			continue
		}
		t.Logf("extract file %v: %s, %d bytes, sha256 equal to the guest's sha256sum", c.args, r.Path, r.Size)
	}
}

// checkCore extracts the core of a sleeping process and holds it against
// the guest: every readable mapping /proc/PID/maps lists is a segment with
// its range and permissions whose bytes equal what the guest reads from
// /proc/PID/mem, and gdb opens it with the program (extracted too) and
// reports the rip and rsp that /proc/PID/syscall gives.
func checkCore(t *testing.T, vm *testvm.VM, tg string) {
	out, err := vm.Run(`VMW_CORE_MARK=core-4f2a sleep 1000090 </dev/null >/dev/null 2>&1 & echo $!; sleep 1`)
	pid := strings.TrimSpace(out)
	if _, perr := strconv.Atoi(pid); err != nil || perr != nil {
		t.Fatalf("the process to dump: %v: %q", err, out)
	}
	defer vm.Run("kill " + pid + "; true")
	// the guest's view: each readable mapping (but the kernel's vvar pages,
	// which /proc/PID/mem does not read, and vsyscall) with the SHA-256 of
	// its bytes, then the registers of the system call it sleeps in
	out, err = vm.Run(`p=` + pid + `; while read r perms off dev ino path; do case "$path" in *vvar*|*vsyscall*) continue;; esac; ` +
		`case $perms in r*) ;; *) continue;; esac; s=$((0x${r%-*})); e=$((0x${r#*-})); ` +
		`echo "$r $perms $(dd if=/proc/$p/mem bs=4096 skip=$((s / 4096)) count=$(((e - s) / 4096)) 2>/dev/null | sha256sum | cut -d' ' -f1)"; ` +
		`done < /proc/$p/maps; echo syscall $(cat /proc/$p/syscall)`)
	if err != nil {
		t.Fatalf("the guest's maps and memory of %s: %v: %s", pid, err, out)
	}
	type want struct {
		start, end uint64
		perms, sum string
	}
	var wants []want
	var sp, pc string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(l)
		if len(f) > 2 && f[0] == "syscall" {
			sp, pc = f[len(f)-2], f[len(f)-1]
			continue
		}
		if len(f) != 3 {
			t.Fatalf("the guest's line %q", l)
		}
		r := strings.SplitN(f[0], "-", 2)
		s, _ := strconv.ParseUint(r[0], 16, 64)
		e, _ := strconv.ParseUint(r[1], 16, 64)
		wants = append(wants, want{s, e, f[1], f[2]})
	}
	if len(wants) < 3 || sp == "" {
		t.Fatalf("the guest's maps and registers: %q", out)
	}
	dir := t.TempDir()
	core, prog := filepath.Join(dir, "core"), filepath.Join(dir, "prog")
	var info linux.CoreInfo
	vmwatchJSON(t, &info, "extract", "core", pid, "-t", tg, "--to", core)
	vmwatch(t, "extract", "file", "--exe", pid, "-t", tg, "--to", prog)
	ef, err := elf.Open(core)
	if err != nil {
		t.Fatalf("the core is no ELF file: %v", err)
	}
	defer ef.Close()
	if ef.Type != elf.ET_CORE || ef.Machine != elf.EM_X86_64 {
		t.Fatalf("the core is %v for %v", ef.Type, ef.Machine)
	}
	for _, w := range wants {
		var seg *elf.Prog
		for _, p := range ef.Progs {
			if p.Type == elf.PT_LOAD && p.Vaddr == w.start {
				seg = p
			}
		}
		if seg == nil || seg.Memsz != w.end-w.start || seg.Filesz != seg.Memsz {
			t.Errorf("mapping %x-%x %s: segment %+v", w.start, w.end, w.perms, seg)
			continue
		}
		flags := elf.ProgFlag(0)
		for i, bit := range []elf.ProgFlag{elf.PF_R, elf.PF_W, elf.PF_X} {
			if w.perms[i] != '-' {
				flags |= bit
			}
		}
		h := sha256.New()
		if _, err := io.Copy(h, seg.Open()); err != nil || seg.Flags != flags || hex.EncodeToString(h.Sum(nil)) != w.sum {
			t.Errorf("mapping %x-%x %s: segment flags %v, bytes %x (%v); the guest read %s", w.start, w.end, w.perms, seg.Flags, h.Sum(nil), err, w.sum)
		}
	}
	g, err := exec.Command("gdb", "-batch", "-nx", "-ex", "info registers rip rsp", prog, core).CombinedOutput()
	if err != nil {
		t.Fatalf("gdb %s %s: %v: %s", prog, core, err, g)
	}
	regs := map[string]string{}
	for _, l := range strings.Split(string(g), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && (f[0] == "rip" || f[0] == "rsp") {
			regs[f[0]] = f[1]
		}
	}
	if regs["rip"] != pc || regs["rsp"] != sp {
		t.Errorf("gdb reads rip %s rsp %s from the core; the guest's /proc/%s/syscall has pc %s sp %s\n%s", regs["rip"], regs["rsp"], pid, pc, sp, g)
	}
	t.Logf("extract core %s: %d segments (%d compared with /proc/PID/mem), %d of %d pages present, %d from the page cache; gdb: rip %s rsp %s",
		pid, info.Segments, len(wants), info.Present, info.Pages, info.Cached, regs["rip"], regs["rsp"])
}

// checkKernelCore extracts the kernel's core and holds it against the
// guest: its VMCOREINFO note equals the one the guest's own /proc/kcore
// carries, and gdb reads the guest's /proc/version at linux_banner, the
// address the guest's /proc/kallsyms gives.
func checkKernelCore(t *testing.T, vm *testvm.VM, tg string) {
	out, err := vm.Run(`cat /proc/version; awk '$3 == "linux_banner" {print $1}' /proc/kallsyms; head -c 65536 /proc/kcore | gzip -c | base64`)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if err != nil || len(lines) < 3 {
		t.Fatalf("the guest's /proc/version, kallsyms and kcore: %v: %q", err, out)
	}
	version, banner := strings.TrimSpace(lines[0]), strings.TrimSpace(lines[1])
	gz, err := base64.StdEncoding.DecodeString(strings.Join(lines[2:], ""))
	if err != nil {
		t.Fatalf("the guest's kcore in base64: %v", err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	kcore, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("the guest's kcore: %v", err)
	}
	want, err := vmcoreinfoNote(bytes.NewReader(kcore))
	if err != nil {
		t.Fatalf("the guest's /proc/kcore: %v", err)
	}
	core := filepath.Join(t.TempDir(), "vmcore")
	var info linux.KernelCoreInfo
	vmwatchJSON(t, &info, "extract", "kernel", "-t", tg, "--to", core)
	f, err := os.Open(core)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, err := vmcoreinfoNote(f)
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("VMCOREINFO of the extracted core (%v):\n%s\nthe guest's /proc/kcore:\n%s", err, got, want)
	}
	g, err := exec.Command("gdb", "-batch", "-nx", "-ex", "x/s 0x"+banner, "-c", core).CombinedOutput()
	if err != nil || !strings.Contains(string(g), version[:min(len(version), 60)]) {
		t.Errorf("gdb x/s linux_banner (0x%s) in the core: %v: %s; the guest's /proc/version: %s", banner, err, g, version)
	}
	t.Logf("extract kernel: %d segments, %d pages (%d of zeros), %d bytes of VMCOREINFO equal to the guest's /proc/kcore; gdb reads /proc/version at linux_banner",
		info.Segments, info.Pages, info.Zero, len(got))
}

// vmcoreinfoNote returns the VMCOREINFO note of an ELF core.
func vmcoreinfoNote(r io.ReaderAt) ([]byte, error) {
	ef, err := elf.NewFile(r)
	if err != nil {
		return nil, err
	}
	for _, p := range ef.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			return nil, err
		}
		for len(b) >= 12 {
			le := binary.LittleEndian
			nsz, dsz := int(le.Uint32(b)), int(le.Uint32(b[4:]))
			name := (nsz + 3) &^ 3
			if 12+name+dsz > len(b) {
				break
			}
			if strings.TrimRight(string(b[12:12+nsz]), "\x00") == "VMCOREINFO" {
				return b[12+name : 12+name+dsz], nil
			}
			b = b[12+name+((dsz+3)&^3):]
		}
	}
	return nil, errors.New("no VMCOREINFO note")
}
