package backup

import (
	"context"
	"fmt"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

// TestOpenErrors: a missing repository and a wrong password say so, and
// what to do.
func TestOpenErrors(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	r, err := Open(ctx, Options{Location: filepath.Join(dir, "repo"), Password: "right", Create: true})
	if err != nil {
		t.Fatal(err)
	}
	r.Close(ctx)
	for _, c := range []struct {
		opt  Options
		want string
	}{
		{Options{Location: filepath.Join(dir, "repo"), Password: "wrong"}, "wrong password"},
		{Options{Location: filepath.Join(dir, "repo")}, "wrong password"},
		{Options{Location: filepath.Join(dir, "none")}, "make one with vmwatch backup"},
		{Options{Location: dir}, "no repository there yet"},
		{Options{}, "no repository: give --repo"},
	} {
		_, err := Open(ctx, c.opt)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Open(%+v): %v, want an error saying %q", c.opt, err, c.want)
		}
	}
}

// TestSFTPRepository: a repository on an SFTP server (a real OpenSSH sshd on
// loopback, started by the test) stores and restores an image.
func TestSFTPRepository(t *testing.T) {
	if _, err := os.Stat("/usr/sbin/sshd"); err != nil {
		t.Fatal("no /usr/sbin/sshd (apt-get install openssh-server; make deps installs it)")
	}
	ctx := context.Background()
	dir := t.TempDir()
	keygen := func(path string) {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen: %v: %s", err, out)
		}
	}
	keygen(filepath.Join(dir, "host"))
	keygen(filepath.Join(dir, "client"))
	pub, _ := os.ReadFile(filepath.Join(dir, "client.pub"))
	os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	user := os.Getenv("USER")
	if user == "" {
		user = "root"
	}
	cfg := fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s/host
AuthorizedKeysFile %s/authorized_keys
PidFile %s/sshd.pid
StrictModes no
UsePAM no
PasswordAuthentication no
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
`, port, dir, dir, dir)
	os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(cfg), 0o600)
	os.MkdirAll("/run/sshd", 0o755) // privilege separation directory
	sshd := exec.Command("/usr/sbin/sshd", "-D", "-e", "-f", filepath.Join(dir, "sshd_config"))
	var logb strings.Builder
	sshd.Stderr = &logb
	if err := sshd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sshd.Process.Kill(); sshd.Wait() }()
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
			break
		}
		if i > 50 {
			t.Fatalf("sshd does not listen: %s", logb.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	hostPub, _ := os.ReadFile(filepath.Join(dir, "host.pub"))
	f := strings.Fields(string(hostPub))
	os.WriteFile(filepath.Join(dir, "known_hosts"), []byte(fmt.Sprintf("[127.0.0.1]:%d %s %s\n", port, f[0], f[1])), 0o600)
	t.Setenv("SFTP_KEY_FILE", filepath.Join(dir, "client"))
	t.Setenv("SFTP_KNOWN_HOSTS", filepath.Join(dir, "known_hosts"))
	remote := filepath.Join(dir, "remote")
	os.MkdirAll(remote, 0o700)
	loc := fmt.Sprintf("sftp://%s@127.0.0.1:%d%s", user, port, remote)

	disk := filepath.Join(dir, "disk.qcow2")
	qemuImg(t, "create", "-f", "qcow2", disk, "9M")
	qemuIO(t, disk, "write -P 0x61 0 2M", "write -P 0x62 8M 64k")
	want := rawSHA(t, disk)
	r, err := Open(ctx, Options{Location: loc, Password: "pw", Create: true})
	if err != nil {
		t.Fatalf("%v (sshd: %s)", err, logb.String())
	}
	defer r.Close(ctx)
	p := storeImage(t, r, disk, "sftp")
	out := filepath.Join(dir, "restored.raw")
	if err := r.RestoreDisk(ctx, p, "vda", out, "raw", false, nil); err != nil {
		t.Fatal(err)
	}
	if got := fileSHA(t, out); got != want {
		t.Errorf("restored from SFTP: %s, qemu-img reads %s", got, want)
	}
	entries, _ := os.ReadDir(remote)
	if len(entries) == 0 {
		t.Error("nothing was written on the SFTP server")
	}
}

// TestS3Repository: a repository on S3-compatible storage (gofakes3, an
// in-process S3 implementation: there is no S3 service on this machine)
// stores and restores an image, reached through vmwatch's s3:// location
// and environment variables.
func TestS3Repository(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	backend := s3mem.New()
	if err := backend.CreateBucket("vmwatch-backups"); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gofakes3.New(backend).Server())
	defer srv.Close()
	t.Setenv("AWS_ACCESS_KEY_ID", "test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
	t.Setenv("S3_ENDPOINT", strings.TrimPrefix(srv.URL, "http://"))
	t.Setenv("S3_INSECURE", "1")
	t.Setenv("S3_REGION", "us-east-1")

	disk := filepath.Join(dir, "disk.qcow2")
	qemuImg(t, "create", "-f", "qcow2", disk, "9M")
	qemuIO(t, disk, "write -P 0x71 0 1M", "write -P 0x72 5M 64k")
	want := rawSHA(t, disk)
	r, err := Open(ctx, Options{Location: "s3://vmwatch-backups/host1", Password: "pw", Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(ctx)
	p := storeImage(t, r, disk, "s3")
	out := filepath.Join(dir, "restored.raw")
	if err := r.RestoreDisk(ctx, p, "vda", out, "raw", false, nil); err != nil {
		t.Fatal(err)
	}
	if got := fileSHA(t, out); got != want {
		t.Errorf("restored from S3: %s, qemu-img reads %s", got, want)
	}
	objs, err := backend.ListBucket("vmwatch-backups", &gofakes3.Prefix{}, gofakes3.ListBucketPage{})
	if err != nil || len(objs.Contents) == 0 {
		t.Fatalf("nothing in the bucket: %v", err)
	}
	for _, o := range objs.Contents {
		if !strings.HasPrefix(o.Key, "host1/") {
			t.Errorf("object %s is outside the prefix host1/", o.Key)
		}
	}
}
