package testvm

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"
)

// SystemImage is a real Debian 12 system (systemd, udev, dbus, sshd,
// cron, rsyslog, nginx, exim4, nodejs, python3, nftables, apparmor) on a
// raw ext4 disk image, with the test kernels installed by apt and their
// initramfs made by initramfs-tools. scripts/build-system-image.sh builds
// it; the result is cached, keyed by the script and the kernel packages.
type SystemImage struct {
	Dir     string // the cache entry
	Disk    string // raw ext4 root file system
	Kernels []*Kernel
}

// Boot returns the kernel and initramfs of a release installed in the image.
func (im *SystemImage) Boot(release string) (vmlinuz, initrd string, err error) {
	vmlinuz = filepath.Join(im.Dir, "boot", "vmlinuz-"+release)
	initrd = filepath.Join(im.Dir, "boot", "initrd.img-"+release)
	for _, p := range []string{vmlinuz, initrd} {
		if _, err := os.Stat(p); err != nil {
			return "", "", fmt.Errorf("system image %s has no %s: %w", im.Dir, filepath.Base(p), err)
		}
	}
	return vmlinuz, initrd, nil
}

// imageScript finds scripts/build-system-image.sh from the working
// directory (tests run in their package's directory) or the executable.
func imageScript() (string, error) {
	var roots []string
	if wd, err := os.Getwd(); err == nil {
		roots = append(roots, wd)
	}
	if exe, err := os.Executable(); err == nil {
		roots = append(roots, filepath.Dir(exe))
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		roots = append(roots, filepath.Dir(file))
	}
	for _, r := range roots {
		for d := r; ; d = filepath.Dir(d) {
			p := filepath.Join(d, "scripts", "build-system-image.sh")
			if _, err := os.Stat(p); err == nil {
				return p, nil
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	return "", fmt.Errorf("scripts/build-system-image.sh not found from %v", roots)
}

// EnsureSystemImage returns the system image with the newest kernels of
// every test series, building it the first time (about 4 minutes; the
// packages come from the mirror apt uses). Concurrent callers (several
// test binaries) wait for one build.
func EnsureSystemImage() (*SystemImage, error) {
	var ks []*Kernel
	series := make([]string, 0, len(Series))
	for s := range Series {
		series = append(series, s)
	}
	sort.Strings(series)
	for _, s := range series {
		k, err := FetchKernel(s)
		if err != nil {
			return nil, err
		}
		if k.Deb == "" {
			return nil, fmt.Errorf("kernel %s: the package file is not in the cache (needed to install it in the system image)", k.Package)
		}
		ks = append(ks, k)
	}
	script, err := imageScript()
	if err != nil {
		return nil, err
	}
	src, err := os.ReadFile(script)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	h.Write(src)
	for _, k := range ks {
		h.Write([]byte("\x00" + filepath.Base(k.Deb)))
	}
	key := hex.EncodeToString(h.Sum(nil))[:16]
	base := filepath.Join(CacheDir(), "images")
	if err := os.MkdirAll(base, 0o755); err != nil {
		return nil, err
	}
	im := &SystemImage{Dir: filepath.Join(base, "bookworm-system-"+key), Kernels: ks}
	im.Disk = filepath.Join(im.Dir, "disk.img")
	lock, err := os.OpenFile(filepath.Join(base, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return nil, fmt.Errorf("lock %s: %w", lock.Name(), err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if _, err := os.Stat(im.Disk); err == nil {
		return im, nil
	}
	args := []string{im.Dir}
	for _, k := range ks {
		args = append(args, k.Deb)
	}
	t0 := time.Now()
	fmt.Fprintf(os.Stderr, "testvm: building the Debian system image %s (a few minutes, once)\n", im.Dir)
	cmd := exec.Command(script, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("build the system image (%s): %v\n%s", script, err, out.String())
	}
	fmt.Fprintf(os.Stderr, "testvm: system image built in %v\n", time.Since(t0).Round(time.Second))
	// old entries of other scripts or kernels
	if ents, err := os.ReadDir(base); err == nil {
		for _, e := range ents {
			if e.IsDir() && strings.HasPrefix(e.Name(), "bookworm-system-") && filepath.Join(base, e.Name()) != im.Dir {
				os.RemoveAll(filepath.Join(base, e.Name()))
			}
		}
	}
	return im, nil
}

// filesTar packs files (path -> content, mode 0755) as a tar archive that
// the system guest unpacks from a raw disk (tar -xf /dev/vdb): no file
// system to mount, nothing to parse on the host.
func filesTar(path string, files map[string][]byte) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(n, "/"), Mode: 0o755, Size: int64(len(files[n])), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}); err != nil {
			return err
		}
		if _, err := tw.Write(files[n]); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	// a whole number of 512-byte sectors, and at least one block
	for buf.Len()%(64<<10) != 0 {
		buf.WriteByte(0)
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}
