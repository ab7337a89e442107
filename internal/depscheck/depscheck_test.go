package depscheck

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

const root = "../.."

// dynamicOK lists exec sites whose program is not a constant, and why
// they need no package.
var dynamicOK = map[string]string{
	"script":       "testvm/system.go: scripts/build-system-image.sh, scanned as a script",
	"vmwatchBin":   "e2e: the vmwatch binary the tests build",
	"os.Args[0]":   "e2e/serve_test.go: the test binary itself",
	"a.Command[0]": "monitor/actions.go: the operator's configured action, not ours",
	"p":            "internal/depscheck: this test's own LookPath of the programs it checks",
}

// indirect lists programs run by other programs the project runs.
var indirect = []Use{
	{"gcc-12", "Kbuild for attacks/ modules (CC in the headers' .kernelvariables)"},
	{"ld", "Kbuild for attacks/ modules"},
	{"nm", "Kbuild for attacks/ modules"},
	{"objdump", "Kbuild for attacks/ modules"},
	{"objcopy", "Kbuild for attacks/ modules"},
	{"pahole", "Kbuild (CONFIG_DEBUG_INFO_BTF_MODULES)"},
	{"gcc", "cgo for -tags yara"},
	{"pkg-config", "cgo for -tags yara"},
	{"wget", "debootstrap"}, {"gpgv", "debootstrap"}, {"dpkg-deb", "debootstrap"},
	{"tar", "debootstrap"}, {"perl", "debootstrap"}, {"xzcat", "debootstrap"},
	{"sha256sum", "debootstrap"},
}

// exempt: prerequisites the user installs (README: "Go 1.26 must be installed").
var exempt = map[string]bool{"go": true}

func scanAll(t *testing.T) []Use {
	t.Helper()
	var all []Use
	var dyn []Dynamic
	u, d, err := ScanGo(root)
	if err != nil {
		t.Fatal(err)
	}
	all, dyn = append(all, u...), append(dyn, d...)
	u, d, err = ScanScripts(root)
	if err != nil {
		t.Fatal(err)
	}
	all, dyn = append(all, u...), append(dyn, d...)
	u, d, err = ScanMakefile(filepath.Join(root, "Makefile"), "Makefile")
	if err != nil {
		t.Fatal(err)
	}
	all, dyn = append(all, u...), append(dyn, d...)
	for _, x := range dyn {
		if _, ok := dynamicOK[x.Expr]; !ok {
			t.Errorf("%s runs a program given by %s: make it a constant or list it in dynamicOK with the reason it needs no package", x.Where, x.Expr)
		}
	}
	return all
}

