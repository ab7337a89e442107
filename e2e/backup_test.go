package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmwatch/vmwatch/testvm"
)

// bkPoint is a restore point as vmwatch backup -o json prints it.
type bkPoint struct {
	ID       string `json:"id"`
	Kind     string `json:"kind"`
	Read     int64  `json:"read"`
	Added    int64  `json:"added"`
	Size     int64  `json:"size"`
	Security string `json:"security"`
	Findings []struct {
		ID       string `json:"id"`
		Severity string `json:"severity"`
	} `json:"findings"`
	Disks []struct {
		Target     string `json:"target"`
		Mode       string `json:"mode"`
		Read       int64  `json:"read"`
		Size       int64  `json:"size"`
		FullReason string `json:"full_reason"`
		Checkpoint string `json:"checkpoint"`
	} `json:"disks"`
}

func (p bkPoint) disk(t *testing.T, target string) (mode, reason string, read int64) {
	t.Helper()
	for _, d := range p.Disks {
		if d.Target == target {
			return d.Mode, d.FullReason, d.Read
		}
	}
	t.Fatalf("restore point %s has no disk %s: %+v", p.ID, target, p.Disks)
	return
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// guestSHA is the checksum of a whole disk as the guest reads it: the
// ground truth of what a restore point must hold.
func guestSHA(t *testing.T, vm *testvm.VM, dev string) string {
	t.Helper()
	out, err := vm.RunTimeout("sync; echo 3 > /proc/sys/vm/drop_caches; sha256sum "+dev, 2*time.Minute)
	if err != nil {
		t.Fatalf("sha256sum %s in the guest: %v", dev, err)
	}
	f := strings.Fields(out)
	if len(f) == 0 || len(f[0]) != 64 {
		t.Fatalf("sha256sum %s in the guest: %q", dev, out)
	}
	return f[0]
}

// imageSHA converts an image to raw with qemu-img (-U: it may be in use)
// and returns the checksum.
func imageSHA(t *testing.T, image string) string {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "image.raw")
	if out, err := exec.Command("qemu-img", "convert", "-U", "-O", "raw", image, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert %s: %v: %s", image, err, out)
	}
	return sha256File(t, raw)
}

// diskGuest boots a libvirt guest with a new qcow2 data disk of sizeMB
// (vda in the guest) in a new directory that QEMU can reach; edit adjusts
// the configuration.
func diskGuest(t *testing.T, name, series string, sizeMB int, edit func(*testvm.Config)) (vm *testvm.VM, dir, data string) {
	t.Helper()
	if err := testvm.EnsureLibvirtd(); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", name+"-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o777) // QEMU runs as libvirt's user
	data = filepath.Join(dir, "data.qcow2")
	if err := testvm.CreateImage(data, sizeMB); err != nil {
		t.Fatal(err)
	}
	k, err := testvm.FetchKernel(series)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testvm.Config{Kernel: k, Name: name, Libvirt: true, Disks: []testvm.Disk{{Path: data}},
		Modules: append(append([]string{}, testvm.DefaultModules...), k.DiskModules()...)}
	if edit != nil {
		edit(&cfg)
	}
	if vm, err = testvm.Start(context.Background(), cfg); err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	needBlock(t, vm, "/dev/vda")
	return vm, dir, data
}

// needBlock fails the test unless the guest sees dev as a block device
// (dd would otherwise write a file on /dev's tmpfs).
func needBlock(t *testing.T, vm *testvm.VM, dev string) {
	t.Helper()
	if out, err := vm.Run("test -b " + dev + " && echo yes"); err != nil || !strings.Contains(out, "yes") {
		lsmod, _ := vm.Run("cat /proc/modules; ls /dev")
		t.Fatalf("the guest has no block device %s (%v): %s", dev, err, lsmod)
	}
}

