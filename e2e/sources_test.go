package e2e

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/vmwatch/vmwatch/testvm"
)

// TestMemorySources reads one paused guest through every memory source and
// requires the same answers from each: the live QEMU process (shared memory
// mapped, and process_vm_readv), the process found by pid, the memory
// file, and dump files in ELF (QEMU dump-guest-memory), raw and LiME.
func TestMemorySources(t *testing.T) {
	vm := standard(t, "6.1")
	compareSources(t, vm)
}

// TestLargeGuest: a 4 GiB q35 guest, whose RAM lies below and above the PCI
// hole, reads correctly from every source and agrees with its /proc.
func TestLargeGuest(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a 4 GiB guest")
	}
	vm := guest(t, "large-6.12", func(k *testvm.Kernel) testvm.Config {
		return testvm.Config{MemoryMB: 4096, MemFile: fmt.Sprintf("/dev/shm/vmwatch-e2e-%d-large", os.Getpid())}
	}, "6.12")
	var info struct {
		RAM []struct {
			Start uint64 `json:"start"`
			End   uint64 `json:"end"`
		} `json:"ram"`
		RAMBytes uint64 `json:"ram_bytes"`
	}
	vmwatchJSON(t, &info, "info", "-t", "qmp:"+vm.QMPPath)
	if info.RAMBytes != 4<<30 || len(info.RAM) != 2 || info.RAM[0].Start != 0 || info.RAM[0].End != 2<<30 || info.RAM[1].Start != 4<<30 {
		t.Errorf("4 GiB guest: RAM %+v (%d bytes), want 2 GiB at 0 and 2 GiB from 4 GiB", info.RAM, info.RAMBytes)
	}
	checkPS(t, vm, "qmp:"+vm.QMPPath)
	compareSources(t, vm)
}

func compareSources(t *testing.T, vm *testvm.VM) {
	dir := t.TempDir()
	if _, err := vm.QMP("stop", nil); err != nil {
		t.Fatal(err)
	}
	defer vm.QMP("cont", nil)
	elfPath := filepath.Join(dir, "guest.elf")
	if _, err := vm.QMP("dump-guest-memory", map[string]any{"paging": false, "protocol": "file:" + elfPath}); err != nil {
		t.Fatalf("dump-guest-memory: %v", err)
	}
	rawPath, limePath := filepath.Join(dir, "guest.raw"), filepath.Join(dir, "guest.lime")
	if err := convertELF(elfPath, rawPath, limePath); err != nil {
		t.Fatal(err)
	}
	targets := []struct{ name, target, source string }{
		{"qmp", "qmp:" + vm.QMPPath, "shared memory"},
		{"qmp-process_vm_readv", "qmp:" + vm.QMPPath + " --no-direct", "process_vm_readv"},
		{"pid", "pid:" + strconv.Itoa(vm.PID()), "shared memory"},
		{"memfile", "memfile:" + vm.MemFile, "memory file"},
		{"elf", "dump:" + elfPath, "ELF core"},
		{"raw", "dump:" + rawPath, "raw"},
		{"lime", "dump:" + limePath, "LiME"},
	}
	blocksBefore := allocatedBlocks(t, vm.MemFile)
	ref := map[string][]byte{}
	for _, tg := range targets {
		args := strings.Fields(tg.target)
		var info struct {
			MemorySource string `json:"memory_source"`
			Release      string `json:"release"`
			TextStart    string `json:"text_start"`
			PhysStart    string `json:"phys_start"`
			Symbols      int    `json:"symbols"`
			Types        int    `json:"types"`
			FoundBy      string `json:"found_by"`
		}
		vmwatchJSON(t, &info, append([]string{"info", "-t"}, args...)...)
		if !strings.Contains(info.MemorySource, tg.source) {
			t.Errorf("%s: memory source %q, want %q", tg.name, info.MemorySource, tg.source)
		}
		t.Logf("%s: %s, kernel found by %s", tg.name, info.MemorySource, info.FoundBy)
		info.MemorySource, info.FoundBy = "", ""
		answers := map[string][]byte{"info": mustJSON(t, info)}
		for _, verb := range []string{"ps", "lsmod", "sockets", "dmesg"} {
			answers[verb] = vmwatch(t, append([]string{verb, "-o", "json", "-t"}, args...)...)
		}
		for verb, got := range answers {
			if want, ok := ref[verb]; !ok {
				ref[verb] = got
			} else if !bytes.Equal(want, got) {
				t.Errorf("%s: %s differs from the %s source:\n%s", tg.name, verb, targets[0].name, firstDiff(want, got))
			}
		}
	}
	// reading must not allocate the holes of the guest's memory file
	if after := allocatedBlocks(t, vm.MemFile); after != blocksBefore {
		t.Errorf("the memory file grew from %d to %d allocated blocks while vmwatch read it", blocksBefore, after)
	}
}

