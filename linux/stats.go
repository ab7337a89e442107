package linux

import (
	"encoding/binary"
	"fmt"
	"math/bits"
)

// GuestStats are resource figures read from the guest kernel's own
// counters, the ones /proc/meminfo, /proc/loadavg and /proc/uptime print.
type GuestStats struct {
	MemTotal     uint64 `json:"mem_total_bytes"`
	MemFree      uint64 `json:"mem_free_bytes"`
	MemAvailable uint64 `json:"mem_available_bytes"`
	// Buffers is the page cache of block devices (/proc/meminfo's
	// Buffers); Cached is the rest of the page cache, as /proc/meminfo
	// counts it (file pages minus swap cache and buffers).
	Buffers  uint64     `json:"buffers_bytes"`
	Cached   uint64     `json:"cached_bytes"`
	Load     [3]float64 `json:"load"`
	Running  int64      `json:"running"`
	Threads  int64      `json:"threads"`
	Uptime   float64    `json:"uptime_seconds"`
	BootTime float64    `json:"boot_time_unix"` // wall clock at boot, Unix seconds
	Errors   []string   `json:"errors,omitempty"`
}

const pageSize = 4096

// counter reads entry name (an enumerator of enumType) of an array of
// atomic_long_t such as vm_zone_stat or vm_node_stat.
func (k *Kernel) counter(array, enumerator string) (int64, error) {
	a, err := k.Symbol(array)
	if err != nil {
		return 0, err
	}
	i, err := k.Types.EnumConstant(enumerator)
	if err != nil {
		return 0, err
	}
	if i < 0 || i > 256 {
		return 0, fmt.Errorf("%s index %d", enumerator, i)
	}
	v, err := k.Uint64(a + 8*uint64(i))
	return int64(v), err
}

// Stats reads memory, load, task and time counters.
func (k *Kernel) Stats() (GuestStats, error) {
	var st GuestStats
	note := func(err error) {
		if err != nil && len(st.Errors) < 16 {
			st.Errors = append(st.Errors, err.Error())
		}
	}
	// memory (mm/show_mem.c si_meminfo, si_mem_available)
	if a, err := k.Symbol("_totalram_pages"); err == nil {
		v, err := k.Uint64(a)
		note(err)
		st.MemTotal = v * pageSize
	} else {
		note(err)
	}
	free, err := k.counter("vm_zone_stat", "NR_FREE_PAGES")
	note(err)
	st.MemFree = clampPages(free)
	filePages, err := k.counter("vm_node_stat", "NR_FILE_PAGES")
	note(err)
	swapCache, _ := k.counter("vm_node_stat", "NR_SWAPCACHE")
	buffers, err := k.blockdevPages()
	note(err)
	st.Buffers = clampPages(buffers)
	st.Cached = clampPages(filePages - swapCache - buffers)
	st.MemAvailable = k.memAvailable(free, note)

	// load averages: fixed point with 11 fractional bits (FSHIFT)
	if a, err := k.Symbol("avenrun"); err == nil {
		b := make([]byte, 24)
		if _, err := k.AS.ReadAt(b, int64(a)); err == nil {
			for i := range st.Load {
				x := binary.LittleEndian.Uint64(b[8*i:]) + (1<<11)/200 // as /proc/loadavg rounds
				st.Load[i] = float64(x>>11) + float64((x&(1<<11-1))*100>>11)/100
			}
		} else {
			note(err)
		}
	}
	if a, err := k.Symbol("nr_threads"); err == nil {
		b := make([]byte, 4)
		if _, err := k.AS.ReadAt(b, int64(a)); err == nil {
			st.Threads = int64(int32(binary.LittleEndian.Uint32(b)))
		}
	}
	if rqs, err := k.PerCPU("runqueues"); err == nil {
		for _, rq := range rqs {
			if v, err := k.ReadField("rq", rq, "nr_running"); err == nil {
				n, _ := v.Uint()
				st.Running += int64(n)
			}
		}
	}
	st.Uptime, st.BootTime, err = k.uptime()
	note(err)
	return st, nil
}

// maxBlockdevInodes bounds the walk over the block devices' inodes.
const maxBlockdevInodes = 1 << 16

