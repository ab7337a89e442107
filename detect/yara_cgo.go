//go:build yara

package detect

import (
	"bytes"
	"fmt"
	"io"
	"os"

	yara "github.com/hillu/go-yara/v4"
)

// YaraAvailable reports whether this build includes YARA.
const YaraAvailable = true

type yaraScanner struct{ rules *yara.Rules }

// CompileYara compiles a YARA rules file (source, or compiled with yarac).
// A pipe works too (--yara <(cat rules.yar), /dev/stdin): it is read once,
// into memory. (Trying yr_rules_load on the path first used to drain it; the
// source was then compiled from what was left, nothing, or the reopen of a
// named FIFO waited for a writer that was gone.) A regular file is compiled
// from the file, so that its includes are found beside it. A file that holds
// no rule is an error: it would scan nothing and find nothing.
func CompileYara(path string) (Scanner, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("yara rules: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("yara rules: %w", err)
	}
	var src []byte // the rules when read from a pipe; nil for a regular file
	magic := make([]byte, 4)
	if fi.Mode().IsRegular() {
		n, _ := f.ReadAt(magic, 0)
		magic = magic[:n]
	} else {
		if src, err = io.ReadAll(f); err != nil {
			return nil, fmt.Errorf("yara rules %s: %w", path, err)
		}
		magic = src[:min(4, len(src))]
	}
	var r *yara.Rules
	if string(magic) == "YARA" { // compiled rules
		var rd io.Reader = f
		if src != nil {
			rd = bytes.NewReader(src)
		}
		if r, err = yara.ReadRules(rd); err != nil {
			return nil, fmt.Errorf("yara rules %s (compiled): %w", path, err)
		}
	} else {
		c, err := yara.NewCompiler()
		if err != nil {
			return nil, fmt.Errorf("yara: %w", err)
		}
		if src != nil {
			err = c.AddString(string(src), "")
		} else {
			err = c.AddFile(f, "")
		}
		if err != nil {
			msgs := ""
			for _, e := range c.Errors {
				msgs += fmt.Sprintf("; %s:%d: %s", path, e.Line, e.Text)
			}
			return nil, fmt.Errorf("yara rules %s: %v%s", path, err, msgs)
		}
		if r, err = c.GetRules(); err != nil {
			return nil, fmt.Errorf("yara rules %s: %w", path, err)
		}
	}
	if len(r.GetRules()) == 0 {
		return nil, fmt.Errorf("yara rules %s: no rules in it", path)
	}
	return &yaraScanner{r}, nil
}

func (y *yaraScanner) Scan(data []byte) ([]Match, error) {
	var mr yara.MatchRules
	if err := y.rules.ScanMem(data, yara.ScanFlagsFastMode, 30e9, &mr); err != nil {
		return nil, err
	}
	var out []Match
	for _, m := range mr {
		mt := Match{Rule: m.Rule}
		if len(m.Strings) > 0 {
			mt.Offset = m.Strings[0].Offset
		}
		for _, meta := range m.Metas {
			if meta.Identifier == "severity" {
				mt.Severity = fmt.Sprint(meta.Value)
			}
		}
		out = append(out, mt)
	}
	return out, nil
}
