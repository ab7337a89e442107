// Package testvm boots test guests: real Debian kernels under QEMU with a
// generated busybox initramfs, a QMP socket for control and a serial shell
// for ground truth from the guest's own /proc. Tests use it; so does
// `make demo`.
package testvm

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// Kernel is an unpacked Debian kernel package.
type Kernel struct {
	Series  string // "6.1" or "6.12"
	Package string // linux-image-6.1.0-56-amd64
	Release string // 6.1.0-56-amd64
	Vmlinuz string
	Root    string // unpacked package
	Deb     string // the package file, kept in the cache
}

// ModulePath returns the path of a module of this kernel (".ko" or ".ko.xz").
func (k *Kernel) ModulePath(name string) (string, error) {
	var found string
	base := filepath.Join(k.Root, "lib", "modules", k.Release, "kernel")
	filepath.WalkDir(base, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || found != "" {
			return nil
		}
		n := d.Name()
		if n == name+".ko" || n == name+".ko.xz" {
			found = p
		}
		return nil
	})
	if found == "" {
		return "", fmt.Errorf("module %s not in %s", name, k.Package)
	}
	return found, nil
}

// CacheDir is where kernels and images are kept: $VMWATCH_CACHE, else
// /var/cache/vmwatch for root, else ~/.cache/vmwatch.
func CacheDir() string {
	if d := os.Getenv("VMWATCH_CACHE"); d != "" {
		return d
	}
	if os.Geteuid() == 0 {
		return "/var/cache/vmwatch"
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "vmwatch")
	}
	return filepath.Join(os.TempDir(), "vmwatch-cache")
}

// Series are the kernel lines the tests use, with the apt package name pattern.
var Series = map[string]*regexp.Regexp{
	"6.1":  regexp.MustCompile(`^linux-image-(6\.1\.0-\d+-amd64)$`),
	"6.12": regexp.MustCompile(`^linux-image-(6\.12\.\d+\+deb12-amd64)$`),
}

var kernelMu sync.Mutex

// FetchKernel returns the newest kernel of a series that apt lists,
// downloading (apt-get download) and unpacking it into the cache the first
// time. Offline, the newest kernel already in the cache is used.
func FetchKernel(series string) (*Kernel, error) {
	kernelMu.Lock()
	defer kernelMu.Unlock()
	re, ok := Series[series]
	if !ok {
		return nil, fmt.Errorf("unknown kernel series %q (have 6.1, 6.12)", series)
	}
	dir := filepath.Join(CacheDir(), "kernels")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	pkg, err := newestPackage(re)
	if err != nil {
		// offline: use what the cache has
		if pkg = newestCached(dir, re); pkg == "" {
			return nil, fmt.Errorf("find kernel %s: %w (and none cached in %s)", series, err, dir)
		}
	}
	release := re.FindStringSubmatch(pkg)[1]
	root := filepath.Join(dir, pkg)
	k := &Kernel{Series: series, Package: pkg, Release: release, Root: root,
		Vmlinuz: filepath.Join(root, "boot", "vmlinuz-"+release)}
	debs, _ := filepath.Glob(filepath.Join(dir, pkg+"_*.deb"))
	if _, err := os.Stat(k.Vmlinuz); err == nil && len(debs) > 0 {
		k.Deb = debs[0]
		return k, nil
	}
	if len(debs) == 0 {
		cmd := exec.Command("apt-get", "download", pkg)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("apt-get download %s: %v: %s", pkg, err, out)
		}
		debs, _ = filepath.Glob(filepath.Join(dir, pkg+"_*.deb"))
		if len(debs) == 0 {
			return nil, fmt.Errorf("apt-get download %s left no .deb in %s", pkg, dir)
		}
	}
	k.Deb = debs[0]
	if _, err := os.Stat(k.Vmlinuz); err == nil {
		return k, nil
	}
	tmp := root + ".tmp"
	os.RemoveAll(tmp)
	if out, err := exec.Command("dpkg-deb", "-x", debs[0], tmp).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("dpkg-deb -x %s: %v: %s", debs[0], err, out)
	}
	if err := os.Rename(tmp, root); err != nil {
		return nil, err
	}
	return k, nil
}

func newestPackage(re *regexp.Regexp) (string, error) {
	out, err := exec.Command("apt-cache", "search", "--names-only", "^linux-image-6").Output()
	if err != nil {
		return "", fmt.Errorf("apt-cache search: %w", err)
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(line, " ")
		if re.MatchString(name) {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return "", fmt.Errorf("apt lists no package matching %s (run apt-get update)", re)
	}
	sort.Slice(names, func(i, j int) bool { return versionLess(names[i], names[j]) })
	return names[len(names)-1], nil
}

func newestCached(dir string, re *regexp.Regexp) string {
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		if e.IsDir() && re.MatchString(e.Name()) {
			names = append(names, e.Name())
		}
	}
	if len(names) == 0 {
		return ""
	}
	sort.Slice(names, func(i, j int) bool { return versionLess(names[i], names[j]) })
	return names[len(names)-1]
}

var numRE = regexp.MustCompile(`\d+|\D+`)

// versionLess compares strings with embedded numbers numerically.
func versionLess(a, b string) bool {
	pa, pb := numRE.FindAllString(a, -1), numRE.FindAllString(b, -1)
	for i := 0; i < len(pa) && i < len(pb); i++ {
		if pa[i] == pb[i] {
			continue
		}
		na, ea := strconv.Atoi(pa[i])
		nb, eb := strconv.Atoi(pb[i])
		if ea == nil && eb == nil {
			return na < nb
		}
		return pa[i] < pb[i]
	}
	return len(pa) < len(pb)
}

// DiskModules are the modules a guest of this kernel loads, in order, to
// see virtio disks: Debian's 6.1 builds virtio and virtio_pci as modules,
// 6.12 builds them in (only the ones that exist as modules are listed).
func (k *Kernel) DiskModules() []string {
	return k.modulesOf("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "virtio_blk")
}

// AgentModules are the modules for a QEMU guest agent's virtio-serial port
// (and virtio disks).
func (k *Kernel) AgentModules() []string {
	return k.modulesOf("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "virtio_blk", "virtio_console")
}

func (k *Kernel) modulesOf(names ...string) []string {
	var out []string
	for _, m := range names {
		if _, err := k.ModulePath(m); err == nil {
			out = append(out, m)
		}
	}
	return out
}
