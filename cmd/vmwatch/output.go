package main

import (
	"encoding/json"
	"fmt"
	"io"
	"reflect"
	"strings"
	"text/tabwriter"
	"unicode/utf8"

	"github.com/vmwatch/vmwatch/detect"
)

// emit writes v as JSON (one document), JSON lines (one object per element
// of a slice) or a table drawn by table.
func emit(w io.Writer, format string, v any, table func(tw *tabwriter.Writer)) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "jsonl":
		enc := json.NewEncoder(w)
		rv := reflect.ValueOf(v)
		if rv.Kind() == reflect.Slice {
			for i := 0; i < rv.Len(); i++ {
				if err := enc.Encode(rv.Index(i).Interface()); err != nil {
					return err
				}
			}
			return nil
		}
		return enc.Encode(v)
	default:
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		table(tw)
		return tw.Flush()
	}
}

// row writes tab-separated cells, each passed through escape, so that no
// guest string can add a row, split a column or drive the terminal.
func row(tw *tabwriter.Writer, cells ...any) {
	s := make([]string, len(cells))
	for i, c := range cells {
		s[i] = escape(fmt.Sprint(c))
	}
	fmt.Fprintln(tw, strings.Join(s, "\t"))
}

// linef writes one text line (pstree, dmesg, the lines around a table)
// through escape and ends it with a newline. The format is vmwatch's own;
// what it formats may come from the guest.
func linef(w io.Writer, format string, args ...any) {
	fmt.Fprintln(w, escape(fmt.Sprintf(format, args...)))
}

// errText is an error's message for stderr, escaped as table output is:
// an error can carry what the guest controls (a process or module name, a
// finding's title, a walk stopped at a guest's node), which must not forge
// a line of vmwatch's output or send the terminal an escape sequence. The
// errors that errors.Join put on lines of their own keep a line each.
func errText(err error) string {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var msgs, parts []string
		for _, e := range j.Unwrap() {
			if e != nil {
				msgs = append(msgs, e.Error())
				parts = append(parts, errText(e))
			}
		}
		if len(parts) > 0 && strings.Join(msgs, "\n") == err.Error() {
			return strings.Join(parts, "\n")
		}
	}
	return escape(err.Error())
}

// printError is how main reports the error that ends a command.
func printError(w io.Writer, err error) {
	fmt.Fprintln(w, "vmwatch:", errText(err))
}

// warnIncomplete says that a list was cut short while it was read.
func warnIncomplete(w io.Writer, what string, err error) {
	fmt.Fprintf(w, "vmwatch: warning: %s incomplete: %s (retry, or use --pause for an exact snapshot)\n", what, errText(err))
}

// warnDetectors names the detectors of a check that did not finish. (JSON
// output carries their errors exactly, in the report's errors list.)
func warnDetectors(w io.Writer, errs []detect.DetectorError) {
	for _, e := range errs {
		fmt.Fprintf(w, "vmwatch: warning: detector %s did not finish: %s\n", escape(e.Detector), escape(e.Error))
	}
}

// escape makes a string safe to print in text output, where it may come
// from the guest (process names, command lines, kernel log, module names):
//
//   - printable UTF-8 (including non-ASCII letters and symbols) stays as is;
//   - newline, carriage return and tab become \n, \r and \t;
//   - other C0 controls, DEL, C1 controls (U+0080–U+009F) and each byte of
//     invalid UTF-8 become \xNN (a C1 rune by its code point, so U+009B
//     reads \x9b like the raw byte 0x9b would);
//   - the Unicode bidi embeddings, overrides and isolates (U+202A–U+202E,
//     U+2066–U+2069), which reorder the text a terminal shows, become
//     \u202e and so on.
//
// A backslash stays as is, as in dmesg(1) and ps(1): a guest can make a
// cell read "\n", but it cannot break a line, a column or the terminal,
// and systemd's unit names ("dev-disk-by\x2duuid") keep the spelling the
// guest's own tools print. JSON output never passes through escape; it
// carries the exact strings.
func escape(s string) string {
	clean := true
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f) || r == utf8.RuneError || bidi(r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n <= 1:
			fmt.Fprintf(&b, "\\x%02x", s[i])
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f):
			fmt.Fprintf(&b, "\\x%02x", r)
		case bidi(r):
			fmt.Fprintf(&b, "\\u%04x", r)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// bidi reports the Unicode bidi embeddings, overrides and isolates.
func bidi(r rune) bool {
	return r >= 0x202a && r <= 0x202e || r >= 0x2066 && r <= 0x2069
}

func hexSigned(v int64) string {
	if v < 0 {
		return fmt.Sprintf("-%#x", -v)
	}
	return fmt.Sprintf("%#x", v)
}
