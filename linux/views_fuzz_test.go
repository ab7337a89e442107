package linux

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf/btf"
	"github.com/vmwatch/vmwatch/guestmem"
	"github.com/vmwatch/vmwatch/x86"
)

// The views fuzzed here take two hostile inputs: the guest's type layouts
// (its BTF) and its memory. fuzzLayouts builds a small BTF in the shape of
// a real kernel's (the structs and members the views read, at offsets of
// its own choosing) and lets the fuzzer rewrite its sizes, offsets,
// bitfields and array lengths; fuzzKernel maps a few pages of fuzzed memory
// where the views look for their objects.

// fuzzLayout is the base layout, as cilium/ebpf types.
type fuzzLayout struct {
	roots   []btf.Type
	structs []*btf.Struct
	unions  []*btf.Union
	arrays  []*btf.Array
}

// newFuzzLayout returns the base layout: every type the fuzzed views read,
// consistent with itself (members inside their structs).
func newFuzzLayout() *fuzzLayout {
	l := &fuzzLayout{}
	u8 := &btf.Int{Name: "unsigned char", Size: 1}
	u16 := &btf.Int{Name: "unsigned short", Size: 2}
	u32 := &btf.Int{Name: "unsigned int", Size: 4}
	s32 := &btf.Int{Name: "int", Size: 4, Encoding: btf.Signed}
	u64 := &btf.Int{Name: "long unsigned int", Size: 8}
	char := &btf.Int{Name: "char", Size: 1, Encoding: btf.Char}
	arr := func(t btf.Type, n uint32) *btf.Array {
		a := &btf.Array{Type: t, Nelems: n, Index: u32}
		l.arrays = append(l.arrays, a)
		return a
	}
	ptr := func(t btf.Type) *btf.Pointer { return &btf.Pointer{Target: t} }
	// st declares a struct whose members are given as name, type, byte
	// offset (bit offset for bitfields, given with a bitfield size)
	type mem struct {
		name string
		typ  btf.Type
		off  uint32 // bytes, or bits when bits != 0
		bits uint32
	}
	mk := func(ms []mem) []btf.Member {
		out := make([]btf.Member, len(ms))
		for i, m := range ms {
			out[i] = btf.Member{Name: m.name, Type: m.typ, Offset: btf.Bits(m.off * 8)}
			if m.bits != 0 {
				out[i].Offset, out[i].BitfieldSize = btf.Bits(m.off), btf.Bits(m.bits)
			}
		}
		return out
	}
	st := func(name string, size uint32, ms ...mem) *btf.Struct {
		s := &btf.Struct{Name: name, Size: size, Members: mk(ms)}
		l.structs = append(l.structs, s)
		return s
	}
	un := func(name string, size uint32, ms ...mem) *btf.Union {
		u := &btf.Union{Name: name, Size: size, Members: mk(ms)}
		l.unions = append(l.unions, u)
		return u
	}

	lh := st("list_head", 16)
	lh.Members = mk([]mem{{"next", ptr(lh), 0, 0}, {"prev", ptr(lh), 8, 0}})
	kuid := st("kuid_t", 4, mem{"val", u32, 0, 0})
	cred := st("cred", 16, mem{"usage", u32, 0, 0}, mem{"uid", kuid, 4, 0}, mem{"gid", kuid, 8, 0}, mem{"euid", kuid, 12, 0})
	upid := st("upid", 16, mem{"nr", s32, 0, 0}, mem{"ns", ptr(u64), 8, 0})
	pid := st("pid", 24, mem{"count", u32, 0, 0}, mem{"level", u32, 4, 0}, mem{"numbers", arr(upid, 1), 8, 0})
	signal := st("signal_struct", 16, mem{"thread_head", lh, 0, 0})
	inode := st("inode", 16, mem{"i_mode", u16, 0, 0}, mem{"i_ino", u64, 8, 0})
	file := st("file", 24, mem{"f_op", ptr(u64), 0, 0}, mem{"private_data", ptr(u64), 8, 0}, mem{"f_inode", ptr(inode), 16, 0})
	fdt := st("fdtable", 16, mem{"max_fds", u32, 0, 0}, mem{"fd", ptr(ptr(file)), 8, 0})
	files := st("files_struct", 16, mem{"count", u32, 0, 0}, mem{"fdt", ptr(fdt), 8, 0})
	skc := st("sock_common", 48, mem{"skc_daddr", u32, 0, 0}, mem{"skc_rcv_saddr", u32, 4, 0},
		mem{"skc_dport", u16, 8, 0}, mem{"skc_num", u16, 10, 0}, mem{"skc_family", u16, 12, 0}, mem{"skc_state", u8, 14, 0},
		mem{"skc_v6_daddr", arr(u8, 16), 16, 0}, mem{"skc_v6_rcv_saddr", arr(u8, 16), 32, 0})
	sock := st("sock", 56, mem{"__sk_common", skc, 0, 0}, mem{"sk_protocol", u16, 48, 0}, mem{"sk_type", u16, 50, 0})
	st("socket", 16, mem{"state", u32, 0, 0}, mem{"type", u16, 4, 0}, mem{"sk", ptr(sock), 8, 0})
	// mount namespaces and mounts (fs/mount.h, the list of Linux 6.1),
	// dentries, super blocks, network namespaces and devices
	nsc := st("ns_common", 4, mem{"inum", u32, 0, 0})
	qstr := st("qstr", 16, mem{"hash_len", u64, 0, 0}, mem{"name", ptr(char), 8, 0})
	hbl := st("hlist_bl_node", 16, mem{"next", ptr(u64), 0, 0}, mem{"pprev", ptr(u64), 8, 0})
	dentry := st("dentry", 56)
	dentry.Members = mk([]mem{{"d_hash", hbl, 0, 0}, {"d_parent", ptr(dentry), 16, 0}, {"d_name", qstr, 24, 0},
		{"d_op", ptr(u64), 40, 0}, {"d_inode", ptr(inode), 48, 0}})
	fstype := st("file_system_type", 8, mem{"name", ptr(char), 0, 0})
	sb := st("super_block", 32, mem{"s_dev", u32, 0, 0}, mem{"s_flags", u64, 8, 0},
		mem{"s_type", ptr(fstype), 16, 0}, mem{"s_subtype", ptr(char), 24, 0})
	vfsmount := st("vfsmount", 24, mem{"mnt_root", ptr(dentry), 0, 0}, mem{"mnt_sb", ptr(sb), 8, 0}, mem{"mnt_flags", s32, 16, 0})
	mount := st("mount", 80)
	mount.Members = mk([]mem{{"mnt_parent", ptr(mount), 0, 0}, {"mnt_mountpoint", ptr(dentry), 8, 0}, {"mnt", vfsmount, 16, 0},
		{"mnt_list", lh, 40, 0}, {"mnt_devname", ptr(char), 56, 0}, {"mnt_id", s32, 64, 0}, {"mnt_group_id", s32, 68, 0},
		{"mnt_master", ptr(mount), 72, 0}})
	mntns := st("mnt_namespace", 32, mem{"ns", nsc, 0, 0}, mem{"root", ptr(mount), 8, 0}, mem{"list", lh, 16, 0})
	path := st("path", 16, mem{"mnt", ptr(vfsmount), 0, 0}, mem{"dentry", ptr(dentry), 8, 0})
	fs := st("fs_struct", 16, mem{"root", path, 0, 0})
	inIfa := st("in_ifaddr", 32)
	inIfa.Members = mk([]mem{{"ifa_next", ptr(inIfa), 0, 0}, {"ifa_local", u32, 8, 0}, {"ifa_prefixlen", u8, 12, 0},
		{"ifa_scope", u8, 13, 0}, {"ifa_label", arr(char, 16), 16, 0}})
	inDev := st("in_device", 8, mem{"ifa_list", ptr(inIfa), 0, 0})
	in6Dev := st("inet6_dev", 16, mem{"addr_list", lh, 0, 0})
	st("inet6_ifaddr", 40, mem{"addr", arr(u8, 16), 0, 0}, mem{"prefix_len", u32, 16, 0}, mem{"scope", s32, 20, 0}, mem{"if_list", lh, 24, 0})
	// /proc's entries and their operations (fs/proc/internal.h), and
	// tracepoints; fn is a function pointer (a prototype of no parameters,
	// so the blob's walk below reads it as 12 bytes)
	fn := ptr(&btf.FuncProto{Return: s32})
	fptrs := func(name string, ms ...string) *btf.Struct {
		var mm []mem
		for i, m := range ms {
			mm = append(mm, mem{m, fn, uint32(8 * i), 0})
		}
		return st(name, uint32(8*len(ms)), mm...)
	}
	rbNode := st("rb_node", 24, mem{"__rb_parent_color", u64, 0, 0}, mem{"rb_right", ptr(u64), 8, 0}, mem{"rb_left", ptr(u64), 16, 0})
	rbRoot := st("rb_root", 8, mem{"rb_node", ptr(rbNode), 0, 0})
	pde := st("proc_dir_entry", 80)
	pde.Members = mk([]mem{{"proc_iops", ptr(fptrs("inode_operations", "lookup")), 0, 0},
		{"", un("", 8, mem{"proc_ops", ptr(fptrs("proc_ops", "proc_open", "proc_read")), 0, 0},
			mem{"proc_dir_ops", ptr(fptrs("file_operations", "iterate_shared", "read")), 0, 0}), 8, 0},
		{"", un("", 8, mem{"seq_ops", ptr(fptrs("seq_operations", "start", "stop", "next", "show")), 0, 0},
			mem{"single_show", fn, 0, 0}), 16, 0},
		{"write", fn, 24, 0}, {"subdir", rbRoot, 32, 0}, {"subdir_node", rbNode, 40, 0},
		{"name", ptr(char), 64, 0}, {"mode", u16, 72, 0}})
	tpFunc := st("tracepoint_func", 24, mem{"func", ptr(u64), 0, 0}, mem{"data", ptr(u64), 8, 0}, mem{"prio", s32, 16, 0})
	sck := st("static_call_key", 8, mem{"func", ptr(u64), 0, 0})
	st("tracepoint", 40, mem{"name", ptr(char), 0, 0}, mem{"static_call_key", ptr(sck), 8, 0},
		mem{"regfunc", fn, 16, 0}, mem{"unregfunc", fn, 24, 0}, mem{"funcs", ptr(tpFunc), 32, 0})
	// LSM hooks as Linux 6.1 lists them: two hooks, entries with their LSM
	hn := st("hlist_node", 16)
	hn.Members = mk([]mem{{"next", ptr(hn), 0, 0}, {"pprev", ptr(ptr(hn)), 8, 0}})
	hh := st("hlist_head", 8, mem{"first", ptr(hn), 0, 0})
	st("security_hook_heads", 16, mem{"file_open", hh, 0, 0}, mem{"task_kill", hh, 8, 0})
	st("security_hook_list", 40, mem{"list", hn, 0, 0}, mem{"head", ptr(hh), 16, 0}, mem{"hook", fn, 24, 0}, mem{"lsm", ptr(char), 32, 0})
	// perf events: one CPU's context with one event
	st("perf_event", 24, mem{"event_entry", lh, 0, 0}, mem{"overflow_handler", fn, 16, 0})
	pctx := st("perf_event_context", 16, mem{"event_list", lh, 0, 0})
	st("perf_cpu_context", 16, mem{"ctx", pctx, 0, 0})
	netT := st("net", 48, mem{"ns", nsc, 0, 0}, mem{"list", lh, 8, 0}, mem{"dev_base_head", lh, 24, 0}, mem{"proc_net", ptr(pde), 40, 0})
	st("net_device", 88, mem{"name", arr(char, 16), 0, 0}, mem{"dev_list", lh, 16, 0}, mem{"ifindex", s32, 32, 0},
		mem{"flags", u32, 36, 0}, mem{"mtu", u32, 40, 0}, mem{"type", u16, 44, 0}, mem{"addr_len", u8, 46, 0},
		mem{"operstate", u8, 47, 0}, mem{"gflags", u16, 48, 0}, mem{"promiscuity", u32, 52, 0}, mem{"state", u64, 56, 0},
		mem{"dev_addr", ptr(u8), 64, 0}, mem{"ip_ptr", ptr(inDev), 72, 0}, mem{"ip6_ptr", ptr(in6Dev), 80, 0})
	nsproxy := st("nsproxy", 16, mem{"mnt_ns", ptr(mntns), 0, 0}, mem{"net_ns", ptr(netT), 8, 0})
	res := st("resource", 56)
	res.Members = mk([]mem{{"start", u64, 0, 0}, {"end", u64, 8, 0}, {"name", ptr(char), 16, 0}, {"flags", u64, 24, 0},
		{"parent", ptr(res), 32, 0}, {"sibling", ptr(res), 40, 0}, {"child", ptr(res), 48, 0}})

	task := st("task_struct", 168)
	task.Members = mk([]mem{
		{"__state", u32, 0, 0}, {"flags", u32, 4, 0}, {"comm", arr(char, 16), 16, 0},
		{"pid", s32, 32, 0}, {"tgid", s32, 36, 0}, {"exit_state", s32, 40, 0},
		{"prio", u8, 44 * 8, 3}, {"policy", u8, 44*8 + 3, 5},
		{"tasks", lh, 48, 0}, {"thread_node", lh, 64, 0},
		{"real_parent", ptr(task), 80, 0}, {"parent", ptr(task), 88, 0}, {"real_cred", ptr(cred), 96, 0},
		{"mm", ptr(u64), 104, 0}, {"thread_pid", ptr(pid), 112, 0}, {"signal", ptr(signal), 120, 0},
		{"files", ptr(files), 128, 0}, {"start_boottime", u64, 136, 0}, {"group_leader", ptr(task), 144, 0},
		{"nsproxy", ptr(nsproxy), 152, 0}, {"fs", ptr(fs), 160, 0},
	})

	// the printk ring (kernel/printk/printk_ringbuffer.h)
	lpos := st("prb_data_blk_lpos", 16, mem{"begin", u64, 0, 0}, mem{"next", u64, 8, 0})
	desc := st("prb_desc", 24, mem{"state_var", u64, 0, 0}, mem{"text_blk_lpos", lpos, 8, 0})
	info := st("printk_info", 24, mem{"seq", u64, 0, 0}, mem{"ts_nsec", u64, 8, 0}, mem{"text_len", u16, 16, 0},
		mem{"facility", u8, 18, 0}, mem{"flags", u8, 19 * 8, 5}, mem{"level", u8, 19*8 + 5, 3}, mem{"caller_id", u32, 20, 0})
	descRing := st("prb_desc_ring", 40, mem{"count_bits", u32, 0, 0}, mem{"descs", ptr(desc), 8, 0},
		mem{"infos", ptr(info), 16, 0}, mem{"head_id", u64, 24, 0}, mem{"tail_id", u64, 32, 0})
	dataRing := st("prb_data_ring", 32, mem{"size_bits", u32, 0, 0}, mem{"data", ptr(char), 8, 0},
		mem{"head_lpos", u64, 16, 0}, mem{"tail_lpos", u64, 24, 0})
	st("printk_ringbuffer", 80, mem{"desc_ring", descRing, 0, 0}, mem{"text_data_ring", dataRing, 40, 0}, mem{"fail", u64, 72, 0})
	descState := &btf.Enum{Name: "desc_state", Size: 4, Signed: true, Values: []btf.EnumValue{
		{Name: "desc_miss", Value: ^uint64(0)}, {Name: "desc_reserved", Value: 0}, {Name: "desc_committed", Value: 1},
		{Name: "desc_finalized", Value: 2}, {Name: "desc_reusable", Value: 3}}}

	// the maple tree (include/linux/maple_tree.h), with fewer slots
	r64 := st("maple_range_64", 128, mem{"parent", ptr(u64), 0, 0}, mem{"pivot", arr(u64, 7), 8, 0}, mem{"slot", arr(ptr(u64), 8), 64, 0})
	a64 := st("maple_arange_64", 128, mem{"parent", ptr(u64), 0, 0}, mem{"pivot", arr(u64, 4), 8, 0},
		mem{"slot", arr(ptr(u64), 5), 40, 0}, mem{"gap", arr(u64, 5), 80, 0})
	node := st("maple_node", 128, mem{"", un("", 128, mem{"mr64", r64, 0, 0}, mem{"ma64", a64, 0, 0}), 0, 0})
	mapleType := &btf.Enum{Name: "maple_type", Size: 4, Values: []btf.EnumValue{
		{Name: "maple_dense", Value: 0}, {Name: "maple_leaf_64", Value: 1}, {Name: "maple_range_64", Value: 2}, {Name: "maple_arange_64", Value: 3}}}

	l.roots = []btf.Type{task, sock, node, descState, mapleType}
	for _, s := range l.structs {
		l.roots = append(l.roots, s)
	}
	return l
}