// guestWrite runs dd in the guest and flushes, so the image holds it.
func guestWrite(t *testing.T, vm *testvm.VM, dd string) {
	t.Helper()
	if out, err := vm.RunTimeout(dd+" conv=fsync 2>&1 && sync", 2*time.Minute); err != nil {
		t.Fatalf("%s: %v: %s", dd, err, out)
	}
}

// TestBackupRestore: a libvirt domain with a qcow2 data disk is backed up
// full and then incrementally while the guest runs; each restore point,
// restored, matches the disk's content at that time as the guest read it
// (and as qemu-img converts a copy of the image); the incremental backup
// reads about what changed; a broken chain (checkpoint deleted, VM
// restarted after a crash, disk added, disk resized) gives a correct full
// backup of that disk; a backup killed with SIGKILL leaves the repository
// and the domain usable and the next backup correct; verify finds a
// corrupted block; restore --before-compromise skips the points taken while
// a reverse shell ran; restore onto the domain and as a new domain.
func TestBackupRestore(t *testing.T) {
	const name = "vmwatch-e2e-backup"
	vm, dir, data := diskGuest(t, name, "6.12", 64, func(c *testvm.Config) {
		c.Persistent, c.GuestAgent = true, true
		c.Modules = append(append([]string{}, testvm.DefaultModules...), c.Kernel.AgentModules()...)
	})
	defer os.RemoveAll(dir)
	defer vm.Stop()
	repoDir := filepath.Join(dir, "repo")
	scratch := filepath.Join(dir, "scratch")
	backupArgs := []string{"backup", "-t", "libvirt:" + name, "--repo", repoDir, "--scratch", scratch}
	backupJSON := func(extra ...string) bkPoint {
		t.Helper()
		var p bkPoint
		vmwatchJSON(t, &p, append(append([]string{}, backupArgs...), extra...)...)
		t.Logf("restore point %s: %s, read %d of %d bytes, added %d; disks %+v", p.ID, p.Kind, p.Read, p.Size, p.Added, p.Disks)
		return p
	}
	restoreSHA := func(id, disk, ext string) string {
		t.Helper()
		out := filepath.Join(t.TempDir(), "restored"+ext)
		vmwatch(t, "restore", "--repo", repoDir, "--point", id, "--disk", disk, "--to", out)
		if ext == ".qcow2" {
			return imageSHA(t, out)
		}
		return sha256File(t, out)
	}
	truth := map[string]string{} // restore point -> vda's checksum then
	// changeAndBackup has the guest write count 64 KiB blocks of random data
	// at block seek of vda, backs up, and records what the guest read then
	changeAndBackup := func(count, seek int) (bkPoint, string) {
		t.Helper()
		guestWrite(t, vm, fmt.Sprintf("dd if=/dev/urandom of=/dev/vda bs=64k count=%d seek=%d", count, seek))
		h := guestSHA(t, vm, "/dev/vda")
		p := backupJSON()
		truth[p.ID] = h
		return p, h
	}

	// full, then incremental
	guestWrite(t, vm, "dd if=/dev/urandom of=/dev/vda bs=1M count=24")
	h1 := guestSHA(t, vm, "/dev/vda")
	p1 := backupJSON()
	truth[p1.ID] = h1
	if mode, _, read := p1.disk(t, "vda"); p1.Kind != "full" || mode != "full" || read < 24<<20 {
		t.Errorf("first backup: kind %s, vda %s, read %d (want full, at least the 24 MiB written)", p1.Kind, mode, read)
	}
	// the guest agent froze the file systems for the point in time and
	// thawed them (its own log)
	if qga, err := vm.Run("cat /tmp/qga.log"); err != nil || !strings.Contains(qga, `"execute":"guest-fsfreeze-freeze"`) || !strings.Contains(qga, "re-enabled due to filesystem unfreeze") {
		t.Errorf("the guest agent's log shows no freeze and thaw: %v: %s", err, qga)
	}
	if p1.Security != "clean" {
		t.Errorf("first backup: security %q, want clean (the detectors ran on a clean guest)", p1.Security)
	}
	guestWrite(t, vm, "dd if=/dev/urandom of=/dev/vda bs=64k count=4 seek=100")
	guestWrite(t, vm, "dd if=/dev/urandom of=/dev/vda bs=64k count=1 seek=640")
	h2 := guestSHA(t, vm, "/dev/vda")
	p2 := backupJSON()
	truth[p2.ID] = h2
	mode, _, read := p2.disk(t, "vda")
	const changed = 5 * 64 << 10
	if p2.Kind != "incremental" || mode != "incremental" || read < changed || read > 4*changed {
		t.Errorf("second backup: kind %s, vda %s, read %d bytes (want incremental, about the %d changed)", p2.Kind, mode, read, changed)
	}
	t.Logf("incremental backup read %d bytes of a %d-byte disk (%d changed)", read, p2.Size, changed)
	if got := restoreSHA(p1.ID, "vda", ".raw"); got != h1 {
		t.Errorf("restore of the full point: sha256 %s, the guest read %s", got, h1)
	}
	if got := restoreSHA(p2.ID, "vda", ".qcow2"); got != h2 {
		t.Errorf("restore of the incremental point (qcow2): sha256 %s, the guest read %s", got, h2)
	}
	copyImg := filepath.Join(t.TempDir(), "copy.qcow2")
	if out, err := exec.Command("cp", data, copyImg).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	if got := imageSHA(t, copyImg); got != h2 {
		t.Errorf("qemu-img convert of a copy of the image: %s, the guest read %s", got, h2)
	}

	// a broken chain gives a full backup of the disk, and a correct one
	broken := func(what, wantReason string, disk string) bkPoint {
		t.Helper()
		p, h := changeAndBackup(2, 200+len(truth)*3)
		mode, reason, _ := p.disk(t, disk)
		if mode != "full" || !strings.Contains(reason, wantReason) {
			t.Errorf("%s: %s backup of %s (%q), want full because %q", what, mode, disk, reason, wantReason)
		}
		if got := restoreSHA(p.ID, "vda", ".raw"); got != h {
			t.Errorf("%s: restored vda %s, the guest read %s", what, got, h)
		}
		return p
	}
	// 1. the checkpoint is deleted
	cps, err := testvm.Virsh("checkpoint-list", name, "--name")
	if err != nil {
		t.Fatal(err)
	}
	for _, cp := range strings.Fields(cps) {
		testvm.Virsh("checkpoint-delete", name, cp)
	}
	broken("checkpoint deleted", "gone from libvirt", "vda")
	// the chain goes on from the new full point
	p, h := changeAndBackup(1, 300)
	if m, _, _ := p.disk(t, "vda"); m != "incremental" {
		t.Errorf("after a full backup the next one is %s, want incremental", m)
	}
	// 2. the VM is stopped (virsh destroy: QEMU gets SIGTERM and saves its
	// bitmaps) and started again: the chain holds, and the incremental
	// backup is correct
	if _, err := testvm.Virsh("destroy", name); err != nil {
		t.Fatal(err)
	}
	if err := vm.StartDomain(context.Background()); err != nil {
		t.Fatal(err)
	}
	p, h = changeAndBackup(1, 350)
	if m, _, _ := p.disk(t, "vda"); m != "incremental" {
		t.Errorf("after a clean restart the backup is %s, want incremental (the bitmap was saved)", m)
	}
	if got := restoreSHA(p.ID, "vda", ".raw"); got != h {
		t.Errorf("after a clean restart: restored vda %s, the guest read %s", got, h)
	}
	// 3. QEMU crashes (SIGKILL: the bitmap is not saved) and the VM is
	// started again
	if err := syscall.Kill(vm.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitDomainOff(t, name)
	if err := vm.StartDomain(context.Background()); err != nil {
		t.Fatal(err)
	}
	broken("VM restarted after a crash", "dirty bitmap", "vda")
	// 4. a disk is added (with known content, written before it is attached)
	extra := filepath.Join(dir, "extra.qcow2")
	if err := testvm.CreateImage(extra, 16); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 3M", extra).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v: %s", err, out)
	}
	if _, err := testvm.Virsh("attach-disk", name, extra, "vdb", "--driver", "qemu", "--subdriver", "qcow2", "--live", "--config"); err != nil {
		t.Fatal(err)
	}
	p, h = changeAndBackup(1, 400)
	if m, _, _ := p.disk(t, "vda"); m != "incremental" {
		t.Errorf("disk added: vda was backed up %s, want incremental", m)
	}
	if m, reason, _ := p.disk(t, "vdb"); m != "full" || !strings.Contains(reason, "new") {
		t.Errorf("disk added: vdb was backed up %s (%q), want full because it is new", m, reason)
	}
	if got, want := restoreSHA(p.ID, "vdb", ".raw"), imageSHA(t, extra); got != want {
		t.Errorf("disk added: restored vdb %s, qemu-img convert %s", got, want)
	}
	if got := restoreSHA(p.ID, "vda", ".raw"); got != h {
		t.Errorf("disk added: restored vda %s, the guest read %s", got, h)
	}
	// 5. a disk is resized
	if _, err := testvm.Virsh("blockresize", name, "vda", "80M"); err != nil {
		t.Fatal(err)
	}
	guestWrite(t, vm, "dd if=/dev/urandom of=/dev/vda bs=64k count=1 seek=500")
	vm.Run("sync")
	p = backupJSON()
	if m, reason, _ := p.disk(t, "vda"); m != "full" || !strings.Contains(reason, "resized") {
		t.Errorf("disk resized: vda was backed up %s (%q), want full because it was resized", m, reason)
	}
	if got, want := restoreSHA(p.ID, "vda", ".raw"), imageSHA(t, data); got != want {
		t.Errorf("disk resized: restored vda %s, qemu-img convert of the image %s", got, want)
	}
	truth[p.ID] = imageSHA(t, data)

	// SIGKILL in the middle of a backup
	guestWrite(t, vm, "dd if=/dev/urandom of=/dev/vda bs=1M count=8 seek=30")
	before := listPoints(t, repoDir)
	cmd := exec.Command(vmwatchBin, append(append([]string{}, backupArgs...), "--full", "--rate-limit", "4M")...)
	var killedErr bytes.Buffer
	cmd.Stderr = &killedErr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	// kill only once the backup is under way: libvirt runs its job (it
	// copies the point in time into the scratch image, which can take less
	// than a poll) or vmwatch reads the scratch image into the repository
	// (rate-limited: seconds). The detectors and the repository come
	// first; a fixed wait could kill before either.
	jobSeen, lastJob := false, ""
	var exitErr error
	ended := false
