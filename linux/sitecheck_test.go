package linux

import (
	"encoding/binary"
	"testing"
)

// TestSiteCheck: a patch site excuses a change only when it holds what
// the kernel's mechanism writes there.
func TestSiteCheck(t *testing.T) {
	const base = 0xffffffff81000000
	buf := make([]byte, 0x100)
	call := func(op byte, at, to uint64) []byte {
		b := []byte{op, 0, 0, 0, 0}
		binary.LittleEndian.PutUint32(b[1:], uint32(int32(int64(to)-int64(at+5))))
		return b
	}
	c := &SiteCheck{
		sites: []PatchSite{
			{Addr: base + 0x10, Len: 5, Kind: SiteJumpLabel, Target: base + 0x80},
			{Addr: base + 0x20, Len: 5, Kind: SiteFtrace},
			{Addr: base + 0x30, Len: 5, Kind: SiteFtraceCaller},
			{Addr: base + 0x40, Len: 5, Kind: SiteKprobe},
		},
		ftraceTargets: map[uint64]string{0xffffffffc0001000: "trampoline"},
		tracerFuncs:   map[uint64]string{base + 0x90: "ftrace_stub"},
	}
	cases := []struct {
		name  string
		at    uint64
		bytes []byte
		n     uint64
		want  bool
	}{
		{"jump label nop", 0x10, nop5, 5, true},
		{"jump label to its target", 0x10, call(opJmp, base+0x10, base+0x80), 5, true},
		{"jump label short to its target", 0x10, []byte{opJmp8, 0x80 - 0x12}, 2, true},
		{"jump label elsewhere", 0x10, call(opJmp, base+0x10, 0xffffffffc0002000), 5, false},
		{"jump label with a call", 0x10, call(opCall, base+0x10, base+0x80), 5, false},
		{"short jump label, change behind it", 0x10, []byte{0x66, 0x90, 0xcc, 0xcc, 0xcc}, 5, false},
		{"ftrace nop", 0x20, nop5, 5, true},
		{"ftrace call to a trampoline", 0x20, call(opCall, base+0x20, 0xffffffffc0001000), 5, true},
		{"ftrace call elsewhere", 0x20, call(opCall, base+0x20, 0xffffffffc0001010), 5, false},
		{"ftrace jump", 0x20, call(opJmp, base+0x20, 0xffffffffc0001000), 5, false},
		{"ftrace_call to the stub", 0x30, call(opCall, base+0x30, base+0x90), 5, true},
		{"ftrace_call to a module", 0x30, call(opCall, base+0x30, 0xffffffffc0003000), 5, false},
		{"kprobe int3", 0x40, []byte{opInt3}, 1, true},
		{"kprobe, more than int3", 0x40, []byte{opInt3, 0xcc}, 2, false},
		{"no site", 0x50, nop5, 5, false},
	}
	for _, tc := range cases {
		b := make([]byte, len(buf))
		copy(b[tc.at:], tc.bytes)
		if got := c.Excuses(base+tc.at, tc.n, b, base); got != tc.want {
			t.Errorf("%s: excused %v, want %v", tc.name, got, tc.want)
		}
	}
	if (*SiteCheck)(nil).Excuses(base, 1, buf, base) {
		t.Error("a nil check excuses")
	}
}
