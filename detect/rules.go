package detect

import (
	_ "embed"
	"errors"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"strings"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/vm"
	"gopkg.in/yaml.v3"

	"github.com/vmwatch/vmwatch/linux"
)

//go:embed rules/default.yaml
var defaultRules []byte

// Rule is a user rule, in the style of Falco.
type Rule struct {
	Name      string
	Desc      string
	Source    string // process, socket, module
	Condition string
	Output    string
	Priority  Severity
	Tags      []string
	File      string
	Line      int
	program   *vm.Program
}

// RuleSet is a compiled set of rules.
type RuleSet struct {
	Rules []*Rule
	lists map[string][]string
}

type ruleDoc struct {
	Rule      string   `yaml:"rule"`
	List      string   `yaml:"list"`
	Items     []string `yaml:"items"`
	Desc      string   `yaml:"desc"`
	Source    string   `yaml:"source"`
	Condition string   `yaml:"condition"`
	Output    string   `yaml:"output"`
	Priority  string   `yaml:"priority"`
	Tags      []string `yaml:"tags"`
	Enabled   *bool    `yaml:"enabled"`
}

// ProcEnv is what a process rule sees as proc.
type ProcEnv struct {
	PID          int64    `expr:"pid"`
	PPID         int64    `expr:"ppid"`
	TGID         int64    `expr:"tgid"`
	Name         string   `expr:"name"`
	Cmdline      string   `expr:"cmdline"`
	Args         []string `expr:"args"`
	UID          int64    `expr:"uid"`
	GID          int64    `expr:"gid"`
	EUID         int64    `expr:"euid"`
	State        string   `expr:"state"`
	KernelThread bool     `expr:"kernel_thread"`
	Exe          string   `expr:"exe"`
	ExeDeleted   bool     `expr:"exe_deleted"`
	Env          []string `expr:"env"`
}

// SockEnv is what a socket rule sees as sock.
type SockEnv struct {
	Proto         string  `expr:"proto"`
	Family        string  `expr:"family"`
	Type          string  `expr:"type"`
	State         string  `expr:"state"`
	LocalAddress  string  `expr:"local_address"`
	LocalPort     int64   `expr:"local_port"`
	RemoteAddress string  `expr:"remote_address"`
	RemotePort    int64   `expr:"remote_port"`
	Inode         int64   `expr:"inode"`
	Path          string  `expr:"path"`
	PIDs          []int64 `expr:"pids"`
}

// ModEnv is what a module rule sees as mod.
type ModEnv struct {
	Name     string   `expr:"name"`
	Size     int64    `expr:"size"`
	State    string   `expr:"state"`
	Refcount int64    `expr:"refcount"`
	UsedBy   []string `expr:"used_by"`
}

// ruleEnv is the environment of a rule of a source: its object(s) and
// the lists defined so far.
func ruleEnv(source string, lists map[string][]string) map[string]any {
	env := map[string]any{}
	for k, v := range lists {
		env[k] = v
	}
	switch source {
	case "socket":
		env["sock"] = SockEnv{}
		env["proc"] = ProcEnv{}
	case "module":
		env["mod"] = ModEnv{}
	default:
		env["proc"] = ProcEnv{}
	}
	return env
}

func procFields(p linux.Process, d *ProcDetail) ProcEnv {
	e := ProcEnv{PID: p.PID, PPID: p.PPID, TGID: p.TGID, Name: p.Comm, Cmdline: strings.Join(p.Cmdline, " "),
		Args: []string{}, UID: int64(p.UID), GID: int64(p.GID), EUID: int64(p.EUID), State: p.State, KernelThread: p.Kernel, Env: []string{}}
	if len(p.Cmdline) > 1 {
		e.Args = append(e.Args, p.Cmdline[1:]...)
	}
	if d != nil {
		e.Exe, e.ExeDeleted, e.Env = d.Exe.Path, d.Exe.Deleted, append(e.Env, d.Env...)
	}
	return e
}

func sockFields(s linux.Socket) SockEnv {
	return SockEnv{Proto: s.Protocol, Family: s.Family, Type: s.Type, State: s.State,
		LocalAddress: s.LocalAddr, LocalPort: int64(s.LocalPort), RemoteAddress: s.RemoteAddr, RemotePort: int64(s.RemotePort),
		Inode: int64(s.Inode), Path: s.Path, PIDs: append([]int64{}, s.PIDs...)}
}

func modFields(m linux.Module) ModEnv {
	return ModEnv{Name: m.Name, Size: int64(m.Size), State: m.State, Refcount: m.Refcount, UsedBy: append([]string{}, m.UsedBy...)}
}

// fieldByTag finds a struct field by its expr tag.
func fieldByTag(v any, name string) (any, bool) {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Struct {
		return nil, false
	}
	for i := 0; i < rv.NumField(); i++ {
		if rv.Type().Field(i).Tag.Get("expr") == name {
			return rv.Field(i).Interface(), true
		}
	}
	return nil, false
}

// DefaultRules compiles the rules shipped with vmwatch.
func DefaultRules() (*RuleSet, error) {
	rs := &RuleSet{lists: map[string][]string{}}
	return rs, rs.Add("default rules", defaultRules)
}

// LoadFile adds the rules of a YAML file.
func (rs *RuleSet) LoadFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("rules: %w", err)
	}
	return rs.Add(path, b)
}