poll:
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		select {
		case exitErr = <-exited:
			ended = true
			break poll
		default:
		}
		out, err := testvm.Virsh("domjobinfo", name)
		lastJob = fmt.Sprintf("%s %v", out, err)
		if err == nil && strings.Contains(out, "Job type:") && !strings.Contains(out, "None") {
			jobSeen = true
			break
		}
		if sc, _ := filepath.Glob(filepath.Join(scratch, name, "*.qcow2")); len(sc) > 0 {
			lastJob += fmt.Sprintf(" (scratch %v)", sc)
			jobSeen = true
			break
		}
	}
	if !ended {
		cmd.Process.Signal(syscall.SIGKILL)
		<-exited
	}
	if !jobSeen {
		t.Fatalf("SIGKILL during a backup: no libvirt backup job or scratch image appeared for %s (vmwatch ended before: %v, exit %v; last domjobinfo: %s); vmwatch's stderr:\n%s",
			name, ended, exitErr, lastJob, killedErr.String())
	}
	t.Logf("SIGKILL during the backup, at %s", strings.Join(strings.Fields(lastJob), " "))
	if after := listPoints(t, repoDir); len(after) != len(before) {
		t.Errorf("a killed backup left a restore point: %d before, %d after", len(before), len(after))
	}
	if out, err := testvm.Virsh("domjobinfo", name); err != nil || !strings.Contains(out, "None") {
		t.Logf("domjobinfo after the kill: %s %v", out, err)
	}
	// a backup job that a killed vmwatch left running (a pull-mode job
	// stays until aborted) is aborted by the next backup
	stale := fmt.Sprintf(`<domainbackup mode='pull'><server transport='unix' socket='%s/stale.sock'/><disks>`+
		`<disk name='vda' backup='yes' type='file'><scratch file='%s/vda.stale.qcow2'/></disk><disk name='vdb' backup='no'/></disks></domainbackup>`,
		vm.Dir, filepath.Join(scratch, name))
	staleXML := filepath.Join(dir, "stale.xml")
	os.WriteFile(staleXML, []byte(stale), 0o644)
	if _, err := testvm.Virsh("backup-begin", name, staleXML); err != nil {
		t.Fatal(err)
	}
	h = guestSHA(t, vm, "/dev/vda")
	so, se, err := vmwatchRun(append(append([]string{}, backupArgs...), "-o", "json")...)
	if err != nil || !strings.Contains(string(se), "aborting a backup job left by an earlier vmwatch run") {
		t.Fatalf("backup with a stale job running: %v: %s", err, se)
	}
	p = bkPoint{}
	json.Unmarshal(so, &p)
	truth[p.ID] = h
	if got := restoreSHA(p.ID, "vda", ".raw"); got != h {
		t.Errorf("backup after a killed one: restored vda %s, the guest read %s", got, h)
	}
	if _, stderr, err := vmwatchRun("verify", "--repo", repoDir); err != nil {
		t.Errorf("verify after the killed backup: %v: %s", err, stderr)
	}

	// restore --before-compromise: a reverse shell makes the next points
	// compromised; the pick is the newest clean one
	lastClean := p
	if _, err := vm.Run("sleep 1000 | nc -l -p 4444 >/dev/null & sleep 0.3; nc 127.0.0.1 4444 -e /bin/sh &"); err != nil {
		t.Fatal(err)
	}
	guestWrite(t, vm, "dd if=/dev/urandom of=/dev/vda bs=64k count=1 seek=700")
	bad1 := backupJSON()
	bad2 := backupJSON()
	for _, b := range []bkPoint{bad1, bad2} {
		found := false
		for _, f := range b.Findings {
			found = found || f.ID == "reverse-shell"
		}
		if b.Security != "findings" || !found {
			t.Errorf("restore point %s taken with a reverse shell running: security %q, findings %+v", b.ID, b.Security, b.Findings)
		}
	}
	out := filepath.Join(t.TempDir(), "before.raw")
	stdout, stderr, err := vmwatchRun("restore", "--repo", repoDir, "--before-compromise", "--domain", name, "--disk", "vda", "--to", out)
	if err != nil {
		t.Fatalf("restore --before-compromise: %v: %s", err, stderr)
	}
	if !strings.Contains(string(stdout), lastClean.ID) || !strings.Contains(string(stderr), lastClean.ID) {
		t.Errorf("restore --before-compromise did not pick %s (the newest clean point): %s %s", lastClean.ID, stdout, stderr)
	}
	if got := sha256File(t, out); got != truth[lastClean.ID] {
		t.Errorf("restore --before-compromise: %s, the guest read %s at %s", got, truth[lastClean.ID], lastClean.ID)
	}

	// every restore point still restores to what the guest read
	for id, want := range truth {
		if got := restoreSHA(id, "vda", ".raw"); got != want {
			t.Errorf("restore point %s: restored %s, the guest read %s", id, got, want)
		}
	}

	// restore as a new domain, then onto the (shut off) domain itself
	newDir := filepath.Join(dir, "copy")
	vmwatch(t, "restore", "--repo", repoDir, "--point", p2.ID, "--as-domain", name+"-copy", "--dir", newDir)
	defer testvm.Virsh("undefine", name+"-copy")
	x, err := testvm.Virsh("dumpxml", name+"-copy")
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(newDir, name+"-copy-vda.qcow2")
	if !strings.Contains(x, img) {
		t.Errorf("the new domain does not use %s: %s", img, x)
	}
	if got := imageSHA(t, img); got != h2 {
		t.Errorf("restore --as-domain: vda %s, the guest read %s", got, h2)
	}
	if _, err := testvm.Virsh("destroy", name); err != nil {
		t.Fatal(err)
	}
	if _, stderr, err := vmwatchRun("restore", "--repo", repoDir, "--point", p2.ID, "--onto-domain", "--yes"); err != nil {
		t.Fatalf("restore --onto-domain: %v: %s", err, stderr)
	}
	// a shut-off domain is backed up from its images
	off := backupJSON()
	if m, reason, _ := off.disk(t, "vdb"); m != "full" || !strings.Contains(reason, "shut off") {
		t.Errorf("backup of a shut-off domain: vdb %s (%q), want full because it is shut off", m, reason)
	}
	if m, reason, _ := off.disk(t, "vda"); m != "full" || !strings.Contains(reason, "resized") {
		t.Errorf("backup of a shut-off domain: vda %s (%q), want full because the restore made it 64 MiB again", m, reason)
	}
	if err := vm.StartDomain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := guestSHA(t, vm, "/dev/vda"); got != h2 {
		t.Errorf("after restore --onto-domain the guest reads %s, want %s (restore point %s)", got, h2, p2.ID)
	}
	if got := restoreSHA(off.ID, "vda", ".raw"); got != h2 {
		t.Errorf("backup of the shut-off domain restores to %s, want %s", got, h2)
	}

	// verify finds a corrupted block and names the restore point
	damaged := filepath.Join(dir, "damaged")
	if out, err := exec.Command("cp", "-a", repoDir, damaged).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	pack := largestPack(t, damaged)
	f, err := os.OpenFile(pack, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := f.Stat()
	b := make([]byte, 1)
	f.ReadAt(b, st.Size()/2)
	b[0] ^= 0xff
	f.WriteAt(b, st.Size()/2)
	f.Close()
	so, se, err = vmwatchRun("verify", "--repo", damaged, "-o", "json")
	var probs []struct {
		Point, Disk string
		Offset      int64
	}
	json.Unmarshal(so, &probs)
	ids := map[string]bool{}
	for _, p := range listPoints(t, repoDir) {
		ids[p] = true
	}
	if err == nil || len(probs) == 0 {
		t.Fatalf("verify of a damaged repository: err %v, problems %s (stderr %s)", err, so, se)
	}
	for _, p := range probs {
		if !ids[p.Point] {
			t.Errorf("verify names %q, not a restore point", p.Point)
		}
	}
	t.Logf("verify found %d damaged blocks after one flipped byte in %s: %s", len(probs), filepath.Base(pack), so)
}