// fuzzBase is the base layout marshalled once, and where in the blob the
// fuzzer's edits land: the fuzzer edits the raw BTF, as a hostile guest
// would, at the words that matter (editing the cilium/ebpf types and
// marshalling each input instead would cost most of the time per input).
type fuzzBase struct {
	blob    []byte
	sizes   []fuzzKnob // struct and union sizes
	offsets []fuzzKnob // member offsets (bitfield size << 24 | bit offset)
	lens    []fuzzKnob // array lengths
	mtypes  []fuzzKnob // member type IDs
	ntypes  int
}

// fuzzKnob is a little-endian word of the blob and what it describes.
type fuzzKnob struct {
	at   int
	name string // "struct" or "struct.member"
}

var fuzzBaseOnce = sync.OnceValue(func() *fuzzBase {
	b, err := btf.NewBuilder(newFuzzLayout().roots, nil)
	if err != nil {
		panic(err)
	}
	blob, err := b.Marshal(nil, nil)
	if err != nil {
		panic(err)
	}
	fb := &fuzzBase{blob: blob}
	le := binary.LittleEndian
	hdr := int(le.Uint32(blob[4:]))
	types := blob[hdr+int(le.Uint32(blob[8:])):][:le.Uint32(blob[12:])]
	strs := blob[hdr+int(le.Uint32(blob[16:])):][:le.Uint32(blob[20:])]
	name := func(off uint32) string { return string(strs[off:][:bytes.IndexByte(strs[off:], 0)]) }
	base := hdr + int(le.Uint32(blob[8:]))
	for p := 0; p+12 <= len(types); fb.ntypes++ {
		info := le.Uint32(types[p+4:])
		kind, vlen := info>>24&0x1f, int(info&0xffff)
		tname := name(le.Uint32(types[p:]))
		switch kind {
		case btfKindStruct, btfKindUnion:
			// kind_flag: member offsets carry bitfield sizes, so the
			// fuzzer can make any member a bitfield (for members that
			// are not, the two encodings agree)
			le.PutUint32(types[p+4:], info|1<<31)
			fb.sizes = append(fb.sizes, fuzzKnob{base + p + 8, tname})
			for i := 0; i < vlen; i++ {
				m := p + 12 + 12*i
				mname := tname + "." + name(le.Uint32(types[m:]))
				fb.offsets = append(fb.offsets, fuzzKnob{base + m + 8, mname})
				fb.mtypes = append(fb.mtypes, fuzzKnob{base + m + 4, mname})
			}
			p += 12 + 12*vlen
		case btfKindArray:
			fb.lens = append(fb.lens, fuzzKnob{base + p + 20, ""})
			p += 24
		case btfKindInt:
			p += 16
		case btfKindEnum:
			p += 12 + 8*vlen
		default: // pointers
			p += 12
		}
	}
	return fb
})

