// Package depscheck lists the external programs that vmwatch's code, tests,
// scripts and Makefile run, so that a test can prove each one comes from a
// package `make deps` installs.
package depscheck

import (
	"bufio"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"mvdan.cc/sh/v3/syntax"
)

// Use is one place that runs a program.
type Use struct {
	Prog  string // program name or absolute path
	Where string // file:line (relative to the scanned root)
}

// Dynamic is an exec call whose program is not a constant: the test lists
// every such site explicitly, with the reason it needs no package.
type Dynamic struct {
	Where string // file:line
	Expr  string // the program expression as written
}

// ScanGo finds exec.Command, exec.CommandContext and exec.LookPath calls in
// every .go file under root (vendor, testdata and hidden directories skipped).
// A program given as a string literal or a string constant is a Use; any
// other expression is a Dynamic. `sh -c 'LINE'` with a literal LINE is
// scanned as shell.
func ScanGo(root string) ([]Use, []Dynamic, error) {
	var uses []Use
	var dyn []Dynamic
	fset := token.NewFileSet()
	err := walk(root, func(path, rel string) error {
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		consts := map[string]string{}
		ast.Inspect(f, func(n ast.Node) bool {
			if vs, ok := n.(*ast.ValueSpec); ok {
				for i, name := range vs.Names {
					if i < len(vs.Values) {
						if s, ok := strLit(vs.Values[i]); ok {
							consts[name.Name] = s
						}
					}
				}
			}
			return true
		})
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if x, ok := sel.X.(*ast.Ident); !ok || x.Name != "exec" {
				return true
			}
			idx := -1
			switch sel.Sel.Name {
			case "Command", "LookPath":
				idx = 0
			case "CommandContext":
				idx = 1
			}
			if idx < 0 || idx >= len(call.Args) {
				return true
			}
			pos := fset.Position(call.Pos())
			where := fmt.Sprintf("%s:%d", rel, pos.Line)
			arg := call.Args[idx]
			prog, ok := strLit(arg)
			if !ok {
				if id, isID := arg.(*ast.Ident); isID {
					prog, ok = consts[id.Name]
				}
			}
			if !ok {
				dyn = append(dyn, Dynamic{Where: where, Expr: exprString(fset, path, arg)})
				return true
			}
			uses = append(uses, Use{Prog: prog, Where: where})
			// sh -c 'LINE': the line's programs too
			if (prog == "sh" || prog == "bash" || prog == "/bin/sh") && len(call.Args) >= idx+3 {
				if c, ok := strLit(call.Args[idx+1]); ok && c == "-c" {
					if line, ok := strLit(call.Args[idx+2]); ok {
						u, d, err := ScanShell(strings.NewReader(line), where)
						if err != nil {
							return true
						}
						uses = append(uses, u...)
						dyn = append(dyn, d...)
					}
				}
			}
			return true
		})
		return nil
	})
	return uses, dyn, err
}

func strLit(e ast.Expr) (string, bool) {
	bl, ok := e.(*ast.BasicLit)
	if !ok || bl.Kind != token.STRING {
		return "", false
	}
	s, err := strconv.Unquote(bl.Value)
	return s, err == nil
}

func exprString(fset *token.FileSet, path string, e ast.Expr) string {
	src, err := os.ReadFile(path)
	if err != nil {
		return "?"
	}
	a, b := fset.Position(e.Pos()).Offset, fset.Position(e.End()).Offset
	if a < 0 || b > len(src) || a > b {
		return "?"
	}
	return string(src[a:b])
}

// walk calls fn for every regular file under root, skipping hidden,
// vendor and testdata directories.
func walk(root string, fn func(path, rel string) error) error {
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != root && (strings.HasPrefix(name, ".") || name == "vendor" || name == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		return fn(path, rel)
	})
}

