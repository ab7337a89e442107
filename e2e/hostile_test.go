package e2e

import (
	"context"
	"encoding/binary"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vmwatch/vmwatch/linux"
	"github.com/vmwatch/vmwatch/target"
)

// TestCorruptedLists: a task list or module list damaged the way an attack
// or a race could damage it (a cycle that skips the head, a pointer into
// unmapped memory) makes vmwatch stop the walk with an error that says what
// is wrong, keep what it read, and never hang. The damage is done through
// the guest's memory file while the guest is paused, and undone after.
func TestCorruptedLists(t *testing.T) {
	vm := standard(t, "6.1")
	if _, err := vm.QMP("stop", nil); err != nil {
		t.Fatal(err)
	}
	defer vm.QMP("cont", nil)
	tg, err := target.Open(context.Background(), "memfile:"+vm.MemFile, target.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	k, err := linux.Open(tg.Mem, linux.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tasks, err := k.TaskList()
	if err != nil || len(tasks) < 20 {
		t.Fatalf("%d tasks: %v", len(tasks), err)
	}
	tt, _ := k.Types.Struct("task_struct")
	tasksOff, _ := tt.FieldOffset("tasks")
	mem, err := os.OpenFile(vm.MemFile, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	// poke writes v at the kernel virtual address va (the 512 MiB guest's
	// file offset is its physical address) and returns the undo.
	poke := func(va, v uint64) func() {
		m, err := k.AS.Translate(va)
		if err != nil {
			t.Fatal(err)
		}
		old := make([]byte, 8)
		if _, err := mem.ReadAt(old, int64(m.Phys)); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 8)
		binary.LittleEndian.PutUint64(b, v)
		if _, err := mem.WriteAt(b, int64(m.Phys)); err != nil {
			t.Fatal(err)
		}
		return func() { mem.WriteAt(old, int64(m.Phys)) }
	}
	victim := tasks[len(tasks)/2]
	cases := []struct {
		name string
		va   uint64
		val  uint64
		want string
	}{
		{"cycle", victim + tasksOff, tasks[3] + tasksOff, "inconsistent"},
		{"pointer into nowhere", victim + tasksOff, 0xffffc90000000000 - 0x1000, "not present"},
		{"NULL", victim + tasksOff, 0, "NULL"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			undo := poke(c.va, c.val)
			defer undo()
			start := time.Now()
			out, stderr, err := vmwatchRun("ps", "-o", "json", "-t", "memfile:"+vm.MemFile)
			if err != nil {
				t.Fatalf("vmwatch ps: %v %s", err, stderr)
			}
			if !strings.Contains(string(stderr), c.want) || !strings.Contains(string(stderr), "incomplete") {
				t.Errorf("stderr %q does not report the damaged list (%q)", stderr, c.want)
			}
			if !strings.Contains(string(out), `"comm": "kthreadd"`) {
				t.Errorf("what was read before the damage is missing")
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("took %v", d)
			}
		})
	}
	// the undamaged list reads whole again
	if _, stderr, err := vmwatchRun("ps", "-t", "memfile:"+vm.MemFile); err != nil || len(stderr) > 0 {
		t.Errorf("after repair: %v %s", err, stderr)
	}
}
