package detect

import (
	"errors"
	"fmt"

	"github.com/vmwatch/vmwatch/linux"
	"github.com/vmwatch/vmwatch/x86"
)

// Scanner matches signatures against memory (YARA when built with the
// "yara" tag).
type Scanner interface {
	// Scan returns the names of the rules that match data, with the
	// offset of each rule's first matching string and the rule's meta.
	Scan(data []byte) ([]Match, error)
}

// Match is one signature that matched.
type Match struct {
	Rule     string
	Offset   uint64
	Severity string // from the rule's meta "severity", if any
}

// limits for YARA scans
const (
	yaraChunk          = 4 << 20
	maxYaraProcessScan = 512 << 20
)

func runYara(s *Snapshot) ([]Finding, error) {
	sc := s.Opt.Yara
	if sc == nil {
		return nil, nil
	}
	var out []Finding
	var errs []error
	report := func(m Match, where string, pid int64, label string, addr uint64) {
		sev := High
		if m.Severity != "" {
			if v, err := ParseSeverity(m.Severity); err == nil {
				sev = v
			}
		}
		ev := Evidence{Addresses: []AddrEvidence{s.addr("match", addr)}, Details: map[string]any{"rule": m.Rule, "memory": where}}
		key := m.Rule + "/kernel"
		title := fmt.Sprintf("YARA rule %s matches kernel memory", m.Rule)
		if pid != 0 {
			ev.PIDs, ev.Processes = []int64{pid}, []string{label}
			key = fmt.Sprintf("%s/%d", m.Rule, pid)
			title = fmt.Sprintf("YARA rule %s matches the memory of process %s", m.Rule, label)
		}
		out = append(out, s.finding("yara", title, sev, "T1027", key,
			fmt.Sprintf("Signature %s matched %s at %v.", m.Rule, where, linux.Addr(addr)), ev))
	}
	// the kernel image, physically contiguous, and the modules. The image
	// is _text to _end less the init sections: those, and the rest of the
	// image's last 2 MiB page, are freed after boot and hold any page
	// since (a process's heap among them)
	for _, r := range kernelImageRanges(s.K) {
		p, ok := s.K.Loc.ImagePhys(r.start)
		if !ok || r.end <= r.start {
			continue
		}
		buf := make([]byte, r.end-r.start)
		n, _ := s.K.Mem.ReadAt(buf, int64(p))
		ms, err := sc.Scan(buf[:n])
		if err != nil {
			errs = append(errs, err)
		}
		for _, m := range ms {
			report(m, "the kernel image", 0, "", r.start+m.Offset)
		}
	}
	mods, _ := s.Modules()
	for _, md := range mods {
		for _, r := range md.Ranges {
			b := make([]byte, r.End-r.Start)
			n, _ := s.K.AS.ReadAt(b, int64(r.Start))
			ms, err := sc.Scan(b[:n])
			if err != nil {
				errs = append(errs, err)
			}
			for _, m := range ms {
				report(m, "module "+md.Name, 0, "", uint64(r.Start)+m.Offset)
			}
		}
	}
	user, _, err := userProcesses(s)
	if err != nil {
		errs = append(errs, err)
	}
	for _, pr := range user {
		d := s.Detail(pr)
		mm, err := s.K.Object("mm_struct", uint64(pr.Mm))
		if err != nil {
			continue
		}
		um, err := s.K.UserSpace(mm)
		if err != nil {
			continue
		}
		seen := map[string]bool{}
		total := uint64(0)
		for _, v := range d.VMAs {
			for a := uint64(v.Start); a < uint64(v.End) && total < maxYaraProcessScan; a += yaraChunk {
				n := min(uint64(yaraChunk), uint64(v.End)-a)
				b := make([]byte, n)
				got := readPresent(um, b, a)
				total += n
				if got == 0 {
					continue
				}
				ms, err := sc.Scan(b)
				if err != nil {
					errs = append(errs, err)
				}
				for _, m := range ms {
					if !seen[m.Rule] {
						seen[m.Rule] = true
						report(m, fmt.Sprintf("process %d", pr.PID), pr.PID, procLabel(pr), a+m.Offset)
					}
				}
			}
		}
	}
	return out, errors.Join(errs...)
}

// readPresent reads the present pages of [a, a+len(b)), leaving absent
// pages zero (they hold nothing to match), and returns the bytes read.
func readPresent(um *linux.UserMemory, b []byte, a uint64) int {
	got := 0
	for off := 0; off < len(b); off += x86.PageSize4K {
		end := min(len(b), off+x86.PageSize4K)
		if n, _ := um.ReadAt(b[off:end], int64(a)+int64(off)); n > 0 {
			got += n
		}
	}
	return got
}

type vaRange struct{ start, end uint64 }

// kernelImageRanges is the kernel image that stays the kernel's after
// boot: [_text, _end) without [__init_begin, __init_end), each bound
// where the symbols are known and inside the image's mapping.
func kernelImageRanges(k *linux.Kernel) []vaRange {
	loc := k.Loc
	sym := func(name string, def uint64) uint64 {
		if a, ok := k.Syms.Lookup(name); ok && a >= loc.TextStart && a <= loc.ImageEnd {
			return a
		}
		return def
	}
	end := sym("_end", loc.ImageEnd)
	ib, ie := sym("__init_begin", 0), sym("__init_end", 0)
	if ib == 0 || ie <= ib || ie > end {
		return []vaRange{{loc.TextStart, end}}
	}
	return []vaRange{{loc.TextStart, ib}, {ie, end}}
}