// ScanScripts scans every *.sh file under root as shell.
func ScanScripts(root string) ([]Use, []Dynamic, error) {
	var uses []Use
	var dyn []Dynamic
	err := walk(root, func(path, rel string) error {
		if !strings.HasSuffix(path, ".sh") {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		u, d, err := ScanShell(f, rel)
		uses = append(uses, u...)
		dyn = append(dyn, d...)
		return err
	})
	return uses, dyn, err
}

// builtins of sh/bash (and words that are not programs).
var builtins = map[string]bool{
	":": true, ".": true, "[": true, "[[": true, "alias": true, "break": true, "cd": true,
	"continue": true, "echo": true, "eval": true, "exit": true, "export": true,
	"false": true, "getopts": true, "hash": true, "kill": true, "local": true,
	"printf": true, "pwd": true, "read": true, "readonly": true, "return": true,
	"set": true, "shift": true, "source": true, "test": true, "trap": true,
	"true": true, "type": true, "ulimit": true, "umask": true, "unset": true,
	"wait": true, "declare": true, "let": true,
}

// ScanShell parses a shell script named name and returns the programs it
// runs on the host. Functions the script defines and builtins are not
// programs; sudo/$SUDO, exec, env, nice, nohup and `command` are followed to
// the program they run; `command -v X` needs X; whatever runs after
// `chroot DIR` or the script's in_root function runs inside the guest image
// and is skipped. The script's programs given by a variable are Dynamic.
func ScanShell(r interface{ Read([]byte) (int, error) }, name string) ([]Use, []Dynamic, error) {
	f, err := syntax.NewParser().Parse(r, name)
	if err != nil {
		return nil, nil, err
	}
	funcs := map[string]bool{}
	syntax.Walk(f, func(n syntax.Node) bool {
		if fd, ok := n.(*syntax.FuncDecl); ok {
			funcs[fd.Name.Value] = true
		}
		return true
	})
	var uses []Use
	var dyn []Dynamic
	syntax.Walk(f, func(n syntax.Node) bool {
		call, ok := n.(*syntax.CallExpr)
		if !ok || len(call.Args) == 0 {
			return true
		}
		where := fmt.Sprintf("%s:%d", name, call.Pos().Line())
		args := call.Args
		for len(args) > 0 {
			w := args[0]
			lit := w.Lit()
			if lit == "" {
				if isParam(w, "SUDO") {
					args = args[1:]
					continue
				}
				var sb strings.Builder
				syntax.NewPrinter().Print(&sb, w)
				dyn = append(dyn, Dynamic{Where: where, Expr: sb.String()})
				break
			}
			switch lit {
			case "sudo":
				args = args[1:]
				for len(args) > 0 && strings.HasPrefix(args[0].Lit(), "-") {
					args = args[1:]
				}
				uses = append(uses, Use{Prog: "sudo", Where: where})
				continue
			case "exec", "nohup":
				args = args[1:]
				continue
			case "env":
				args = args[1:]
				for len(args) > 0 {
					l := args[0].Lit()
					if strings.Contains(l, "=") || strings.HasPrefix(l, "-") {
						args = args[1:]
						continue
					}
					break
				}
				continue
			case "nice":
				args = args[1:]
				if len(args) > 0 && args[0].Lit() == "-n" {
					args = args[1:]
					if len(args) > 0 {
						args = args[1:]
					}
				} else if len(args) > 0 && strings.HasPrefix(args[0].Lit(), "-") {
					args = args[1:]
				}
				continue
			case "command":
				args = args[1:]
				if len(args) > 0 && (args[0].Lit() == "-v" || args[0].Lit() == "-V") {
					args = args[1:]
				}
				continue
			case "chroot":
				uses = append(uses, Use{Prog: "chroot", Where: where})
				args = nil // the rest runs inside the image
				continue
			}
			if funcs[lit] || builtins[lit] {
				break
			}
			uses = append(uses, Use{Prog: lit, Where: where})
			break
		}
		return true
	})
	return uses, dyn, nil
}

func isParam(w *syntax.Word, name string) bool {
	if len(w.Parts) != 1 {
		return false
	}
	var p syntax.WordPart = w.Parts[0]
	if dq, ok := p.(*syntax.DblQuoted); ok && len(dq.Parts) == 1 {
		p = dq.Parts[0]
	}
	pe, ok := p.(*syntax.ParamExp)
	return ok && pe.Param != nil && pe.Param.Value == name
}

var makeVar = regexp.MustCompile(`\$\(([A-Za-z_]+)\)`)

// ScanMakefile scans the recipe lines of a Makefile as shell: $(GO) is go,
// $(MAKE) is make, programs under $(BIN) are built by the Makefile itself
// and skipped, other variables are placeholders, $$ is $.
func ScanMakefile(path, name string) ([]Use, []Dynamic, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	var uses []Use
	var dyn []Dynamic
	sc := bufio.NewScanner(f)
	lineNo := 0
	var cur strings.Builder
	start := 0
	flush := func() error {
		if cur.Len() == 0 {
			return nil
		}
		line := strings.TrimLeft(cur.String(), "@-+ \t")
		cur.Reset()
		line = makeVar.ReplaceAllStringFunc(line, func(v string) string {
			switch v {
			case "$(GO)":
				return "go"
			case "$(MAKE)":
				return "make"
			case "$(BIN)":
				return "/ours/bin"
			}
			return "PLACEHOLDER"
		})
		line = strings.ReplaceAll(line, "$$", "$")
		u, d, err := ScanShell(strings.NewReader(line), fmt.Sprintf("%s:%d", name, start))
		if err != nil {
			return fmt.Errorf("%s:%d: %v", name, start, err)
		}
		for _, x := range u {
			if strings.HasPrefix(x.Prog, "/ours/") {
				continue
			}
			x.Where = fmt.Sprintf("%s:%d", name, start)
			uses = append(uses, x)
		}
		for _, x := range d {
			x.Where = fmt.Sprintf("%s:%d", name, start)
			dyn = append(dyn, x)
		}
		return nil
	}
	for sc.Scan() {
		lineNo++
		l := sc.Text()
		if cur.Len() == 0 {
			if !strings.HasPrefix(l, "\t") {
				continue
			}
			start = lineNo
		}
		if strings.HasSuffix(l, "\\") {
			cur.WriteString(strings.TrimSuffix(strings.TrimPrefix(l, "\t"), "\\"))
			cur.WriteString(" ")
			continue
		}
		cur.WriteString(strings.TrimPrefix(l, "\t"))
		if err := flush(); err != nil {
			return uses, dyn, err
		}
	}
	return uses, dyn, sc.Err()
}
