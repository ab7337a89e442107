//go:build yara

package detect

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	yara "github.com/hillu/go-yara/v4"
)

const testRules = `rule vmwatch_test_marker {
	meta:
		severity = "critical"
	strings:
		$a = "vmwatch-yara-test-marker"
	condition:
		$a
}
`

var testData = []byte("....vmwatch-yara-test-marker....")

// fifo makes a named pipe that a goroutine writes content to once, as
// --yara <(cat rules.yar) or /dev/stdin gives the rules.
func fifo(t *testing.T, content []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "rules.fifo")
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// opening blocks until the reader opens; O_NONBLOCK would fail
		// with ENXIO while there is none
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			t.Error(err)
			return
		}
		f.Write(content)
		f.Close()
	}()
	t.Cleanup(func() {
		// unblock a writer still waiting for a reader
		if f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK, 0); err == nil {
			f.Close()
		}
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("the FIFO writer did not finish")
		}
	})
	return p
}

// compileYara fails the test when CompileYara blocks (it used to reopen a
// FIFO it had drained, and wait for a writer that never comes).
func compileYara(t *testing.T, path string) (Scanner, error) {
	t.Helper()
	type res struct {
		sc  Scanner
		err error
	}
	ch := make(chan res, 1)
	go func() {
		sc, err := CompileYara(path)
		ch <- res{sc, err}
	}()
	select {
	case r := <-ch:
		return r.sc, r.err
	case <-time.After(10 * time.Second):
		t.Fatalf("CompileYara(%s) blocked", path)
		return nil, nil
	}
}

func checkScanner(t *testing.T, sc Scanner) {
	t.Helper()
	ms, err := sc.Scan(testData)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || ms[0].Rule != "vmwatch_test_marker" || ms[0].Offset != 4 || ms[0].Severity != "critical" {
		t.Fatalf("matches %+v, want vmwatch_test_marker at 4, critical", ms)
	}
}

// Rules read from a pipe used to be drained by the attempt to load them as
// compiled rules, then compiled from the empty rest: no rules, no findings.
func TestCompileYaraFIFO(t *testing.T) {
	sc, err := compileYara(t, fifo(t, []byte(testRules)))
	if err != nil {
		t.Fatal(err)
	}
	checkScanner(t, sc)
}

func TestCompileYaraFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "rules.yar")
	if err := os.WriteFile(p, []byte(testRules), 0o600); err != nil {
		t.Fatal(err)
	}
	sc, err := compileYara(t, p)
	if err != nil {
		t.Fatal(err)
	}
	checkScanner(t, sc)
}

// compiled rules (yarac), from a file and from a pipe
func TestCompileYaraCompiled(t *testing.T) {
	r, err := yara.Compile(testRules, nil)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := r.Write(&b); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "rules.yarc")
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{p, fifo(t, []byte(b.String()))} {
		sc, err := compileYara(t, path)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		checkScanner(t, sc)
	}
}

// A source that holds no rule (an empty pipe, a file of comments) would scan
// nothing and report nothing: it is an error.
func TestCompileYaraNoRules(t *testing.T) {
	for _, c := range []string{"", "// nothing here\n"} {
		if _, err := compileYara(t, fifo(t, []byte(c))); err == nil || !strings.Contains(err.Error(), "no rules") {
			t.Errorf("rules %q: err %v, want one saying no rules", c, err)
		}
	}
}

func TestCompileYaraSyntaxError(t *testing.T) {
	p := filepath.Join(t.TempDir(), "bad.yar")
	os.WriteFile(p, []byte("rule x {\n condition:\n  nosuch\n}\n"), 0o600)
	_, err := compileYara(t, p)
	if err == nil || !strings.Contains(err.Error(), p+":3:") {
		t.Errorf("err %v, want one naming %s:3", err, p)
	}
}

// A regular file's includes are found beside it, wherever the working
// directory is.
func TestCompileYaraInclude(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "marker.yar"), []byte(testRules), 0o600)
	p := filepath.Join(dir, "main.yar")
	os.WriteFile(p, []byte(`include "marker.yar"`+"\n"), 0o600)
	t.Chdir(t.TempDir())
	sc, err := compileYara(t, p)
	if err != nil {
		t.Fatal(err)
	}
	checkScanner(t, sc)
}
