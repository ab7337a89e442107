package detect

import (
	"strings"
	"testing"

	"github.com/vmwatch/vmwatch/linux"
)

func TestDefaultRulesCompile(t *testing.T) {
	rs, err := DefaultRules()
	if err != nil {
		t.Fatal(err)
	}
	if len(rs.Rules) < 3 {
		t.Fatalf("%d default rules", len(rs.Rules))
	}
}

func TestRuleErrorsNameFileAndLine(t *testing.T) {
	cases := []struct{ yaml, want string }{
		{"- rule: a\n  condition: proc.name ==\n", `bad.yaml:2: rule "a": condition:`},
		{"- rule: b\n  source: kernel\n  condition: true\n", `bad.yaml:1: rule "b": source "kernel"`},
		{"- rule: c\n  condition: proc.nosuchfield == 1\n", `bad.yaml:2: rule "c": condition:`},
		{"- rule: d\n  condition: true\n  priority: URGENT\n", `bad.yaml:1: rule "d": unknown severity`},
		{"- rule: e\n", `bad.yaml:1: rule "e" has no condition`},
		{"- desc: nothing\n", `bad.yaml:1: entry has neither rule nor list`},
		{"rule: x\n", `bad.yaml:1: a rules file is a list`},
		{"- rule: [\n", `bad.yaml: yaml:`},
	}
	for _, c := range cases {
		rs := &RuleSet{lists: map[string][]string{}}
		err := rs.Add("bad.yaml", []byte(c.yaml))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want %q", c.yaml, err, c.want)
		}
	}
}

func TestRulesFire(t *testing.T) {
	rs := &RuleSet{lists: map[string][]string{}}
	err := rs.Add("test.yaml", []byte(`
- list: allowed_ports
  items: [22, 443]
- rule: Unexpected listener
  source: socket
  condition: sock.state == "LISTEN" and not (sock.local_port in [22, 443])
  output: "listener on %sock.local_port (pid %proc.pid)"
  priority: ERROR
  tags: [network, T1571]
- rule: No netcat
  condition: proc.name == "nc"
  output: "nc runs: %proc.cmdline"
  priority: WARNING
- rule: Module check
  source: module
  condition: mod.name == "evil"
  priority: critical
`))
	if err != nil {
		t.Fatal(err)
	}
	s := &Snapshot{Opt: Options{Rules: rs, VM: "vm1"}}
	s.procsOnce.Do(func() {
		s.procs = []linux.Process{{PID: 7, Comm: "nc", Cmdline: []string{"nc", "-l", "-p", "80"}}, {PID: 8, Comm: "sshd"}}
	})
	s.sockOnce.Do(func() {
		s.socks = []linux.Socket{{Protocol: "tcp", State: "LISTEN", LocalPort: 80, PIDs: []int64{7}}, {Protocol: "tcp", State: "LISTEN", LocalPort: 22, PIDs: []int64{8}}}
	})
	s.modsOnce.Do(func() { s.mods = []linux.Module{{Name: "evil"}, {Name: "loop"}} })
	fs, err := runRules(s)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Finding{}
	for _, f := range fs {
		got[f.Title] = f
	}
	if f, ok := got["Unexpected listener"]; !ok || f.Severity != High || f.Attack != "T1571" || f.Explanation != "listener on 80 (pid 7)" || len(f.Evidence.PIDs) != 1 {
		t.Errorf("listener rule: %+v", f)
	}
	if f, ok := got["No netcat"]; !ok || f.Explanation != "nc runs: nc -l -p 80" || f.Severity != Medium {
		t.Errorf("nc rule: %+v", f)
	}
	if _, ok := got["Module check"]; !ok || len(fs) != 3 {
		t.Errorf("findings: %+v", fs)
	}
}

func TestSeverity(t *testing.T) {
	for in, want := range map[string]Severity{"WARNING": Medium, "notice": Info, "Critical": Critical, "error": High, "low": Low} {
		if got, err := ParseSeverity(in); err != nil || got != want {
			t.Errorf("%s: %v %v", in, got, err)
		}
	}
}
