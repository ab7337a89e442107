package e2e

import (
	"encoding/binary"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vmwatch/vmwatch/testvm"
	"golang.org/x/arch/x86/x86asm"
)

// planter writes guest memory the way a kernel exploit would write it
// from inside, with knowledge that does not come from vmwatch: symbol
// addresses from the guest's own /proc/kallsyms, the addresses of tasks,
// modules and their list neighbours (virtual and physical) and struct
// offsets from vmw_layout, a module compiled against the guest kernel's
// headers (attacks/layout), and physical addresses of the kernel image
// from the kernel's phys_base. Nothing here walks a page table or reads a
// type of vmwatch's. Test code only.
type planter struct {
	t        *testing.T
	vm       *testvm.VM
	mem      *os.File
	lowmem   uint64 // RAM below 4 GiB; QEMU's q35 puts the rest at 4 GiB
	physBase uint64
	offs     map[string]uint64
}

// obj is a kernel object vmw_layout located.
type obj struct{ va, pa uint64 }

// startKernelMap is __START_KERNEL_map, where x86-64 maps the kernel image
// (arch/x86/include/asm/page_64_types.h): pa = va - it + phys_base.
const startKernelMap = 0xffffffff80000000

func newPlanter(t *testing.T, vm *testvm.VM) *planter {
	t.Helper()
	p := openGuestMemory(t, vm)
	p.layout(nil, "") // phys_base and the offsets
	return p
}

// openGuestMemory opens the guest's memory file for physical reads and
// writes (QEMU's q35 layout), without loading vmw_layout.
func openGuestMemory(t *testing.T, vm *testvm.VM) *planter {
	t.Helper()
	if vm.MemFile == "" {
		t.Fatal("planting needs the guest's memory file")
	}
	f, err := os.OpenFile(vm.MemFile, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	p := &planter{t: t, vm: vm, mem: f, lowmem: uint64(vm.MemoryMB) << 20}
	// q35 keeps at most 2.75 GiB below 4 GiB, else 2 GiB (QEMU's pc_q35_init)
	if p.lowmem > 0xb0000000 {
		p.lowmem = 0x80000000
	}
	return p
}

var layoutRun atomic.Int64

var (
	layoutObjRE = regexp.MustCompile(`vmw_layout: obj (\S+) va=([0-9a-f]+) pa=([0-9a-f]+)`)
	layoutValRE = regexp.MustCompile(`vmw_layout: (off|val) (\S+)=([0-9a-fx]+)`)
)

// layout loads vmw_layout in the guest for these pids (and a module) and
// returns the objects it located, named like "task_tasks/123".
func (p *planter) layout(pids []int64, mod string) map[string]obj {
	p.t.Helper()
	n := layoutRun.Add(1)
	args := ""
	if len(pids) > 0 {
		var s []string
		for _, pid := range pids {
			s = append(s, strconv.FormatInt(pid, 10))
		}
		args += " pids=" + strings.Join(s, ",")
	}
	if mod != "" {
		args += fmt.Sprintf(" mod=%s modules_head=%#x", mod, p.sym("modules"))
	}
	mark := fmt.Sprintf("vmw-layout-run-%d-%d", os.Getpid(), n)
	// insmod fails by design (the module does not stay loaded)
	out, err := p.vm.Run(fmt.Sprintf("echo %s > /dev/kmsg; insmod /opt/vmw_layout.ko%s; dmesg | sed -n '/%s/,$p' | grep 'vmw_layout: '", mark, args, mark))
	if err != nil || !strings.Contains(out, "vmw_layout: end") {
		p.t.Fatalf("vmw_layout in the guest: %v\n%s", err, out)
	}
	objs := map[string]obj{}
	for _, m := range layoutObjRE.FindAllStringSubmatch(out, -1) {
		va, _ := strconv.ParseUint(m[2], 16, 64)
		pa, _ := strconv.ParseUint(m[3], 16, 64)
		if pa == 0 {
			p.t.Fatalf("vmw_layout: no physical address for %s", m[1])
		}
		objs[m[1]] = obj{va, pa}
	}
	if p.offs == nil {
		p.offs = map[string]uint64{}
		for _, m := range layoutValRE.FindAllStringSubmatch(out, -1) {
			base := 10
			if m[1] == "val" {
				base = 16
			}
			v, err := strconv.ParseUint(m[3], base, 64)
			if err != nil {
				p.t.Fatalf("vmw_layout: %s: %v", m[0], err)
			}
			if m[2] == "phys_base" {
				p.physBase = v
			} else {
				p.offs[m[2]] = v
			}
		}
		if len(p.offs) < 5 {
			p.t.Fatalf("vmw_layout gave no offsets:\n%s", out)
		}
	}
	return objs
}

// sym is a kernel symbol's address from the guest's /proc/kallsyms.
func (p *planter) sym(name string) uint64 {
	p.t.Helper()
	out, err := p.vm.Run(fmt.Sprintf("awk '$3 == %q && NF == 3 {print $1; exit}' /proc/kallsyms", name))
	if err != nil {
		p.t.Fatal(err)
	}
	a, err := strconv.ParseUint(strings.TrimSpace(out), 16, 64)
	if err != nil || a == 0 {
		p.t.Fatalf("symbol %s not in the guest's /proc/kallsyms: %q", name, out)
	}
	return a
}

// imagePA is the physical address of a kernel image address.
func (p *planter) imagePA(va uint64) uint64 { return va - startKernelMap + p.physBase }

// fileOff is where a physical address lies in the memory file.
func (p *planter) fileOff(pa uint64) int64 {
	if pa >= 1<<32 {
		return int64(pa - 1<<32 + p.lowmem)
	}
	return int64(pa)
}

func (p *planter) read(pa uint64, n int) []byte {
	p.t.Helper()
	b := make([]byte, n)
	if _, err := p.mem.ReadAt(b, p.fileOff(pa)); err != nil {
		p.t.Fatal(err)
	}
	return b
}

// write stores b at a physical address and returns the undo.
func (p *planter) write(pa uint64, b []byte) func() {
	p.t.Helper()
	old := p.read(pa, len(b))
	if _, err := p.mem.WriteAt(b, p.fileOff(pa)); err != nil {
		p.t.Fatal(err)
	}
	return func() { p.mem.WriteAt(old, p.fileOff(pa)) }
}

func (p *planter) write64(pa, v uint64) func() {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, v)
	return p.write(pa, b)
}

