//go:build yara

package detect

import (
	"fmt"
	"os"

	yara "github.com/hillu/go-yara/v4"
)

// YaraAvailable reports whether this build includes YARA.
const YaraAvailable = true

type yaraScanner struct{ rules *yara.Rules }

// CompileYara compiles a YARA rules file (source, or compiled with yarac).
func CompileYara(path string) (Scanner, error) {
	if r, err := yara.LoadRules(path); err == nil {
		return &yaraScanner{r}, nil
	}
	c, err := yara.NewCompiler()
	if err != nil {
		return nil, fmt.Errorf("yara: %w", err)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("yara rules: %w", err)
	}
	defer f.Close()
	if err := c.AddFile(f, ""); err != nil {
		msgs := ""
		for _, e := range c.Errors {
			msgs += fmt.Sprintf("; %s:%d: %s", path, e.Line, e.Text)
		}
		return nil, fmt.Errorf("yara rules %s: %v%s", path, err, msgs)
	}
	r, err := c.GetRules()
	if err != nil {
		return nil, fmt.Errorf("yara rules %s: %w", path, err)
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