// waitDomainOff waits until libvirt sees the domain shut off.
func waitDomainOff(t *testing.T, name string) {
	t.Helper()
	for i := 0; i < 100; i++ {
		if out, _ := testvm.Virsh("domstate", name); strings.Contains(out, "shut off") {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("domain %s is not shut off after its QEMU was killed", name)
}

func listPoints(t *testing.T, repoDir string) []string {
	t.Helper()
	var pts []struct{ ID string }
	vmwatchJSON(t, &pts, "backups", "--repo", repoDir)
	var ids []string
	for _, p := range pts {
		ids = append(ids, p.ID)
	}
	sort.Strings(ids)
	return ids
}

// largestPack is the biggest data pack blob ("p" prefix) of a kopia
// filesystem repository.
func largestPack(t *testing.T, repoDir string) string {
	t.Helper()
	var best string
	var size int64
	filepath.Walk(filepath.Join(repoDir, "p"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && fi.Size() > size && regexp.MustCompile(`\.f$`).MatchString(p) {
			best, size = p, fi.Size()
		}
		return nil
	})
	if best == "" {
		t.Fatal("no pack blob in the repository")
	}
	return best
}

// TestServeBackupSchedule: the daemon backs a libvirt domain up on a
// schedule, records its open findings with each restore point, prunes to
// the schedule's keep-last, and journals each backup.
func TestServeBackupSchedule(t *testing.T) {
	const name = "vmwatch-e2e-sched"
	vm, dir, _ := diskGuest(t, name, "6.1", 32, nil)
	defer os.RemoveAll(dir)
	defer vm.Stop()
	guestWrite(t, vm, "dd if=/dev/urandom of=/dev/vda bs=1M count=4")
	repoDir := filepath.Join(dir, "repo")
	d := startDaemon(t, fmt.Sprintf(`
libvirt: {enabled: true}
defaults: {check_interval: 2s, metrics_interval: 2s}
backup:
  repo: %s
  scratch: %s
  schedules:
    - domains: [%s]
      cron: "*/4 * * * * * *"
      keep: {last: 2}
`, repoDir, filepath.Join(dir, "scratch"), name))
	var recs []struct {
		Subject string `json:"subject"`
		Message string `json:"message"`
	}
	waitFor(t, 60*time.Second, "three scheduled backups", func() bool {
		recs = nil
		d.get(t, "/api/vms/"+name+"/journal?kind=backup", &recs)
		n := 0
		for _, r := range recs {
			if r.Subject == "backup" {
				n++
			}
		}
		return n >= 3
	})
	for _, r := range recs {
		if r.Subject == "backup failed" {
			t.Errorf("journal: %s", r.Message)
		}
	}
	var pts []struct {
		ID, Kind, Security, Domain string
	}
	vmwatchJSON(t, &pts, "backups", "--repo", repoDir, "--domain", name)
	if len(pts) < 1 || len(pts) > 3 {
		t.Errorf("keep last 2: %d restore points (one more may be on its way): %+v", len(pts), pts)
	}
	for _, p := range pts {
		if p.Kind != "incremental" || p.Security != "clean" {
			t.Errorf("scheduled restore point %s: kind %s, security %q (want incremental after the first, clean from the daemon's checks)", p.ID, p.Kind, p.Security)
		}
	}
	// Prometheus: the last scheduled backup's time, and no failures
	resp, err := http.Get(d.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := regexp.MustCompile(`vmwatch_backup_last_success_timestamp_seconds\{domain="` + name + `"\} ([0-9.e+]+)`).FindSubmatch(body)
	if m == nil || !strings.Contains(string(body), `vmwatch_backup_failures_total{domain="`+name+`"} 0`) {
		t.Errorf("/metrics has no backup series for %s:\n%s", name, grepLines(string(body), "vmwatch_backup"))
	} else if ts, _ := strconv.ParseFloat(string(m[1]), 64); time.Since(time.Unix(int64(ts), 0)) > time.Minute {
		t.Errorf("last scheduled backup at %v, over a minute ago", time.Unix(int64(ts), 0))
	}
	h := guestSHA(t, vm, "/dev/vda")
	time.Sleep(5 * time.Second) // one more backup after the last write
	vmwatchJSON(t, &pts, "backups", "--repo", repoDir, "--domain", name)
	out := filepath.Join(t.TempDir(), "r.raw")
	vmwatch(t, "restore", "--repo", repoDir, "--point", pts[len(pts)-1].ID, "--to", out)
	if got := sha256File(t, out); got != h {
		t.Errorf("the newest scheduled restore point restores to %s, the guest reads %s", got, h)
	}
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