// blockdevPages sums the page cache of every block device, as
// nr_blockdev_pages() does for /proc/meminfo's Buffers: the pages of each
// inode of the bdev pseudo file system (blockdev_superblock->s_inodes).
func (k *Kernel) blockdevPages() (int64, error) {
	a, err := k.Symbol("blockdev_superblock")
	if err != nil {
		return 0, err
	}
	sb, err := k.Uint64(a)
	if err != nil || sb == 0 {
		return 0, fmt.Errorf("blockdev_superblock: %v", err)
	}
	sbT, err := k.Types.Struct("super_block")
	if err != nil {
		return 0, err
	}
	headOff, err := sbT.FieldOffset("s_inodes")
	if err != nil {
		return 0, err
	}
	inT, err := k.Types.Struct("inode")
	if err != nil {
		return 0, err
	}
	nodeOff, err := inT.FieldOffset("i_sb_list")
	if err != nil {
		return 0, err
	}
	var total int64
	err = k.WalkList(sb+headOff, maxBlockdevInodes, func(node uint64) error {
		m, err := k.ReadField("inode", node-nodeOff, "i_mapping")
		if err != nil {
			return err
		}
		mp, err := m.Ptr()
		if err != nil || mp == 0 {
			return err
		}
		n, err := k.ReadField("address_space", mp, "nrpages")
		if err != nil {
			return err
		}
		v, err := n.Uint()
		total += int64(v)
		return err
	})
	if err != nil {
		return total, fmt.Errorf("buffers (block device page cache): %w", err)
	}
	return total, nil
}

func clampPages(p int64) uint64 {
	if p < 0 {
		return 0
	}
	return uint64(p) * pageSize
}

// memAvailable follows si_mem_available(): free pages above the reserve,
// plus the page cache and reclaimable slab that could be dropped, each
// minus what the low watermarks keep.
func (k *Kernel) memAvailable(free int64, note func(error)) uint64 {
	reserve := int64(0)
	if a, ok := k.Syms.Lookup("totalreserve_pages"); ok {
		v, err := k.Uint64(a)
		note(err)
		reserve = int64(v)
	}
	wmarkLow := k.lowWatermarks(note)
	active, e1 := k.counter("vm_node_stat", "NR_ACTIVE_FILE")
	inactive, e2 := k.counter("vm_node_stat", "NR_INACTIVE_FILE")
	note(e1)
	note(e2)
	avail := free - reserve
	pagecache := active + inactive
	pagecache -= min(pagecache/2, wmarkLow)
	avail += pagecache
	slab, e3 := k.counter("vm_node_stat", "NR_SLAB_RECLAIMABLE_B")
	misc, _ := k.counter("vm_node_stat", "NR_KERNEL_MISC_RECLAIMABLE")
	note(e3)
	reclaimable := slab + misc
	avail += reclaimable - min(reclaimable/2, wmarkLow)
	return clampPages(avail)
}

// lowWatermarks adds the low watermark (and boost) of every zone of every
// node (node_data[], or contig_page_data without NUMA).
func (k *Kernel) lowWatermarks(note func(error)) int64 {
	var nodes []uint64
	if a, ok := k.Syms.Lookup("node_data"); ok {
		for i := 0; i < 64; i++ {
			p, err := k.Uint64(a + 8*uint64(i))
			if err != nil || p == 0 {
				break
			}
			nodes = append(nodes, p)
		}
	} else if a, ok := k.Syms.Lookup("contig_page_data"); ok {
		nodes = append(nodes, a)
	}
	wlow, err := k.Types.EnumConstant("WMARK_LOW")
	if err != nil {
		note(err)
		return 0
	}
	var total int64
	for _, n := range nodes {
		pg, err := k.Object("pglist_data", n)
		if err != nil {
			note(err)
			continue
		}
		zones, err := pg.Field("node_zones")
		if err != nil {
			note(err)
			continue
		}
		for i := 0; i < int(zones.Type.Len); i++ {
			z, err := zones.Index(i)
			if err != nil {
				break
			}
			wm, err := z.Field("_watermark")
			if err != nil {
				note(err)
				break
			}
			w, err := wm.Index(int(wlow))
			if err != nil {
				break
			}
			v, _ := w.Uint()
			total += int64(v)
			if b, err := z.Field("watermark_boost"); err == nil {
				bv, _ := b.Uint()
				total += int64(bv)
			}
		}
	}
	return total
}

