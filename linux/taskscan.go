package linux

import (
	"fmt"

	"github.com/vmwatch/vmwatch/guestmem"
)

// ScannedTask is a live task structure found in physical memory.
type ScannedTask struct {
	Task Addr   `json:"task"`
	PID  int64  `json:"pid"`
	Comm string `json:"comm"`
}

// limits for the task scan
const (
	maxScannedTasks = 1 << 16
	scanChunk       = 4 << 20
)

// ScanTasks searches all of physical memory for task_structs, whatever
// lists they are on. A candidate must look like a task (a printable,
// zero-padded comm, plausible pid and tgid, kernel pointers in its task
// list node) and then prove it is alive: its task list node is
// consistent (its neighbours point back at it, or it points at itself),
// it is not dead, and its struct pid names the same pid. Freed task
// structures fail these checks.
func (k *Kernel) ScanTasks() ([]ScannedTask, error) {
	tt, err := k.Types.Struct("task_struct")
	if err != nil {
		return nil, err
	}
	off := func(f string) uint64 {
		o, e := tt.FieldOffset(f)
		if e != nil && err == nil {
			err = e
		}
		return o
	}
	commOff, pidOff, tgidOff, tasksOff := off("comm"), off("pid"), off("tgid"), off("tasks")
	if err != nil {
		return nil, err
	}
	// looksLikeTask reads these many bytes at each offset from a raw
	// candidate of tt.Size bytes; a layout that puts them elsewhere makes
	// the scan meaningless, so say so once rather than match nothing
	for _, m := range []struct {
		name string
		off  uint64
		n    uint64
	}{{"comm", commOff, taskCommLen}, {"pid", pidOff, 4}, {"tgid", tgidOff, 4}, {"tasks", tasksOff, 16}} {
		if m.off > tt.Size || tt.Size-m.off < m.n {
			return nil, fmt.Errorf("task scan: task_struct member %s at byte %d (%d bytes read) outside the struct's %d bytes", m.name, m.off, m.n, tt.Size)
		}
	}
	pob := k.pageOffsetBase()
	scan := k.Mem.Ranges()
	if ex, ok := k.Mem.(guestmem.Extents); ok {
		scan = nil
		for _, r := range k.Mem.Ranges() {
			scan = append(scan, ex.DataExtents(r)...)
		}
	}
	read := func(b []byte, phys uint64) error { _, err := k.Mem.ReadAt(b, int64(phys)); return err }
	if st, ok := k.Mem.(guestmem.Streamer); ok {
		read = st.StreamAt
	}
	kmin := KernelHalf(k.Loc.Levels)
	span := int(tt.Size)
	// one chunk and a task's worth of overlap, or less when no range is
	// that long (small guests, and the tests, need no 4 MiB buffer)
	longest := uint64(0)
	for _, r := range scan {
		longest = max(longest, r.End-r.Start&^63)
	}
	buf := make([]byte, min(uint64(scanChunk+span), longest))
	var out []ScannedTask
	seen := map[uint64]bool{}
	for _, r := range scan {
		for base := r.Start &^ 63; base < r.End; base += scanChunk {
			n := scanChunk + span
			if base+uint64(n) > r.End {
				n = int(r.End - base)
			}
			if n < span {
				break
			}
			b := buf[:n]
			if read(b, base) != nil {
				continue
			}
			for o := 0; o+span <= n && o < scanChunk; o += 64 {
				if !looksLikeTask(b[o:o+span], commOff, pidOff, tgidOff, tasksOff, kmin) {
					continue
				}
				va := base + uint64(o) + pob
				if seen[va] {
					continue
				}
				seen[va] = true
				if t, ok := k.liveTask(tt, va); ok {
					out = append(out, t)
					if len(out) > maxScannedTasks {
						return out, fmt.Errorf("more than %d tasks in memory", maxScannedTasks)
					}
				}
			}
		}
	}
	return out, nil
}

