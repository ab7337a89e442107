package linux

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"path"
	"slices"
	"strconv"
)

// Bash keeps the commands typed in an interactive shell in a history list
// on its heap (readline's history.c): an array of HIST_ENTRY pointers,
// each entry three pointers { line, timestamp, data }, the timestamp a
// string "#SECONDS" (the comment character, '#' unless histchars changes
// it, then the time). The list is there before it is written to
// ~/.bash_history, and stays after an intruder unsets HISTFILE or deletes
// the file.
//
// The heap is searched the way the list is built, with no knowledge of
// bash's own symbols: timestamp strings, entries pointing to them (and to
// a command line on the heap), and the array pointing to the entries,
// which gives their order.

// HistoryEntry is one command of a bash process's history.
type HistoryEntry struct {
	// Index is the entry's place in the history list (0 the oldest
	// kept), -1 for an entry found on the heap but not in the list.
	Index   int    `json:"index"`
	Time    int64  `json:"time"` // Unix seconds when bash recorded it
	Command string `json:"command"`
	Addr    Addr   `json:"addr"` // the HIST_ENTRY in the process's memory
}

// limits of the heap search
const (
	maxBashHeap = 64 << 20
	maxHistLine = 64 << 10
	// maxHistEntries bounds the entries kept (bash's HISTSIZE is 500 by
	// default, Debian's .bashrc sets 1000)
	maxHistEntries = 1 << 16
	// timestamps between 2001-09-09 (10 digits) and 2286
	tsDigits = 10
)

// IsBash reports whether a process runs bash: its executable's name, or
// its name when the executable cannot be read.
func (k *Kernel) IsBash(task Value) bool {
	f := &fields{v: task}
	if mm := f.ptr("mm"); mm != 0 {
		if fi, err := k.Exe(mm); err == nil {
			return path.Base(fi.Path) == "bash"
		}
	}
	return f.str("comm") == "bash"
}

// BashHistory reads the history list of a bash process from its heap
// (mm->start_brk to mm->brk).
func (k *Kernel) BashHistory(task Value) ([]HistoryEntry, error) {
	mmv, err := task.Field("mm")
	if err != nil {
		return nil, err
	}
	mmAddr, _ := mmv.Ptr()
	if mmAddr == 0 {
		return nil, errors.New("a kernel thread has no heap")
	}
	mm, err := k.Object("mm_struct", mmAddr)
	if err != nil {
		return nil, err
	}
	f := &fields{v: mm}
	start, end := f.uint("start_brk"), f.uint("brk")
	if len(f.errs) > 0 {
		return nil, fmt.Errorf("mm_struct %#x: %v", mmAddr, f.errs)
	}
	if end <= start {
		return nil, nil
	}
	var cut error
	if end-start > maxBashHeap {
		cut = fmt.Errorf("heap of %d MiB: only the first %d MiB searched", (end-start)>>20, maxBashHeap>>20)
		end = start + maxBashHeap
	}
	um, err := k.UserSpace(mm)
	if err != nil {
		return nil, err
	}
	heap, present := readUserPages(um, start, end)
	if present == 0 {
		return nil, fmt.Errorf("no page of the heap %#x-%#x is in memory", start, end)
	}
	return BashHistoryIn(heap, start), cut
}

// readUserPages reads [start, end) a page at a time; pages that cannot be
// read stay zero. It returns how many pages were read.
func readUserPages(um *UserMemory, start, end uint64) ([]byte, int) {
	buf := make([]byte, end-start)
	n := 0
	for a := start; a < end; {
		l := min(end-a, 4096-a%4096)
		if got, err := um.ReadAt(buf[a-start:a-start+l], int64(a)); err == nil && uint64(got) == l {
			n++
		}
		a += l
	}
	return buf, n
}

// BashHistoryIn finds the history entries in a copy of bash's heap that
// starts at base: in list order, then those outside the list by time.
func BashHistoryIn(heap []byte, base uint64) []HistoryEntry {
	le := binary.LittleEndian
	inHeap := func(p uint64) bool { return p >= base && p-base < uint64(len(heap)) }
	// 1. timestamp strings: the comment character ('#' unless histchars
	// changed it) and 10 digits, NUL, at the start of a malloc chunk
	// (16-byte aligned)
	stamps := map[uint64]int64{}
	for i := int((16 - base%16) % 16); i+tsDigits+2 <= len(heap); i += 16 {
		if c := heap[i]; c >= '0' && c <= '9' || heap[i+tsDigits+1] != 0 {
			continue
		}
		if t, ok := digits(heap[i+1 : i+1+tsDigits]); ok {
			stamps[base+uint64(i)] = t
		}
	}
	if len(stamps) == 0 {
		return nil
	}
	// 2. entries: 16-aligned { line, timestamp, data } with the line a
	// string on the heap
	var entries []HistoryEntry
	at := map[uint64]int{}
	lines := map[uint64]string{} // each line read once, however many entries share it
	for i := int((16 - base%16) % 16); i+24 <= len(heap) && len(entries) < maxHistEntries; i += 16 {
		t, ok := stamps[le.Uint64(heap[i+8:])]
		if !ok {
			continue
		}
		line := le.Uint64(heap[i:])
		if !inHeap(line) || line%16 != 0 {
			continue
		}
		cmd, ok := lines[line]
		if !ok {
			s := heap[line-base:]
			if n := bytes.IndexByte(s[:min(len(s), maxHistLine)], 0); n > 0 {
				cmd = string(s[:n])
			}
			lines[line] = cmd
		}
		if cmd == "" {
			continue
		}
		at[base+uint64(i)] = len(entries)
		entries = append(entries, HistoryEntry{Index: -1, Time: t, Command: cmd, Addr: Addr(base + uint64(i))})
	}
	if len(entries) == 0 {
		return nil
	}
	// 3. the list: the longest run of consecutive pointers to entries
	bestStart, bestLen := -1, 0
	for i := int((8 - base%8) % 8); i+8 <= len(heap); i += 8 {
		if _, ok := at[le.Uint64(heap[i:])]; !ok {
			continue
		}
		n := 0
		for j := i; j+8 <= len(heap); j += 8 {
			if _, ok := at[le.Uint64(heap[j:])]; !ok {
				break
			}
			n++
		}
		if n > bestLen {
			bestStart, bestLen = i, n
		}
		i += (n - 1) * 8
	}
	var out []HistoryEntry
	if bestStart >= 0 {
		used := map[int]bool{}
		for k := 0; k < bestLen; k++ {
			idx := at[le.Uint64(heap[bestStart+8*k:])]
			if used[idx] {
				continue // one entry twice in a run: not a list
			}
			used[idx] = true
			e := entries[idx]
			e.Index = len(out)
			out = append(out, e)
		}
		for i := range entries {
			if !used[i] {
				out = append(out, entries[i])
			}
		}
		rest := out[len(used):]
		slices.SortStableFunc(rest, func(a, b HistoryEntry) int { return cmp.Compare(a.Time, b.Time) })
		return out
	}
	slices.SortStableFunc(entries, func(a, b HistoryEntry) int { return cmp.Compare(a.Time, b.Time) })
	return entries
}

func digits(b []byte) (int64, bool) {
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	t, err := strconv.ParseInt(string(b), 10, 64)
	return t, err == nil
}