// Add parses and compiles rules; errors name the file, line and problem.
func (rs *RuleSet) Add(file string, data []byte) error {
	if rs.lists == nil {
		rs.lists = map[string][]string{}
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	if len(root.Content) == 0 {
		return nil
	}
	seq := root.Content[0]
	if seq.Kind != yaml.SequenceNode {
		return fmt.Errorf("%s:%d: a rules file is a list of rule and list entries", file, seq.Line)
	}
	var errs []error
	for _, n := range seq.Content {
		var d ruleDoc
		if err := n.Decode(&d); err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: %v", file, n.Line, err))
			continue
		}
		switch {
		case d.List != "":
			rs.lists[d.List] = append(rs.lists[d.List], d.Items...)
			continue
		case d.Rule == "":
			errs = append(errs, fmt.Errorf("%s:%d: entry has neither rule nor list", file, n.Line))
			continue
		}
		if d.Enabled != nil && !*d.Enabled {
			continue
		}
		r := &Rule{Name: d.Rule, Desc: d.Desc, Source: d.Source, Condition: d.Condition, Output: d.Output, Tags: d.Tags, File: file, Line: n.Line}
		if r.Source == "" {
			r.Source = "process"
		}
		if r.Source != "process" && r.Source != "socket" && r.Source != "module" {
			errs = append(errs, fmt.Errorf("%s:%d: rule %q: source %q is not process, socket or module", file, n.Line, r.Name, r.Source))
			continue
		}
		if strings.TrimSpace(r.Condition) == "" {
			errs = append(errs, fmt.Errorf("%s:%d: rule %q has no condition", file, n.Line, r.Name))
			continue
		}
		var err error
		if d.Priority == "" {
			d.Priority = "warning"
		}
		if r.Priority, err = ParseSeverity(d.Priority); err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: rule %q: %v", file, n.Line, r.Name, err))
			continue
		}
		line := n.Line
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == "condition" {
				line = n.Content[i+1].Line
			}
		}
		r.program, err = expr.Compile(r.Condition, expr.Env(ruleEnv(r.Source, rs.lists)), expr.AsBool())
		if err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: rule %q: condition: %v", file, line, r.Name, oneLine(err.Error())))
			continue
		}
		rs.Rules = append(rs.Rules, r)
	}
	return errors.Join(errs...)
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

var fieldRef = regexp.MustCompile(`%([a-z]+)\.([a-z_]+)`)
var techniqueTag = regexp.MustCompile(`^T\d{4}(\.\d{3})?$`)

// render fills %source.field placeholders.
func render(out string, env map[string]any) string {
	return fieldRef.ReplaceAllStringFunc(out, func(m string) string {
		p := fieldRef.FindStringSubmatch(m)
		v, ok := fieldByTag(env[p[1]], p[2])
		if !ok {
			return m
		}
		if l, ok := v.([]string); ok {
			return strings.Join(l, " ")
		}
		return fmt.Sprint(v)
	})
}

func (rs *RuleSet) needsDetail() bool {
	for _, r := range rs.Rules {
		if strings.Contains(r.Condition, "proc.exe") || strings.Contains(r.Condition, "proc.env") {
			return true
		}
	}
	return false
}

func runRules(s *Snapshot) ([]Finding, error) {
	rs := s.Opt.Rules
	if rs == nil || len(rs.Rules) == 0 {
		return nil, nil
	}
	var out []Finding
	var errs []error
	procs, perr := s.Processes()
	byPID := map[int64]linux.Process{}
	for _, p := range procs {
		byPID[p.PID] = p
	}
	detail := rs.needsDetail()
	fire := func(r *Rule, env map[string]any, key string, pids []int64, labels []string) {
		ok, err := expr.Run(r.program, env)
		if err != nil {
			errs = append(errs, fmt.Errorf("rule %q (%s:%d): %v", r.Name, r.File, r.Line, err))
			return
		}
		if b, _ := ok.(bool); !b {
			return
		}
		attack := ""
		for _, t := range r.Tags {
			if techniqueTag.MatchString(t) {
				attack = t
			}
		}
		msg := r.Desc
		if r.Output != "" {
			msg = render(r.Output, env)
		}
		f := s.finding("rule", r.Name, r.Priority, attack, r.Name+"/"+key, msg,
			Evidence{PIDs: pids, Processes: labels, Details: map[string]any{"rule": r.Name, "file": r.File, "line": r.Line, "tags": r.Tags}})
		out = append(out, f)
	}
	for _, r := range rs.Rules {
		switch r.Source {
		case "process":
			for _, p := range procs {
				var d *ProcDetail
				if detail && !p.Kernel {
					d = s.Detail(p)
				}
				env := ruleEnv("process", rs.lists)
				env["proc"] = procFields(p, d)
				fire(r, env, fmt.Sprint(p.PID), []int64{p.PID}, []string{procLabel(p)})
			}
		case "socket":
			socks, err := s.Sockets()
			if err != nil {
				errs = append(errs, err)
			}
			for _, so := range socks {
				env := ruleEnv("socket", rs.lists)
				env["sock"] = sockFields(so)
				var labels []string
				if len(so.PIDs) > 0 {
					if p, ok := byPID[so.PIDs[0]]; ok {
						env["proc"] = procFields(p, nil)
						labels = []string{procLabel(p)}
					}
				}
				fire(r, env, fmt.Sprintf("%s/%d/%d", so.Protocol, so.LocalPort, so.Inode), so.PIDs, labels)
			}
		case "module":
			mods, err := s.Modules()
			if err != nil {
				errs = append(errs, err)
			}
			for _, m := range mods {
				env := ruleEnv("module", rs.lists)
				env["mod"] = modFields(m)
				fire(r, env, m.Name, nil, nil)
			}
		}
	}
	if perr != nil {
		errs = append(errs, perr)
	}
	return out, errors.Join(errs...)
}