// taskCommLen is TASK_COMM_LEN, the size of task_struct.comm.
const taskCommLen = 16

// looksLikeTask is the cheap first test of a candidate task_struct b (raw
// bytes, tt.Size long) at every 64th byte of memory. The offsets come from
// the guest's BTF: every read is checked, and a read outside b is no task.
func looksLikeTask(b []byte, commOff, pidOff, tgidOff, tasksOff, kmin uint64) bool {
	c, ok := bytesAt(b, commOff, taskCommLen)
	if !ok || c[0] < 0x20 || c[0] > 0x7e {
		return false
	}
	end := false
	for _, x := range c[1:] {
		switch {
		case end && x != 0:
			return false
		case x == 0:
			end = true
		case x < 0x20 || x > 0x7e:
			return false
		}
	}
	if !end {
		return false
	}
	upid, ok1 := u32At(b, pidOff)
	utgid, ok2 := u32At(b, tgidOff)
	pid, tgid := int32(upid), int32(utgid)
	if !ok1 || !ok2 || pid <= 0 || pid > 1<<22 || tgid <= 0 || tgid > 1<<22 {
		return false
	}
	next, ok1 := u64At(b, tasksOff)
	prev, ok2 := u64At(b, tasksOff+8)
	return ok1 && ok2 && next >= kmin && prev >= kmin && next&7 == 0 && prev&7 == 0
}

// liveTask validates a candidate task structure at va.
func (k *Kernel) liveTask(tt *Type, va uint64) (ScannedTask, bool) {
	v, err := k.ReadValue(tt, va)
	if err != nil {
		return ScannedTask{}, false
	}
	f := &fields{v: v}
	// ScanTasks found tasks already, but TaskAlive comes here directly
	tasksOff, err := tt.FieldOffset("tasks")
	if err != nil {
		return ScannedTask{}, false
	}
	node := va + tasksOff
	next, prev := f.ptr("tasks.next"), f.ptr("tasks.prev")
	if !(next == node && prev == node) {
		np, err1 := k.Uint64(next + 8)
		pn, err2 := k.Uint64(prev)
		if err1 != nil || err2 != nil || np != node || pn != node {
			// a thread is not on the task list; its thread node must be consistent instead
			tn, e := tt.FieldOffset("thread_node")
			if e != nil {
				return ScannedTask{}, false
			}
			tnext, tprev := f.ptr("thread_node.next"), f.ptr("thread_node.prev")
			np, err1 = k.Uint64(tnext + 8)
			pn, err2 = k.Uint64(tprev)
			if err1 != nil || err2 != nil || np != va+tn || pn != va+tn {
				return ScannedTask{}, false
			}
		}
	}
	state := "state"
	if tt.HasField("__state") {
		state = "__state"
	}
	const taskDead = 0x80
	if f.uint("exit_state") != 0 || f.uint(state)&taskDead != 0 {
		return ScannedTask{}, false
	}
	pid := f.int("pid")
	tp := f.ptr("thread_pid")
	if tp == 0 || len(f.errs) > 0 {
		return ScannedTask{}, false
	}
	pT, err := k.Types.Struct("pid")
	if err != nil {
		return ScannedTask{}, false
	}
	numOff, err := pT.FieldOffset("numbers")
	if err != nil {
		return ScannedTask{}, false
	}
	up, err := k.Object("upid", tp+numOff)
	if err != nil {
		return ScannedTask{}, false
	}
	uf := &fields{v: up}
	if uf.int("nr") != pid {
		return ScannedTask{}, false
	}
	return ScannedTask{Task: Addr(va), PID: pid, Comm: f.str("comm")}, true
}

// TaskAlive validates a task structure at va again (see ScanTasks).
func (k *Kernel) TaskAlive(va uint64) (ScannedTask, bool) {
	tt, err := k.Types.Struct("task_struct")
	if err != nil {
		return ScannedTask{}, false
	}
	return k.liveTask(tt, va)
}