// fuzzEdit is one edit of the base blob: an operation, an index into the
// knobs it turns and a 16-bit value; fuzz inputs are lists of 4-byte edits.
func fuzzEdit(op byte, i int, v uint16) []byte { return []byte{op, byte(i), byte(v), byte(v >> 8)} }

// edit applies the fuzzer's edits to a copy of the base blob.
func (fb *fuzzBase) edit(ops []byte) []byte {
	blob := bytes.Clone(fb.blob)
	le := binary.LittleEndian
	for ; len(ops) >= 4; ops = ops[4:] {
		i, v := int(ops[1]), uint32(le.Uint16(ops[2:]))
		word := func(k []fuzzKnob) int { return k[i%len(k)].at }
		switch ops[0] % 8 {
		case 0: // a member moves (bytes)
			at := word(fb.offsets)
			le.PutUint32(blob[at:], le.Uint32(blob[at:])&0xff000000|v*8)
		case 1: // a member moves (bits)
			at := word(fb.offsets)
			le.PutUint32(blob[at:], le.Uint32(blob[at:])&0xff000000|v)
		case 2: // a member becomes a bitfield, or stops being one
			at := word(fb.offsets)
			le.PutUint32(blob[at:], le.Uint32(blob[at:])&0xffffff|(v%80)<<24)
		case 3: // a struct changes size
			le.PutUint32(blob[word(fb.sizes):], v)
		case 4: // an array changes length
			le.PutUint32(blob[word(fb.lens):], v)
		case 5: // an array becomes huge
			le.PutUint32(blob[word(fb.lens):], v<<16)
		case 6: // a struct becomes huge
			le.PutUint32(blob[word(fb.sizes):], v<<16)
		case 7: // a member changes type (type confusion: comm a pointer, ...)
			le.PutUint32(blob[word(fb.mtypes):], 1+v%uint32(fb.ntypes))
		}
	}
	return blob
}