func TestScanGoFixture(t *testing.T) {
	dir := t.TempDir()
	b, _ := os.ReadFile("testdata/fixture.go.txt")
	os.WriteFile(filepath.Join(dir, "f.go"), b, 0o644)
	u, d, err := ScanGo(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := progs(u); got != "bar foo" {
		t.Errorf("programs %q, want %q", got, "bar foo")
	}
	if len(d) != 1 || d[0].Expr != "someVar" || d[0].Where != "f.go:10" {
		t.Errorf("dynamic %+v", d)
	}
}

func TestScanShellFixture(t *testing.T) {
	f, _ := os.Open("testdata/fixture.sh")
	defer f.Close()
	u, d, err := ScanShell(f, "fixture.sh")
	if err != nil {
		t.Fatal(err)
	}
	want := "cat chroot grep mkfs.ext4 sort tee tr uname wget xz"
	if got := progs(u); got != want {
		t.Errorf("programs %q, want %q", got, want)
	}
	if len(d) != 1 || d[0].Expr != `"$qemu"` {
		t.Errorf("dynamic %+v", d)
	}
}

func TestScanRealTree(t *testing.T) {
	all := scanAll(t)
	n := strings.Count(progs(all), " ") + 1
	if n < 15 {
		t.Fatalf("only %d programs found in the tree (%s): the scanner is broken", n, progs(all))
	}
	for _, p := range []string{"qemu-img", "virsh", "debootstrap", "go", "make"} {
		if !strings.Contains(" "+progs(all)+" ", " "+p+" ") {
			t.Errorf("%s not found in the tree", p)
		}
	}
}

func progs(u []Use) string {
	m := map[string]bool{}
	for _, x := range u {
		m[x.Prog] = true
	}
	var s []string
	for p := range m {
		s = append(s, p)
	}
	sort.Strings(s)
	return strings.Join(s, " ")
}

func TestDeps(t *testing.T) {
	if _, err := exec.LookPath("dpkg"); err != nil {
		t.Skip("no dpkg: not Debian")
	}
	all := append(scanAll(t), indirect...)
	first := map[string]string{}
	var names []string
	for _, x := range all {
		if exempt[x.Prog] {
			continue
		}
		if strings.HasPrefix(x.Prog, "./") { // the project's own scripts, scanned above
			if _, err := os.Stat(filepath.Join(root, x.Prog)); err == nil {
				continue
			}
		}
		if _, ok := first[x.Prog]; !ok {
			first[x.Prog] = x.Where
			names = append(names, x.Prog)
		}
	}
	sort.Strings(names)
	provided := providedPackages(t)
	// candidate paths for each program
	cands := map[string][]string{}
	var paths []string
	for _, p := range names {
		path, err := exec.LookPath(p)
		if err != nil {
			t.Errorf("program %s (run at %s) is not installed", p, first[p])
			continue
		}
		c := []string{path}
		switch {
		case strings.HasPrefix(path, "/usr/bin/") || strings.HasPrefix(path, "/usr/sbin/"):
			c = append(c, strings.TrimPrefix(path, "/usr"))
		case strings.HasPrefix(path, "/bin/") || strings.HasPrefix(path, "/sbin/"):
			c = append(c, "/usr"+path)
		}
		if real, err := filepath.EvalSymlinks(path); err == nil && real != path {
			c = append(c, real)
		}
		cands[p] = c
		paths = append(paths, c...)
	}
	owners := dpkgS(paths)
	for _, p := range names {
		c, ok := cands[p]
		if !ok {
			continue
		}
		var own []string
		for _, path := range c {
			if o := owners[path]; len(o) > 0 {
				own = o
				break
			}
		}
		if len(own) == 0 {
			t.Errorf("program %s (run at %s, %s) belongs to no package", p, first[p], c[0])
			continue
		}
		okp := false
		for _, o := range own {
			okp = okp || provided[o]
		}
		if !okp {
			t.Errorf("program %s (run at %s) comes from package %s, which make deps does not install: add %s to PKGS in scripts/install-deps.sh", p, first[p], own[0], own[0])
		}
	}
}

// dpkgS maps each path to the packages dpkg -S says own it.
func dpkgS(paths []string) map[string][]string {
	out, _ := exec.Command("dpkg", append([]string{"-S"}, paths...)...).Output()
	m := map[string][]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "diversion ") {
			continue
		}
		i := strings.Index(l, ": ")
		if i < 0 {
			continue
		}
		for _, p := range strings.Split(l[:i], ", ") {
			p, _, _ = strings.Cut(p, ":")
			m[l[i+2:]] = append(m[l[i+2:]], p)
		}
	}
	return m
}

var pkgsRE = regexp.MustCompile(`(?m)^PKGS="([^"]*)"`)

// providedPackages: PKGS, Essential and required/important packages, and
// their Depends/Pre-Depends closure over the installed packages.
func providedPackages(t *testing.T) map[string]bool {
	b, err := os.ReadFile(filepath.Join(root, "scripts/install-deps.sh"))
	if err != nil {
		t.Fatal(err)
	}
	m := pkgsRE.FindSubmatch(b)
	if m == nil {
		t.Fatal("no PKGS= in scripts/install-deps.sh")
	}
	var todo []string
	todo = append(todo, strings.Fields(string(m[1]))...)
	out, err := exec.Command("dpkg-query", "-W", "-f", "${Package}\t${Essential}\t${Priority}\t${Provides}\t${Depends}\t${Pre-Depends}\t${db:Status-Abbrev}\n").Output()
	if err != nil {
		t.Fatal(err)
	}
	deps := map[string][]string{}
	providers := map[string][]string{}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Split(l, "\t")
		if len(f) < 7 || !strings.HasPrefix(f[6], "ii") {
			continue
		}
		p := f[0]
		providers[p] = append(providers[p], p)
		for _, v := range splitDeps(f[3]) {
			providers[v] = append(providers[v], p)
		}
		deps[p] = append(splitDeps(f[4]), splitDeps(f[5])...)
		if f[1] == "yes" || f[2] == "required" || f[2] == "important" {
			todo = append(todo, p)
		}
	}
	seen := map[string]bool{}
	for len(todo) > 0 {
		n := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		for _, p := range append(providers[n], n) {
			if seen[p] {
				continue
			}
			seen[p] = true
			todo = append(todo, deps[p]...)
		}
	}
	return seen
}

// splitDeps: "a (>= 1), b:any | c" → a b c
func splitDeps(s string) []string {
	var r []string
	for _, alt := range strings.FieldsFunc(s, func(c rune) bool { return c == ',' || c == '|' }) {
		f := strings.Fields(alt)
		if len(f) == 0 {
			continue
		}
		p, _, _ := strings.Cut(f[0], ":")
		r = append(r, p)
	}
	return r
}