func allocatedBlocks(t *testing.T, path string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks
}

func mustJSON(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func firstDiff(a, b []byte) string {
	la, lb := strings.Split(string(a), "\n"), strings.Split(string(b), "\n")
	for i := 0; i < len(la) && i < len(lb); i++ {
		if la[i] != lb[i] {
			return fmt.Sprintf("line %d:\n  want %s\n  got  %s", i+1, la[i], lb[i])
		}
	}
	return fmt.Sprintf("%d lines vs %d", len(la), len(lb))
}

// convertELF writes a raw image (file offset = physical address, holes
// left sparse) and a LiME file from the PT_LOAD segments of an ELF core.
func convertELF(elfPath, rawPath, limePath string) error {
	f, err := elf.Open(elfPath)
	if err != nil {
		return err
	}
	defer f.Close()
	raw, err := os.Create(rawPath)
	if err != nil {
		return err
	}
	defer raw.Close()
	lime, err := os.Create(limePath)
	if err != nil {
		return err
	}
	defer lime.Close()
	var limeOff int64
	for _, p := range f.Progs {
		if p.Type != elf.PT_LOAD || p.Filesz == 0 {
			continue
		}
		hdr := make([]byte, 32)
		binary.LittleEndian.PutUint32(hdr[0:], 0x4C694D45)
		binary.LittleEndian.PutUint32(hdr[4:], 1)
		binary.LittleEndian.PutUint64(hdr[8:], p.Paddr)
		binary.LittleEndian.PutUint64(hdr[16:], p.Paddr+p.Filesz-1)
		if _, err := lime.WriteAt(hdr, limeOff); err != nil {
			return err
		}
		limeOff += 32
		if err := sparseCopy(raw, int64(p.Paddr), lime, limeOff, p.Open(), int64(p.Filesz)); err != nil {
			return err
		}
		limeOff += int64(p.Filesz)
	}
	if err := raw.Truncate(maxEnd(f)); err != nil {
		return err
	}
	return lime.Truncate(limeOff)
}

func maxEnd(f *elf.File) int64 {
	var end int64
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && int64(p.Paddr+p.Filesz) > end {
			end = int64(p.Paddr + p.Filesz)
		}
	}
	return end
}

// sparseCopy copies n bytes from r to two files at two offsets, skipping
// blocks of zeros (which stay holes).
func sparseCopy(a *os.File, aOff int64, b *os.File, bOff int64, r io.Reader, n int64) error {
	buf := make([]byte, 1<<20)
	zero := make([]byte, len(buf))
	for done := int64(0); done < n; {
		k := int64(len(buf))
		if n-done < k {
			k = n - done
		}
		if _, err := io.ReadFull(r, buf[:k]); err != nil {
			return err
		}
		if !bytes.Equal(buf[:k], zero[:k]) {
			if _, err := a.WriteAt(buf[:k], aOff+done); err != nil {
				return err
			}
			if _, err := b.WriteAt(buf[:k], bOff+done); err != nil {
				return err
			}
		}
		done += k
	}
	return nil
}