// knob finds the index of the named knob (for seeds).
func knob(ks []fuzzKnob, name string) int {
	for i, k := range ks {
		if k.name == name {
			return i
		}
	}
	panic("no knob " + name)
}

// fuzzTypes turns the layout input into Types: the base layout with the
// input's edits. (Raw hostile BTF is FuzzFindBTF's: here it would spend
// the fuzzer's time in the BTF parser rather than in the views.)
func fuzzTypes(layout []byte) (Types, bool) {
	blob := fuzzBaseOnce().edit(layout)
	spec, err := btf.LoadSpecFromReader(bytes.NewReader(blob))
	if err != nil {
		return nil, false
	}
	return newBTFTypes(spec, blob, "fuzz"), true
}

// The fuzzed guest: page tables at physical 0-16 KiB map the direct map
// (page_offset_base onwards) over all of its RAM with 4 KiB pages; the
// fuzzed memory follows them. The tables are not part of the fuzzed
// bytes, so translation stays cheap and bounded.
const (
	fuzzPOB      = 0xffff888000000000
	fuzzDataPhys = 0x4000
	fuzzDataSize = 16 << 10
	fuzzData     = fuzzPOB + fuzzDataPhys // virtual address of the fuzzed bytes
)

// where the views find their roots in the fuzzed memory
const (
	fuzzInitTask  = fuzzData + 0x000 // init_task
	fuzzPrb       = fuzzData + 0x100 // prb, a pointer to the ring
	fuzzMapleRoot = fuzzData + 0x108 // a maple tree root
	fuzzSockOps   = fuzzData + 0x110 // socket_file_ops
	fuzzNetNSList = fuzzData + 0x118 // net_namespace_list
	fuzzRBRoot    = fuzzData + 0x128 // a red-black tree's top node
	fuzzIomem     = fuzzData + 0x130 // iomem_resource
	fuzzProcRoot  = fuzzData + 0x9e0 // proc_root
	fuzzSeqProcs  = fuzzData + 0xb98 // proc_seq_ops
	fuzzTP        = fuzzData + 0xae0 // __tracepoint_sched
	fuzzLSMHeads  = fuzzData + 0xb40 // security_hook_heads
	fuzzPerCPU    = fuzzData + 0xc00 // __per_cpu_offset: one CPU, offset 0
	fuzzPerfCPU   = fuzzData + 0xc10 // perf_cpu_context
	fuzzObject    = fuzzData + 0x200 // a task_struct for the typed-value checks
)