func (p *planter) off(name string) uint64 {
	v, ok := p.offs[name]
	if !ok {
		p.t.Fatalf("vmw_layout gave no offset %s", name)
	}
	return v
}

// unlink removes a list node (as list_del_init does) given it and its
// neighbours, and returns the undo.
func (p *planter) unlink(node, next, prev obj) func() {
	nextOff, prevOff := p.off("list_head.next"), p.off("list_head.prev")
	undo := []func(){
		p.write64(prev.pa+nextOff, next.va), p.write64(next.pa+prevOff, prev.va),
		p.write64(node.pa+nextOff, node.va), p.write64(node.pa+prevOff, node.va),
	}
	return func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
}

// paused runs fn with the guest's vCPUs stopped.
func (p *planter) paused(fn func()) {
	if _, err := p.vm.QMP("stop", nil); err != nil {
		p.t.Fatal(err)
	}
	defer p.vm.QMP("cont", nil)
	fn()
}

func (p *planter) need(objs map[string]obj, name string) obj {
	o, ok := objs[name]
	if !ok {
		p.t.Fatalf("vmw_layout did not locate %s (have %v)", name, objs)
	}
	return o
}

// firstPlainInsn returns the address of the first instruction of a
// kernel function that no patch mechanism owns: after endbr64 and the
// 5-byte nop that compilers put at every traceable function's start for
// ftrace (-mfentry), and after any further nop or jump a jump label
// would own. It decodes the guest's bytes with x86asm, not with vmwatch.
func (p *planter) firstPlainInsn(fn uint64) uint64 {
	p.t.Helper()
	code := p.read(p.imagePA(fn), 64)
	pc := 0
	if binary.LittleEndian.Uint32(code) == 0xfa1e0ff3 { // endbr64
		pc = 4
	}
	for pc < 48 {
		in, err := x86asm.Decode(code[pc:], 64)
		if err != nil {
			p.t.Fatalf("decode %#x+%d: %v", fn, pc, err)
		}
		// the function's own code begins after endbr64 and the fentry
		// nop: an inline hook overwrites it from there (a 1-byte push
		// included: the hook need not end on an instruction boundary)
		if in.Op != x86asm.NOP && in.Op != x86asm.JMP {
			return fn + uint64(pc)
		}
		pc += in.Len
	}
	p.t.Fatalf("no plain instruction in the first 48 bytes of %#x", fn)
	return 0
}

func rel32(op byte, at, to uint64) []byte {
	b := []byte{op, 0, 0, 0, 0}
	binary.LittleEndian.PutUint32(b[1:], uint32(int32(int64(to)-int64(at+5))))
	return b
}
