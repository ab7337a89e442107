package guestmem

import (
	"bufio"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
)

// FlatRange is one line of QEMU's flattened memory map (HMP `info mtree -f`)
// for the system address space: a guest physical range, the kind of region,
// the memory region's name and the offset into it.
type FlatRange struct {
	Range
	Kind   string // "ram", "rom", "i/o", "romd", ...
	Name   string // memory region name, e.g. "pc.ram"
	Offset uint64 // offset of Start inside the region
}

// ParseMtree extracts the flat view of the "memory" address space from the
// output of `info mtree -f`.
func ParseMtree(text string) ([]FlatRange, error) {
	var out []FlatRange
	inView, inMemory := false, false
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		t := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(t, "FlatView #"):
			if inMemory && len(out) > 0 {
				return out, nil
			}
			inView, inMemory = true, false
			continue
		case strings.HasPrefix(t, "AS \""):
			if inView && strings.HasPrefix(t, `AS "memory"`) {
				inMemory = true
			}
			continue
		}
		if !inMemory {
			continue
		}
		fr, ok := parseMtreeLine(t)
		if ok {
			out = append(out, fr)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no flat view of the \"memory\" address space in `info mtree -f` output (%d bytes)", len(text))
	}
	return out, nil
}

// parseMtreeLine parses "0000000000100000-000000001fffffff (prio 0, ram): pc.ram @0000000000100000".
func parseMtreeLine(t string) (FlatRange, bool) {
	var fr FlatRange
	dash := strings.IndexByte(t, '-')
	sp := strings.IndexByte(t, ' ')
	if dash <= 0 || sp <= dash {
		return fr, false
	}
	start, err1 := strconv.ParseUint(t[:dash], 16, 64)
	last, err2 := strconv.ParseUint(t[dash+1:sp], 16, 64)
	if err1 != nil || err2 != nil || last < start || last == ^uint64(0) {
		return fr, false
	}
	rest := t[sp+1:]
	open, close := strings.IndexByte(rest, '('), strings.Index(rest, "):")
	if open != 0 || close < 0 {
		return fr, false
	}
	attrs := strings.Split(rest[1:close], ",")
	kind := strings.TrimSpace(attrs[len(attrs)-1])
	name := strings.TrimSpace(rest[close+2:])
	var off uint64
	if at := strings.LastIndex(name, " @"); at >= 0 {
		o, err := strconv.ParseUint(strings.TrimSpace(name[at+2:]), 16, 64)
		if err == nil {
			off = o
			name = strings.TrimSpace(name[:at])
		}
	}
	// Trailing annotations such as " [disabled]" are not memory.
	if i := strings.Index(name, " ["); i >= 0 {
		name = name[:i]
	}
	fr = FlatRange{Range: Range{start, last + 1}, Kind: kind, Name: name, Offset: off}
	return fr, true
}

// RAMBlock is one line of HMP `info ramblock`.
type RAMBlock struct {
	Name   string
	Offset uint64
	Used   uint64
	Total  uint64
}

// ParseRAMBlocks parses `info ramblock` output.
func ParseRAMBlocks(text string) ([]RAMBlock, error) {
	var out []RAMBlock
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		// Block Name, PSize (two words: "4 KiB"), Offset, Used, Total [, HVA, RO]
		if len(f) < 6 || !strings.HasPrefix(f[3], "0x") {
			continue
		}
		off, e1 := strconv.ParseUint(f[3], 0, 64)
		used, e2 := strconv.ParseUint(f[4], 0, 64)
		total, e3 := strconv.ParseUint(f[5], 0, 64)
		if e1 != nil || e2 != nil || e3 != nil {
			continue
		}
		out = append(out, RAMBlock{Name: f[0], Offset: off, Used: used, Total: total})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no RAM blocks in `info ramblock` output")
	}
	return out, nil
}

// Mapping is one line of /proc/PID/maps.
type Mapping struct {
	Start, End uint64
	Perms      string
	Offset     uint64
	Inode      uint64
	Path       string
}

// Size of the mapping in bytes.
func (m Mapping) Size() uint64 { return m.End - m.Start }

// ReadMaps reads /proc/PID/maps.
func ReadMaps(pid int) ([]Mapping, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil, fmt.Errorf("read memory map of process %d: %w", pid, err)
	}
	defer f.Close()
	var out []Mapping
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		m, ok := parseMapsLine(sc.Text())
		if ok {
			out = append(out, m)
		}
	}
	return out, sc.Err()
}

func parseMapsLine(line string) (Mapping, bool) {
	var m Mapping
	f := strings.Fields(line)
	if len(f) < 5 {
		return m, false
	}
	se := strings.SplitN(f[0], "-", 2)
	if len(se) != 2 {
		return m, false
	}
	var err error
	if m.Start, err = strconv.ParseUint(se[0], 16, 64); err != nil {
		return m, false
	}
	if m.End, err = strconv.ParseUint(se[1], 16, 64); err != nil || m.End <= m.Start {
		return m, false
	}
	m.Perms = f[1]
	m.Offset, _ = strconv.ParseUint(f[2], 16, 64)
	m.Inode, _ = strconv.ParseUint(f[4], 10, 64)
	if len(f) > 5 {
		m.Path = strings.Join(f[5:], " ")
	}
	return m, true
}

// IsFileBacked reports whether the mapping is a shareable file or memfd (which
// can be mapped again by another process: the fast path).
func (m Mapping) IsFileBacked() bool {
	return m.Inode != 0 && m.Path != "" && !strings.HasPrefix(m.Path, "[")
}

// findRAMMapping picks the host mapping of a RAM block of the given size.
// Preference: a file or memfd mapping whose name mentions the block, then any
// writable mapping of exactly that size (the largest anonymous mapping of a
// QEMU process is its RAM); ties resolve to the first.
func findRAMMapping(maps []Mapping, block string, size uint64) (Mapping, error) {
	var cands []Mapping
	for _, m := range maps {
		if len(m.Perms) < 2 || m.Perms[0] != 'r' || m.Perms[1] != 'w' {
			continue
		}
		if m.Size() == size {
			cands = append(cands, m)
		}
	}
	if len(cands) == 0 {
		return Mapping{}, fmt.Errorf("no readable-writable mapping of %d bytes (RAM block %q) in the QEMU process", size, block)
	}
	score := func(m Mapping) int {
		switch {
		case m.IsFileBacked() && strings.Contains(m.Path, block):
			return 3
		case m.IsFileBacked():
			return 2
		case m.Path == "":
			return 1
		}
		return 0
	}
	sort.SliceStable(cands, func(i, j int) bool { return score(cands[i]) > score(cands[j]) })
	return cands[0], nil
}