func fuzzKernel(t testing.TB, types Types, data []byte) *Kernel {
	ram := make([]byte, fuzzDataPhys+fuzzDataSize)
	copy(ram[fuzzDataPhys:], data)
	le := binary.LittleEndian
	const flags = 0x63 // present, writable, accessed, dirty
	le.PutUint64(ram[0x000+int(fuzzPOB>>39&511)*8:], 0x1000|flags)
	le.PutUint64(ram[0x1000:], 0x2000|flags)
	le.PutUint64(ram[0x2000:], 0x3000|flags)
	for p := 0; p < len(ram)/0x1000; p++ {
		le.PutUint64(ram[0x3000+p*8:], uint64(p)<<12|flags)
	}
	mem, err := guestmem.NewSegmentMap("fuzz", []guestmem.Segment{{Range: guestmem.Range{Start: 0, End: uint64(len(ram))}, Data: ram}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	as, err := x86.NewAddressSpace(mem, 0, 4)
	if err != nil {
		t.Fatal(err)
	}
	syms := NewSymbols("fuzz", []Symbol{
		{Addr: fuzzInitTask, Name: "init_task", Type: 'D'},
		{Addr: fuzzPrb, Name: "prb", Type: 'D'},
		{Addr: fuzzSockOps, Name: "socket_file_ops", Type: 'R'},
		{Addr: fuzzNetNSList, Name: "net_namespace_list", Type: 'D'},
		{Addr: fuzzIomem, Name: "iomem_resource", Type: 'D'},
		{Addr: fuzzProcRoot, Name: "proc_root", Type: 'D'},
		{Addr: fuzzSeqProcs, Name: "proc_seq_ops", Type: 'r'},
		{Addr: fuzzTP, Name: "__tracepoint_sched", Type: 'D'},
		{Addr: fuzzLSMHeads, Name: "security_hook_heads", Type: 'd'},
		{Addr: fuzzPerCPU, Name: "__per_cpu_offset", Type: 'D'},
		{Addr: fuzzPerfCPU, Name: "perf_cpu_context", Type: 'D'},
	})
	return &Kernel{Mem: mem, AS: as, Loc: Location{Levels: 4}, Syms: syms, Types: types, log: slog.New(slog.DiscardHandler)}
}

// driveViews runs every view over the fuzzed kernel. Errors are expected
// (most inputs are nonsense); panics and endless walks are the bugs.
func driveViews(k *Kernel) {
	if v, err := k.Object("task_struct", fuzzObject); err == nil {
		f := &fields{v: v}
		f.int("pid")
		f.uint("prio")
		f.uint("policy")
		f.str("comm")
		f.ptr("tasks.next")
		if c, err := v.Field("comm"); err == nil {
			for i := 0; i < 20; i++ {
				c.Index(i)
			}
		}
		for _, p := range []string{"real_cred", "thread_pid", "parent", "files", "signal"} {
			if pv, err := v.Field(p); err == nil {
				if d, err := pv.Deref(); err == nil {
					d.Uint()
					d.Int()
					if len(d.Type.Members) > 0 {
						d.Field(d.Type.Members[0].Name)
					}
				}
			}
		}
	}
	k.WalkList(fuzzInitTask+48, 1000, func(uint64) error { return nil })
	k.Processes(PSOptions{Threads: true})
	if root, err := k.Uint64(fuzzMapleRoot); err == nil {
		k.mapleEntries(root)
	}
	k.Dmesg()
	k.ScanTasks()
	k.TaskAlive(fuzzInitTask)
	k.Sockets()
	k.ftraceSites()
	k.Mounts(nil)
	k.Mounts([]int64{42})
	k.Interfaces()
	k.Ptraces()
	k.Resources(false)
	k.NetfilterHooks()
	k.Notifiers()
	k.TTYOps()
	k.ProcOps()
	k.Tracepoints()
	k.LSMHooks()
	k.PerfEvents()
	k.WriteKernelCore(&memCore{})
	if top, err := k.Uint64(fuzzRBRoot); err == nil {
		k.rbInOrder(top, 1000)
	}
	if tasks, _ := k.ProcessTasks(nil); len(tasks) > 0 {
		for _, t := range tasks {
			k.Maps(t)
			k.FDs(t)
			k.Caps(t)
			k.Libraries(t)
			k.BashHistory(t)
			k.WriteCore(t, &memCore{}, 1<<20)
		}
	}
}

// fuzzDeadline bounds one input: every walk is bounded, so even the worst
// memory finishes far sooner (typical inputs take well under 1 ms).
const fuzzDeadline = 5 * time.Second

// badTaskLayout is issue item 9: task_struct of 8 bytes whose comm lies at
// bit 1024. It made looksLikeTask slice past its candidate and panic.
func badTaskLayout() []byte {
	fb := fuzzBaseOnce()
	return append(fuzzEdit(3, knob(fb.sizes, "task_struct"), 8), // size 8
		fuzzEdit(1, knob(fb.offsets, "task_struct.comm"), 1024)...) // at bit 1024
}

// fuzzTaskMemory puts a plausible task at init_task and at the typed-value
// object, so the fuzzer starts from memory the views accept.
func fuzzTaskMemory() []byte {
	// small, so that the fuzzer's minimizer has little to cut; the rest of
	// the mapped window reads as zeros
	m := make([]byte, 0xc50)
	le := binary.LittleEndian
	// two tasks on the task list, each with its cred and struct pid
	task := func(at, other uint64, pid int32, comm string, pidStruct uint64) {
		o := at - fuzzData
		copy(m[o+16:], comm)
		le.PutUint32(m[o+32:], uint32(pid))
		le.PutUint32(m[o+36:], uint32(pid))
		le.PutUint64(m[o+48:], other+48) // tasks.next
		le.PutUint64(m[o+56:], other+48) // tasks.prev
		le.PutUint64(m[o+96:], fuzzData+0x2c0)
		le.PutUint64(m[o+112:], pidStruct)
		le.PutUint32(m[pidStruct-fuzzData+8:], uint32(pid)) // numbers[0].nr
	}
	task(fuzzInitTask, fuzzObject, 1, "init", fuzzData+0x300)
	task(fuzzObject, fuzzInitTask, 42, "sshd", fuzzData+0x2e0)
	le.PutUint32(m[0x2c0+4:], 1000) // cred uid
	// the printk ring: 4 descriptors, a 256-byte text ring
	le.PutUint64(m[0x100:], fuzzData+0x340)    // prb
	le.PutUint32(m[0x340:], 2)                 // count_bits
	le.PutUint64(m[0x340+8:], fuzzData+0x3a0)  // descs
	le.PutUint64(m[0x340+16:], fuzzData+0x400) // infos
	le.PutUint32(m[0x340+40:], 8)              // size_bits
	le.PutUint64(m[0x340+48:], fuzzData+0x500) // data
	le.PutUint64(m[0x3a0:], 1<<62)             // desc 0: committed, id 0
	le.PutUint64(m[0x3a0+16:], 16)             // its text_blk_lpos.next
	le.PutUint16(m[0x400+16:], 5)              // text_len
	copy(m[0x500+8:], "hello")                 // after the block's id
	// a maple tree of one leaf node (nodes are 256-byte aligned): type maple_leaf_64 (1 << 3), marked
	// as a node (2)
	le.PutUint64(m[0x108:], fuzzData+0x600|0x0a)
	le.PutUint64(m[0x600+8:], 0xffffffff)       // pivot 0
	le.PutUint64(m[0x600+64:], fuzzData+0x3000) // slot 0
	// sshd's namespaces: a mount namespace of one mount (rootfs on its own
	// root dentry) and a network namespace with lo and its two addresses
	o := uint64(fuzzObject - fuzzData)
	le.PutUint64(m[o+152:], fuzzData+0x680) // nsproxy
	le.PutUint64(m[o+160:], fuzzData+0x690) // fs
	le.PutUint64(m[0x680:], fuzzData+0x6a0) // mnt_ns
	le.PutUint64(m[0x688:], fuzzData+0x700) // net_ns
	le.PutUint64(m[0x690:], fuzzData+0x780+16)
	le.PutUint64(m[0x698:], fuzzData+0x800)
	le.PutUint32(m[0x6a0:], 0xf0000001)           // mnt ns inum
	le.PutUint64(m[0x6a0+8:], fuzzData+0x780)     // root
	le.PutUint64(m[0x6a0+16:], fuzzData+0x780+40) // list.next
	le.PutUint64(m[0x6a0+24:], fuzzData+0x780+40) // list.prev
	le.PutUint64(m[0x780:], fuzzData+0x780)       // mnt_parent: itself
	le.PutUint64(m[0x780+8:], fuzzData+0x800)     // mnt_mountpoint
	le.PutUint64(m[0x780+16:], fuzzData+0x800)    // mnt.mnt_root
	le.PutUint64(m[0x780+24:], fuzzData+0x840)    // mnt.mnt_sb
	le.PutUint32(m[0x780+32:], 0x20)              // relatime
	le.PutUint64(m[0x780+40:], fuzzData+0x6a0+16) // mnt_list.next
	le.PutUint64(m[0x780+48:], fuzzData+0x6a0+16) // mnt_list.prev
	le.PutUint64(m[0x780+56:], fuzzData+0x860)    // mnt_devname
	le.PutUint32(m[0x780+64:], 1)                 // mnt_id
	le.PutUint64(m[0x800+16:], fuzzData+0x800)    // d_parent: itself
	le.PutUint32(m[0x840:], 2)                    // s_dev 0:2
	le.PutUint64(m[0x840+16:], fuzzData+0x870)    // s_type
	copy(m[0x860:], "rootfs")                     // devname and type name
	le.PutUint64(m[0x870:], fuzzData+0x860)       // file_system_type.name
	le.PutUint64(m[0x118:], fuzzData+0x700+8)     // net_namespace_list.next
	le.PutUint64(m[0x120:], fuzzData+0x700+8)     // .prev
	le.PutUint32(m[0x700:], 0xf0000002)           // net ns inum
	le.PutUint64(m[0x700+8:], fuzzNetNSList)      // list
	le.PutUint64(m[0x700+16:], fuzzNetNSList)     //
	le.PutUint64(m[0x700+24:], fuzzData+0x8a0+16) // dev_base_head
	le.PutUint64(m[0x700+32:], fuzzData+0x8a0+16) //
	copy(m[0x8a0:], "lo")                         // name
	le.PutUint64(m[0x8a0+16:], fuzzData+0x700+24) // dev_list
	le.PutUint64(m[0x8a0+24:], fuzzData+0x700+24) //
	le.PutUint32(m[0x8a0+32:], 1)                 // ifindex
	le.PutUint32(m[0x8a0+36:], 0x9)               // UP, LOOPBACK
	le.PutUint32(m[0x8a0+40:], 65536)             // mtu
	m[0x8a0+46] = 6                               // addr_len
	le.PutUint64(m[0x8a0+56:], 1)                 // state: started
	le.PutUint64(m[0x8a0+64:], fuzzData+0x880)    // dev_addr (zeros)
	le.PutUint64(m[0x8a0+72:], fuzzData+0x900)    // ip_ptr
	le.PutUint64(m[0x8a0+80:], fuzzData+0x910)    // ip6_ptr
	le.PutUint64(m[0x900:], fuzzData+0x920)       // ifa_list
	le.PutUint64(m[0x910:], fuzzData+0x950+24)    // addr_list
	le.PutUint64(m[0x918:], fuzzData+0x950+24)    //
	le.PutUint32(m[0x920+8:], 0x0100007f)         // 127.0.0.1
	m[0x920+12], m[0x920+13] = 8, 254             // /8 scope host
	copy(m[0x920+16:], "lo")                      // label
	m[0x950+15] = 1                               // ::1
	le.PutUint32(m[0x950+16:], 128)               // prefix_len
	le.PutUint32(m[0x950+20:], 0x10)              // IFA_HOST
	le.PutUint64(m[0x950+24:], fuzzData+0x910)    // if_list
	le.PutUint64(m[0x950+32:], fuzzData+0x910)    //
	// iomem_resource with one child, "System RAM"
	le.PutUint64(m[0x130+8:], ^uint64(0))      // end
	le.PutUint64(m[0x130+48:], fuzzData+0x980) // child
	le.PutUint64(m[0x980+8:], 0xfffff)         // its end
	le.PutUint64(m[0x980+16:], fuzzData+0x9c0) // name
	le.PutUint64(m[0x980+32:], fuzzIomem)      // parent
	copy(m[0x9c0:], "System RAM")
	// /proc: the root directory with one file, "tcp", whose proc_ops are
	// proc_seq_ops; the network namespace's /proc/net is that file too
	text := func(i uint64) uint64 { return 0xffffffff81000000 + i*16 }
	le.PutUint64(m[0x9e0:], fuzzData+0xb80)       // proc_iops
	le.PutUint64(m[0x9e0+8:], fuzzData+0xb88)     // proc_dir_ops
	le.PutUint64(m[0x9e0+32:], fuzzData+0xa40+40) // subdir: the file's node
	le.PutUint16(m[0x9e0+72:], 0o40555)           // a directory
	le.PutUint64(m[0xa40+8:], fuzzSeqProcs)       // proc_ops
	le.PutUint64(m[0xa40+16:], fuzzData+0xba8)    // seq_ops
	le.PutUint64(m[0xa40+24:], text(0))           // write
	le.PutUint64(m[0xa40+64:], fuzzData+0xbd0)    // name
	le.PutUint16(m[0xa40+72:], 0o100444)          // a file
	le.PutUint64(m[0x700+40:], fuzzData+0xa40)    // net.proc_net
	for i := uint64(0); i < 9; i++ {              // inode, file, proc and seq operations
		le.PutUint64(m[0xb80+i*8:], text(1+i))
	}
	copy(m[0xbd0:], "tcp")
	// a tracepoint with one probe and its static call on the iterator
	le.PutUint64(m[0xae0:], fuzzData+0xbe0)    // name
	le.PutUint64(m[0xae0+8:], fuzzData+0xb10)  // static_call_key
	le.PutUint64(m[0xae0+32:], fuzzData+0xb20) // funcs
	le.PutUint64(m[0xb10:], text(10))          // static call target
	le.PutUint64(m[0xb20:], text(11))          // the probe
	copy(m[0xbe0:], "sched")
	// task_kill has one entry of the LSM "lsm"
	le.PutUint64(m[0xb40+8:], fuzzData+0xb50)  // task_kill.first
	le.PutUint64(m[0xb50+8:], fuzzLSMHeads+8)  // pprev
	le.PutUint64(m[0xb50+16:], fuzzLSMHeads+8) // head
	le.PutUint64(m[0xb50+24:], text(12))       // hook
	le.PutUint64(m[0xb50+32:], fuzzData+0xbf0) // lsm
	copy(m[0xbf0:], "lsm")
	// CPU 0's perf context holds one event
	le.PutUint64(m[0xc10:], fuzzData+0xc30)   // ctx.event_list.next
	le.PutUint64(m[0xc10+8:], fuzzData+0xc30) // .prev
	le.PutUint64(m[0xc30:], fuzzPerfCPU)      // event_entry.next
	le.PutUint64(m[0xc30+8:], fuzzPerfCPU)    // .prev
	le.PutUint64(m[0xc30+16:], text(13))      // overflow_handler
	return m
}

// FuzzViews: hostile layouts and hostile memory through every view never
// panic, and every input finishes in bounded time.
func FuzzViews(f *testing.F) {
	mem := fuzzTaskMemory()
	f.Add([]byte{}, mem)
	f.Add(badTaskLayout(), mem)
	f.Add(fuzzEdit(5, 3, 0xffff), mem)
	f.Add(fuzzEdit(2, knob(fuzzBaseOnce().offsets, "task_struct.real_cred"), 3), mem)
	f.Fuzz(func(t *testing.T, layout, data []byte) {
		if len(data) > fuzzDataSize {
			data = data[:fuzzDataSize]
		}
		types, ok := fuzzTypes(layout)
		if !ok {
			return
		}
		t0 := time.Now()
		driveViews(fuzzKernel(t, types, data))
		if d := time.Since(t0); d > fuzzDeadline {
			t.Fatalf("views took %v on one input", d)
		}
	})
}

// TestScanTasksBadLayout is issue item 9 as a plain test: the task scan
// over a task_struct whose comm lies outside it is an error naming the
// member, not a panic.
func TestScanTasksBadLayout(t *testing.T) {
	types, ok := fuzzTypes(badTaskLayout())
	if !ok {
		t.Fatal("layout does not build")
	}
	k := fuzzKernel(t, types, fuzzTaskMemory())
	_, err := k.ScanTasks()
	var le *LayoutError
	if !errors.As(err, &le) || le.Type != "task_struct" || le.Member != "comm" {
		t.Fatalf("ScanTasks: %v, want a layout error for task_struct.comm", err)
	}
	t.Log(err)
	// the raw check on its own, with offsets past the candidate
	if looksLikeTask(make([]byte, 8), 128, 0, 4, 0, 0) {
		t.Error("looksLikeTask accepted a candidate too short for its offsets")
	}
	// and the base layout finds the tasks planted in memory, so the fuzz
	// target starts from memory the views accept
	types, _ = fuzzTypes(nil)
	k = fuzzKernel(t, types, fuzzTaskMemory())
	found, err := k.ScanTasks()
	if err != nil || len(found) != 2 || found[0].Comm != "init" || found[1].PID != 42 {
		t.Errorf("ScanTasks on the base layout: %+v %v", found, err)
	}
	ps, err := k.Processes(PSOptions{NoCmdline: true})
	if err != nil || len(ps) != 1 || ps[0].Comm != "sshd" || ps[0].UID != 1000 {
		t.Errorf("Processes on the base layout: %+v %v", ps, err)
	}
	if recs, err := k.Dmesg(); err != nil || len(recs) != 1 || recs[0].Text != "hello" {
		t.Errorf("Dmesg on the base layout: %+v %v", recs, err)
	}
	if ns, err := k.Mounts(nil); err != nil || len(ns) != 1 || ns[0].Inum != 0xf0000001 || len(ns[0].Mounts) != 1 ||
		ns[0].Mounts[0].Line() != "1 1 0:2 / / rw,relatime - rootfs rootfs rw" || !ns[0].Mounts[0].Visible {
		t.Errorf("Mounts on the base layout: %+v %v", ns, err)
	}
	if ns, err := k.Interfaces(); err != nil || len(ns) != 1 || len(ns[0].Interfaces) != 1 || len(ns[0].PIDs) != 1 ||
		fmt.Sprint(ns[0].Interfaces[0].Flags, ns[0].Interfaces[0].Addrs) != "[LOOPBACK UP LOWER_UP] [{inet 127.0.0.1 8 host lo} {inet6 ::1 128 host }]" {
		t.Errorf("Interfaces on the base layout: %+v %v", ns, err)
	}
	if rs, err := k.Resources(false); err != nil || len(rs) != 1 || rs[0].Line(8) != "00000000-000fffff : System RAM" {
		t.Errorf("Resources on the base layout: %+v %v", rs, err)
	}
	if ops, err := k.ProcOps(); err != nil || len(ops) != 10 || ops[0].Object != "/proc" || ops[len(ops)-1].Object != "/proc/tcp" ||
		ops[len(ops)-1].Member != "write" || ops[len(ops)-2].Struct != "seq_operations" || ops[len(ops)-2].Member != "show" {
		t.Errorf("ProcOps on the base layout: %+v %v", ops, err)
	}
	if tps, err := k.Tracepoints(); len(tps) != 2 || tps[0].Object != "tracepoint sched" || tps[0].Func != 0xffffffff810000b0 ||
		tps[1].Struct != "static_call_key" || tps[1].Func != 0xffffffff810000a0 {
		t.Errorf("Tracepoints on the base layout: %+v %v", tps, err)
	}
	if hs, err := k.LSMHooks(); err != nil || len(hs) != 1 || hs[0].Object != "lsm hook task_kill (lsm)" || hs[0].Func != 0xffffffff810000c0 {
		t.Errorf("LSMHooks on the base layout: %+v %v", hs, err)
	}
	if ps, _ := k.PerfEvents(); len(ps) != 1 || ps[0].Object != "perf event (cpu 0)" || ps[0].Member != "overflow_handler" || ps[0].Func != 0xffffffff810000d0 {
		t.Errorf("PerfEvents on the base layout: %+v", ps)
	}
	root, _ := k.Uint64(fuzzMapleRoot)
	if es, err := k.mapleEntries(root); err != nil || len(es) != 1 || es[0] != fuzzData+0x3000 {
		t.Errorf("maple tree on the base layout: %#x %v", es, err)
	}
}

// memCore is a core file in memory, for the fuzzed WriteCore.
type memCore struct{ b []byte }

func (m *memCore) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > 1<<24 {
		return 0, errors.New("memCore: past 16 MiB")
	}
	if end := int(off) + len(p); end > len(m.b) {
		m.b = append(m.b, make([]byte, end-len(m.b))...)
	}
	return copy(m.b[off:], p), nil
}

func (m *memCore) Truncate(n int64) error {
	if n < 0 || n > 1<<24 {
		return errors.New("memCore: past 16 MiB")
	}
	m.b = append(m.b[:0:0], m.b[:min(int(n), len(m.b))]...)
	return nil
}