// uptime reads the timekeeper: monotonic time is xtime plus
// wall_to_monotonic; boot time adds offs_boot (time spent suspended).
func (k *Kernel) uptime() (uptime, bootWall float64, err error) {
	a, err := k.Symbol("tk_core")
	if err != nil {
		return 0, 0, err
	}
	// tk_core is { seqcount_raw_spinlock_t seq; struct timekeeper timekeeper; },
	// an anonymous struct until Linux 6.13 named it tk_data
	var tk Value
	if tc, err := k.Object("tk_data", a); err == nil {
		if tk, err = tc.Field("timekeeper"); err != nil {
			return 0, 0, err
		}
	} else {
		sq, err := k.Types.Struct("seqcount_raw_spinlock")
		if err != nil {
			return 0, 0, fmt.Errorf("tk_core layout: %w", err)
		}
		tkT, err := k.Types.Struct("timekeeper")
		if err != nil {
			return 0, 0, err
		}
		if tk, err = k.ReadValue(tkT, a+(sq.Size+7)&^7); err != nil {
			return 0, 0, err
		}
	}
	f := &fields{v: tk}
	xsec := f.int("xtime_sec")
	shift := f.uint("tkr_mono.shift")
	xnsec := f.uint("tkr_mono.xtime_nsec")
	w2m := f.int("wall_to_monotonic.tv_sec")
	w2mn := f.int("wall_to_monotonic.tv_nsec")
	offsBoot := f.int("offs_boot")
	if len(f.errs) > 0 {
		return 0, 0, fmt.Errorf("timekeeper: %v", f.errs)
	}
	if shift >= 64 || xsec < 1e8 || xsec > 1e11 {
		return 0, 0, fmt.Errorf("timekeeper implausible (xtime_sec %d, shift %d)", xsec, shift)
	}
	nsec := float64(xnsec>>shift) / 1e9
	wall := float64(xsec) + nsec
	mono := wall + float64(w2m) + float64(w2mn)/1e9
	boot := mono + float64(offsBoot)/1e9
	return boot, wall - boot, nil
}

// ProcessUsage is a process's CPU time and resident memory.
type ProcessUsage struct {
	PID     int64   `json:"pid"`
	Comm    string  `json:"comm"`
	CPUTime float64 `json:"cpu_seconds"` // user + system, all threads
	RSS     uint64  `json:"rss_bytes"`
}

// Usage reads CPU time (task utime and stime, live threads and those that
// exited, from signal_struct) and resident memory (mm rss_stat counters).
func (k *Kernel) Usage(p Process) (ProcessUsage, error) {
	u := ProcessUsage{PID: p.PID, Comm: p.Comm}
	task, err := k.Object("task_struct", uint64(p.Task))
	if err != nil {
		return u, err
	}
	var ns uint64
	if ths, err := k.Threads(task); err == nil {
		for _, th := range ths {
			tv, err := k.Object("task_struct", th)
			if err != nil {
				continue
			}
			f := &fields{v: tv}
			ns += f.uint("utime") + f.uint("stime")
		}
	}
	if sp := (&fields{v: task}).ptr("signal"); sp != 0 {
		if sig, err := k.Object("signal_struct", sp); err == nil {
			f := &fields{v: sig}
			ns += f.uint("utime") + f.uint("stime")
		}
	}
	u.CPUTime = float64(ns) / 1e9
	if p.Mm != 0 {
		u.RSS, err = k.rss(uint64(p.Mm))
	}
	return u, err
}

// rss adds the file, anonymous and shared-memory page counters of an mm:
// atomic longs before Linux 6.2, per-CPU counters (their global count)
// since.
func (k *Kernel) rss(mm uint64) (uint64, error) {
	v, err := k.Object("mm_struct", mm)
	if err != nil {
		return 0, err
	}
	rs, err := v.Field("rss_stat")
	if err != nil {
		return 0, err
	}
	var arr Value
	if rs.Type.Kind == KindArray {
		arr = rs // struct percpu_counter rss_stat[NR_MM_COUNTERS]
	} else if arr, err = rs.Field("count"); err != nil {
		return 0, err
	}
	var pages int64
	for _, name := range []string{"MM_FILEPAGES", "MM_ANONPAGES", "MM_SHMEMPAGES"} {
		i, err := k.Types.EnumConstant(name)
		if err != nil {
			continue
		}
		e, err := arr.Index(int(i))
		if err != nil {
			continue
		}
		var n int64
		if e.Type.Kind == KindStruct && e.Type.HasField("count") {
			c, _ := e.Field("count")
			n, _ = c.Int()
		} else {
			n, _ = e.Int()
		}
		if n > 0 {
			pages += n
		}
	}
	hi, lo := bits.Mul64(uint64(pages), pageSize)
	if hi != 0 {
		return 0, fmt.Errorf("rss overflows")
	}
	return lo, nil
}
