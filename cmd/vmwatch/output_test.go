package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/vmwatch/vmwatch/detect"
	"github.com/vmwatch/vmwatch/linux"
)

func TestEscape(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", ""},
		{"sshd: root@pts/0", "sshd: root@pts/0"},
		{"naïve 日本語 ✓ €", "naïve 日本語 ✓ €"},
		{"a\nb", `a\nb`},
		{"a\rb\tc", `a\rb\tc`},
		{"\x1b[31mred", `\x1b[31mred`},
		{"\x00\x01\x1f\x7f", `\x00\x01\x1f\x7f`},
		{"c1 \u0085 \u009b", `c1 \x85 \x9b`},
		{"bad \xff\xfe utf8 \xc3", `bad \xff\xfe utf8 \xc3`},
		{"good \ufffd stays", "good \ufffd stays"},
		{"abc\u202egnp.exe", `abc\u202egnp.exe`},
		{"\u202a\u202b\u202c\u202d\u2066\u2067\u2068\u2069", `\u202a\u202b\u202c\u202d\u2066\u2067\u2068\u2069`},
		{`back\slash \x2d`, `back\slash \x2d`},
	} {
		if got := escape(c.in); got != c.want {
			t.Errorf("escape(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// TestEscapeNoControls: whatever goes in, no control byte, no invalid
// UTF-8 and no bidi control comes out.
func TestEscapeNoControls(t *testing.T) {
	var in []string
	for b := 0; b < 256; b++ {
		in = append(in, string([]byte{byte(b)}), "x"+string([]byte{byte(b)})+"y")
	}
	for r := rune(0); r < 0x3000; r++ {
		in = append(in, string(r))
	}
	seed := uint32(1)
	for i := 0; i < 2000; i++ {
		buf := make([]byte, i%40)
		for j := range buf {
			seed = seed*1664525 + 1013904223
			buf[j] = byte(seed >> 24)
		}
		in = append(in, string(buf))
	}
	for _, s := range in {
		out := escape(s)
		for i := 0; i < len(out); i++ {
			if out[i] < 0x20 || out[i] == 0x7f {
				t.Fatalf("escape(%q) = %q has byte %#x", s, out, out[i])
			}
		}
		if !utf8.ValidString(out) {
			t.Fatalf("escape(%q) = %q is not UTF-8", s, out)
		}
		for _, r := range out {
			if r >= 0x80 && r <= 0x9f || bidi(r) {
				t.Fatalf("escape(%q) = %q has %U", s, out, r)
			}
		}
	}
}

// forged is a process whose names try to forge a row of ps's table and
// colour the terminal.
func forged() []linux.Process {
	return []linux.Process{
		{PID: 1, PPID: 0, Comm: "init", Cmdline: []string{"/sbin/init"}},
		{PID: 666, PPID: 1, Comm: "\x1b[31mred", Cmdline: []string{"evil\nPID  PPID fake row", "--x\tz"}},
	}
}

func TestPSTableEscapes(t *testing.T) {
	var out bytes.Buffer
	if err := emitPS(&out, "table", forged(), false, linux.InitNamespaces{}); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("want a header and 2 rows, got %d lines:\n%s", len(lines), s)
	}
	if strings.ContainsAny(s, "\x1b\t\r") {
		t.Errorf("control characters reach the table:\n%q", s)
	}
	for _, want := range []string{`\x1b[31mred`, `evil\nPID  PPID fake row --x\tz`} {
		if !strings.Contains(lines[2], want) {
			t.Errorf("row %q lacks %q", lines[2], want)
		}
	}
}

func TestPSJSONExact(t *testing.T) {
	for _, format := range []string{"json", "jsonl"} {
		var out bytes.Buffer
		if err := emitPS(&out, format, forged(), false, linux.InitNamespaces{}); err != nil {
			t.Fatal(err)
		}
		var got []linux.Process
		if format == "json" {
			if err := json.Unmarshal(out.Bytes(), &got); err != nil {
				t.Fatal(err)
			}
		} else {
			dec := json.NewDecoder(&out)
			for dec.More() {
				var p linux.Process
				if err := dec.Decode(&p); err != nil {
					t.Fatal(err)
				}
				got = append(got, p)
			}
		}
		want := forged()
		if len(got) != len(want) {
			t.Fatalf("%s: %d processes, want %d", format, len(got), len(want))
		}
		for i := range want {
			if got[i].Comm != want[i].Comm || strings.Join(got[i].Cmdline, "\x00") != strings.Join(want[i].Cmdline, "\x00") {
				t.Errorf("%s: process %d is %q %q, want %q %q", format, i, got[i].Comm, got[i].Cmdline, want[i].Comm, want[i].Cmdline)
			}
		}
	}
}

func TestTextLinesEscape(t *testing.T) {
	var b bytes.Buffer
	linef(&b, "%s %s: %s", "HIGH", "x", "line\nfake\x1b]0;title\x07")
	if got, want := b.String(), `HIGH x: line\nfake\x1b]0;title\x07`+"\n"; got != want {
		t.Errorf("linef wrote %q, want %q", got, want)
	}
}

// Errors printed to stderr can carry guest-controlled text (a process name,
// a module name); it is escaped as in table output, so that it cannot forge
// a line or send the terminal an escape sequence.
func TestStderrEscapesGuestText(t *testing.T) {
	evil := "evil\n\x1b]0;owned\x07\u202egnp.exe"
	esc := `evil\n\x1b]0;owned\x07\u202egnp.exe`
	var b bytes.Buffer
	printError(&b, fmt.Errorf("process 7 (%s): read its mm: %w", evil, errors.New("fault")))
	if want := "vmwatch: process 7 (" + esc + "): read its mm: fault\n"; b.String() != want {
		t.Errorf("printError wrote %q, want %q", b.String(), want)
	}
	b.Reset()
	warnIncomplete(&b, "process list", fmt.Errorf("task list: stopped at %s", evil))
	if want := "vmwatch: warning: process list incomplete: task list: stopped at " + esc + " (retry, or use --pause for an exact snapshot)\n"; b.String() != want {
		t.Errorf("warnIncomplete wrote %q, want %q", b.String(), want)
	}
	b.Reset()
	warnDetectors(&b, []detect.DetectorError{{Detector: "yara", Error: "process " + evil + ": mm"}})
	if want := "vmwatch: warning: detector yara did not finish: process " + esc + ": mm\n"; b.String() != want {
		t.Errorf("warnDetectors wrote %q, want %q", b.String(), want)
	}
}

// errors.Join's errors keep a line each; a newline inside one does not.
func TestErrTextJoin(t *testing.T) {
	err := errors.Join(errors.New("module a\nb"), nil, errors.New("second"))
	if got, want := errText(err), "module a\\nb\nsecond"; got != want {
		t.Errorf("errText(Join) = %q, want %q", got, want)
	}
	// several %w: the message is not the parts joined by newlines
	err = fmt.Errorf("x %w y %w", errors.New("a\n"), errors.New("b"))
	if got, want := errText(err), `x a\n y b`; got != want {
		t.Errorf("errText(Errorf) = %q, want %q", got, want)
	}
	if got := errText(errors.New("plain: /run/x.sock")); got != "plain: /run/x.sock" {
		t.Errorf("errText changed a clean message: %q", got)
	}
}
