package e2e

import (
	"bytes"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestGarbageInputs: memory that holds no Linux kernel gives a clear error
// (exit status 2, a message that says what is missing), never a panic or a
// hang.
func TestGarbageInputs(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, size int64, fill func(f *os.File)) string {
		p := filepath.Join(dir, name)
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if fill != nil {
			fill(f)
		}
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
		f.Close()
		return p
	}
	random := func(n int) func(f *os.File) {
		return func(f *os.File) {
			b := make([]byte, n)
			rand.New(rand.NewSource(42)).Read(b)
			f.Write(b)
		}
	}
	cases := []struct {
		name, path, want string
	}{
		{"zeros 512 MiB", write("zeros.raw", 512<<20, nil), "no Linux kernel found"},
		{"zeros 4 GiB (sparse)", write("zeros4g.raw", 4<<30, nil), "no Linux kernel found"},
		{"random 256 MiB", write("random.raw", 256<<20, random(256<<20)), "no Linux kernel found"},
		{"tiny file", write("tiny.raw", 1000, random(1000)), "too small"},
		{"empty file", write("empty.raw", 0, nil), "too small"},
		{"truncated ELF", write("trunc.elf", 2<<20, func(f *os.File) { f.Write(truncatedCore()) }), "truncated"},
		{"kdump", write("kdump", 2<<20, func(f *os.File) { f.WriteString("KDUMP   ") }), "not supported"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			out, stderr, err := vmwatchRun("ps", "-t", "dump:"+c.path)
			if err == nil {
				t.Fatalf("vmwatch ps succeeded on garbage: %s", out)
			}
			if code := exitCode(err); code != 2 {
				t.Errorf("exit status %d, want 2", code)
			}
			if bytes.Contains(stderr, []byte("panic")) || bytes.Contains(stderr, []byte("goroutine")) {
				t.Fatalf("panic: %s", stderr)
			}
			if !strings.Contains(string(stderr), c.want) {
				t.Errorf("error %q does not say %q", strings.TrimSpace(string(stderr)), c.want)
			}
			if d := time.Since(start); d > 20*time.Second {
				t.Errorf("took %v", d)
			}
			t.Logf("%s (%v)", strings.TrimSpace(string(stderr)), time.Since(start).Round(time.Millisecond))
		})
	}
	// a missing target and bad target strings
	for _, args := range [][]string{{"ps"}, {"ps", "-t", "dump:/nonexistent"}, {"ps", "-t", "bogus"}, {"ps", "-t", "qmp:/nonexistent.sock"}, {"ps", "-t", "pid:1"}} {
		_, stderr, err := vmwatchRun(args...)
		if exitCode(err) != 2 || len(stderr) == 0 {
			t.Errorf("vmwatch %v: exit %d, stderr %q", args, exitCode(err), stderr)
		}
		t.Logf("vmwatch %v: %s", args, strings.TrimSpace(string(stderr)))
	}
}

// truncatedCore is the header of an ELF core whose single PT_LOAD segment
// claims far more bytes than the file holds.
func truncatedCore() []byte {
	var b bytes.Buffer
	b.WriteString("\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00")
	le := func(v uint64, n int) {
		for i := 0; i < n; i++ {
			b.WriteByte(byte(v >> (8 * i)))
		}
	}
	for _, f := range [][2]uint64{
		{4, 2}, {62, 2}, {1, 4}, {0, 8}, {64, 8}, {0, 8}, {0, 4}, // type, machine, version, entry, phoff, shoff, flags
		{64, 2}, {56, 2}, {1, 2}, {0, 2}, {0, 2}, {0, 2}, // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
		{1, 4}, {4, 4}, {4096, 8}, {0, 8}, {0, 8}, {1 << 30, 8}, {1 << 30, 8}, {4096, 8}, // PT_LOAD of 1 GiB
	} {
		le(f[0], int(f[1]))
	}
	return b.Bytes()
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(interface{ ExitCode() int }); ok {
		return ee.ExitCode()
	}
	return -1
}
