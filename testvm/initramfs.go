package testvm

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/ulikunitz/xz"
)

// cpioWriter writes the "newc" cpio format that the kernel unpacks as an
// initramfs.
type cpioWriter struct {
	w    io.Writer
	ino  int
	err  error
	size int64
}

func (c *cpioWriter) header(name string, mode uint32, size int, target string) {
	if c.err != nil {
		return
	}
	c.ino++
	fmt.Fprintf(c.w, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, len(name)+1, 0)
	c.w.Write([]byte(name + "\x00"))
	c.pad(110 + len(name) + 1)
}

func (c *cpioWriter) pad(n int) {
	if r := n % 4; r != 0 {
		c.w.Write(make([]byte, 4-r))
	}
}

func (c *cpioWriter) dir(name string) { c.header(name, 0o40755, 0, "") }

func (c *cpioWriter) file(name string, mode uint32, data []byte) {
	c.header(name, 0o100000|mode, len(data), "")
	c.w.Write(data)
	c.pad(len(data))
}

func (c *cpioWriter) symlink(name, target string) {
	c.header(name, 0o120777, len(target), target)
	c.w.Write([]byte(target))
	c.pad(len(target))
}

func (c *cpioWriter) trailer() { c.header("TRAILER!!!", 0, 0, "") }

// InitramfsSpec describes a test initramfs.
type InitramfsSpec struct {
	Kernel  *Kernel
	Modules []string          // module names loaded at boot, in order
	Files   map[string][]byte // extra files (path -> contents), e.g. helpers
	Init    string            // the /init script
}

// BuildInitramfs writes an uncompressed newc cpio archive with busybox
// (busybox-static), the modules (decompressed) and the init script.
func BuildInitramfs(path string, spec InitramfsSpec) error {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return fmt.Errorf("read /bin/busybox (apt-get install busybox-static): %w", err)
	}
	if !bytes.Contains(bb[:min(len(bb), 4096)], []byte{0x7f, 'E', 'L', 'F'}) {
		return fmt.Errorf("/bin/busybox is not an ELF binary")
	}
	var buf bytes.Buffer
	c := &cpioWriter{w: &buf}
	for _, d := range []string{"bin", "sbin", "dev", "proc", "sys", "tmp", "run", "etc", "root", "lib", "lib/modules", "usr", "usr/bin", "usr/sbin", "var", "var/run"} {
		c.dir(d)
	}
	c.file("bin/busybox", 0o755, bb)
	c.symlink("bin/sh", "busybox")
	for i, m := range spec.Modules {
		p, err := spec.Kernel.ModulePath(m)
		if err != nil {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if strings.HasSuffix(p, ".xz") {
			r, err := xz.NewReader(bytes.NewReader(data))
			if err != nil {
				return fmt.Errorf("decompress %s: %w", p, err)
			}
			if data, err = io.ReadAll(r); err != nil {
				return fmt.Errorf("decompress %s: %w", p, err)
			}
		}
		c.file(fmt.Sprintf("lib/modules/%02d-%s.ko", i, m), 0o644, data)
	}
	for name, data := range spec.Files {
		name = strings.TrimPrefix(name, "/")
		for d := filepath.Dir(name); d != "." && d != "/"; d = filepath.Dir(d) {
			c.dir(d)
		}
		c.file(name, 0o755, data)
	}
	c.file("init", 0o755, []byte(spec.Init))
	c.trailer()
	if c.err != nil {
		return c.err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
