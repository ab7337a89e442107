package testvm

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// Headers returns a directory to build out-of-tree modules for the kernel
// against: Debian's linux-headers-<release>, its -common part and the
// matching linux-kbuild, fetched with apt-get download and unpacked in the
// cache (nothing is installed on the host).
func (k *Kernel) Headers() (string, error) {
	kernelMu.Lock()
	defer kernelMu.Unlock()
	root := filepath.Join(CacheDir(), "headers", k.Release)
	build := filepath.Join(root, "usr", "src", "linux-headers-"+k.Release)
	if _, err := os.Stat(filepath.Join(build, ".vmwatch-ready")); err == nil {
		return build, nil
	}
	dl := filepath.Join(CacheDir(), "headers", "debs")
	if err := os.MkdirAll(dl, 0o755); err != nil {
		return "", err
	}
	pkg := "linux-headers-" + k.Release
	deps, err := exec.Command("apt-cache", "depends", pkg).Output()
	if err != nil {
		return "", fmt.Errorf("apt-cache depends %s: %w", pkg, err)
	}
	pkgs := []string{pkg}
	dep := regexp.MustCompile(`Depends: (linux-headers-\S+-common|linux-kbuild-\S+)`)
	for _, m := range dep.FindAllStringSubmatch(string(deps), -1) {
		pkgs = append(pkgs, m[1])
	}
	if len(pkgs) < 3 {
		return "", fmt.Errorf("%s: expected -common and linux-kbuild dependencies, apt lists %v", pkg, pkgs)
	}
	tmp := root + ".tmp"
	os.RemoveAll(tmp)
	for _, p := range pkgs {
		debs, _ := filepath.Glob(filepath.Join(dl, p+"_*.deb"))
		if len(debs) == 0 {
			cmd := exec.Command("apt-get", "download", p)
			cmd.Dir = dl
			if out, err := cmd.CombinedOutput(); err != nil {
				return "", fmt.Errorf("apt-get download %s: %v: %s", p, err, out)
			}
			debs, _ = filepath.Glob(filepath.Join(dl, p+"_*.deb"))
		}
		if len(debs) == 0 {
			return "", fmt.Errorf("no .deb for %s", p)
		}
		if out, err := exec.Command("dpkg-deb", "-x", debs[0], tmp).CombinedOutput(); err != nil {
			return "", fmt.Errorf("dpkg-deb -x %s: %v: %s", debs[0], err, out)
		}
	}
	// Debian's Makefile includes the -common tree by absolute path; point
	// it at the unpacked one.
	tbuild := filepath.Join(tmp, "usr", "src", "linux-headers-"+k.Release)
	mk, err := os.ReadFile(filepath.Join(tbuild, "Makefile"))
	if err != nil {
		return "", err
	}
	fixed := strings.ReplaceAll(string(mk), "include /usr/src/", "include "+filepath.Join(root, "usr", "src")+"/")
	if err := os.WriteFile(filepath.Join(tbuild, "Makefile"), []byte(fixed), 0o644); err != nil {
		return "", err
	}
	os.RemoveAll(root)
	if err := os.Rename(tmp, root); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(build, ".vmwatch-ready"), nil, 0o644); err != nil {
		return "", err
	}
	return build, nil
}

// BuildModule builds the out-of-tree module in src (which has a Kbuild
// file) for the kernel, in a copy under out, and returns the .ko path.
func (k *Kernel) BuildModule(src, out, name string) (string, error) {
	hdr, err := k.Headers()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return "", err
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		return "", err
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(out, e.Name()), b, 0o644); err != nil {
			return "", err
		}
	}
	abs, _ := filepath.Abs(out)
	cmd := exec.Command("make", "-C", hdr, "M="+abs, "modules")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build module %s for %s: %v\n%s", name, k.Release, err, b)
	}
	return filepath.Join(abs, name+".ko"), nil
}

// BuildStatic compiles a C helper into a static binary.
func BuildStatic(src, out string) error {
	if b, err := exec.Command("gcc", "-static", "-O2", "-o", out, src).CombinedOutput(); err != nil {
		return fmt.Errorf("gcc -static %s: %v\n%s", src, err, b)
	}
	return nil
}
