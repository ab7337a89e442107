// Package linux rebuilds a Linux guest's view of itself from its physical
// memory, without profiles: it finds the kernel (KASLR), its symbols
// (kallsyms, decoded from the kernel's own tables) and its types (the
// kernel's own BTF), then reads processes, modules, sockets and the log
// through typed objects. No struct offset is written in this package: every
// layout comes from the guest's BTF (or an ISF file the user provides).
//
// Guest memory is hostile: every walk is bounded, every length checked, and
// a damaged object is an error for that object only.
package linux

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf/btf"
	"github.com/vmwatch/vmwatch/guestmem"
	"github.com/vmwatch/vmwatch/x86"
)

// Options for Open.
type Options struct {
	// CPUs carries vCPU control registers when the source knows them (QMP,
	// ELF cores); they are a shortcut, not a requirement.
	CPUs []guestmem.CPUState
	// SystemMap, when set, replaces kallsyms (link-time addresses; the KASLR
	// shift is applied).
	SystemMap string
	// ISF, when set, is a Volatility 3 symbol table (JSON, optionally .xz)
	// used for types (and symbols, if no System.map is given) instead of BTF.
	ISF    string
	Logger *slog.Logger
}

// Step is a timed bootstrap step.
type Step struct {
	Name     string        `json:"name"`
	Duration time.Duration `json:"duration_ns"`
}

// Kernel is a located Linux kernel in guest memory.
type Kernel struct {
	Mem      guestmem.Memory
	AS       *x86.AddressSpace
	Loc      Location
	Syms     *Symbols
	Kallsyms *KallsymsInfo
	Types    Types
	BTFSize  int
	BTFAddr  uint64 // where the BTF blob lies in the guest's kernel image
	Release  string
	Banner   string
	Steps    []Step
	log      *slog.Logger
	// patch sites in the kernel image, read once (see PatchSites)
	sitesMu sync.Mutex
	sites   []PatchSite
	// the d_dname methods of pseudo file systems (see pseudoPath)
	dnameOnce sync.Once
	dnames    map[uint64]pseudoNamer

	// modules' symbol tables, read once per module (ModuleSymbol)
	modSymMu sync.Mutex
	modSyms  map[Addr]*modSymtab
}

var releaseRE = regexp.MustCompile(`^Linux version (\S+)`)

// maxImageSize bounds the kernel image read during bootstrap.
const maxImageSize = 1 << 30

// Open locates the kernel in guest physical memory and loads its symbols
// and types.
func Open(mem guestmem.Memory, opt Options) (*Kernel, error) {
	log := opt.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	k := &Kernel{Mem: mem, log: log}
	step := func(name string, t0 time.Time) {
		k.Steps = append(k.Steps, Step{name, time.Since(t0)})
	}

	t0 := time.Now()
	var loc *Location
	var err error
	if len(opt.CPUs) > 0 {
		loc, err = locateFromRegisters(mem, opt.CPUs)
		if err != nil {
			log.Debug("CPU registers do not lead to the kernel; scanning memory", "err", err)
		}
	}
	if loc == nil {
		loc, err = locateByScan(mem)
		if err != nil {
			return nil, err
		}
	}
	k.Loc = *loc
	if k.AS, err = x86.NewAddressSpace(mem, loc.Root, loc.Levels); err != nil {
		return nil, err
	}
	step("locate", t0)
	log.Debug("kernel located", "text", fmt.Sprintf("%#x", loc.TextStart), "phys", fmt.Sprintf("%#x", loc.PhysStart), "by", loc.Source)

	// The image is physically contiguous: read it in one piece.
	t0 = time.Now()
	size := loc.ImageEnd - loc.TextStart
	if size > maxImageSize {
		return nil, fmt.Errorf("kernel image mapping of %d bytes is implausibly large", size)
	}
	var img []byte
	if d, ok := mem.(guestmem.Direct); ok {
		img, _ = d.Slice(loc.PhysStart, int(size))
	}
	if img == nil {
		// a copy only while the kernel is opened: nothing keeps a reference
		// (symbol names and BTF are copied out)
		img = BorrowBuffer(int(size))
		defer ReturnBuffer(img)
		n, err := mem.ReadAt(img, int64(loc.PhysStart))
		if err != nil {
			// the image's last 2 MiB slot may run past the end of RAM
			if n < 16<<20 {
				return nil, fmt.Errorf("read kernel image at physical %#x: %w", loc.PhysStart, err)
			}
			img = img[:n]
		}
	}
	step("read image", t0)

	t0 = time.Now()
	switch {
	case opt.SystemMap != "":
		if err := k.loadSystemMap(opt.SystemMap); err != nil {
			return nil, err
		}
	case opt.ISF != "":
		// symbols come with the ISF below
	default:
		if err := k.loadKallsyms(img); err != nil {
			return nil, err
		}
	}
	step("kallsyms", t0)

	t0 = time.Now()
	if opt.ISF != "" {
		isf, err := LoadISF(opt.ISF)
		if err != nil {
			return nil, err
		}
		k.Types = isf
		if k.Syms == nil {
			if k.Syms, err = isf.Symbols(k.Loc.TextStart); err != nil {
				return nil, err
			}
		}
	} else if err := k.loadBTF(img); err != nil {
		return nil, err
	}
	step("btf", t0)

	k.Banner, k.Release = k.readBanner()
	// Prefer the kernel's own top-level table (init_top_pgt) as the root.
	if a, ok := k.Syms.Lookup("init_top_pgt"); ok {
		if p, ok := k.Loc.ImagePhys(a); ok && p != k.Loc.Root {
			if l, err := imageMapping(mem, p, k.Loc.Levels); err == nil && l.TextStart == k.Loc.TextStart {
				k.Loc.Root = p
				k.AS, _ = x86.NewAddressSpace(mem, p, k.Loc.Levels)
			}
		}
	}
	return k, nil
}

func (k *Kernel) loadKallsyms(img []byte) error {
	cands := findDigitRuns(img, 64)
	if len(cands) == 0 {
		return fmt.Errorf("no kallsyms token table in the %s kernel image at %#x (kernel built without CONFIG_KALLSYMS? give --system-map)", humanBytes(uint64(len(img))), k.Loc.TextStart)
	}
	var errs []error
	for _, d := range cands {
		syms, info, err := ParseKallsyms(img, k.Loc.TextStart, d, k.Loc.TextStart)
		if err != nil {
			errs = append(errs, fmt.Errorf("candidate at %#x: %w", k.Loc.TextStart+uint64(d), err))
			continue
		}
		k.Syms = NewSymbols("kallsyms in guest memory", syms)
		k.Kallsyms = info
		return nil
	}
	return fmt.Errorf("kallsyms not found in the kernel image: %w", errors.Join(errs...))
}

func (k *Kernel) loadSystemMap(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--system-map: %w", err)
	}
	syms, err := ParseSystemMap(string(b))
	if err != nil {
		return fmt.Errorf("--system-map %s: %w", path, err)
	}
	var text uint64
	for _, s := range syms {
		if s.Name == "_text" {
			text = s.Addr
		}
	}
	if text == 0 {
		return fmt.Errorf("--system-map %s: no _text symbol", path)
	}
	shift := k.Loc.TextStart - text
	for i := range syms {
		if syms[i].Type != 'A' && syms[i].Type != 'a' {
			syms[i].Addr += shift
		}
	}
	k.Syms = NewSymbols("System.map "+path, syms)
	return nil
}

// btfCache keeps the types of the kernel builds seen, by the hash of their
// BTF: a daemon watching many VMs of one build decodes its types once.
var btfCache = struct {
	sync.Mutex
	m map[[sha256.Size]byte]*btfTypes
}{m: map[[sha256.Size]byte]*btfTypes{}}

const maxCachedBTF = 16

// BTF header: magic 0xeb9f, version 1, flags 0, header length 24.
var btfMagic = []byte{0x9f, 0xeb, 0x01, 0x00, 0x18, 0x00, 0x00, 0x00}

// maxBTFSize bounds the BTF blob (vmlinux BTF is 4-6 MB today).
const maxBTFSize = 64 << 20

// btfBlobSize validates a BTF header at b and returns the blob's size.
func btfBlobSize(b []byte) (int, error) {
	if len(b) < 24 || !bytes.HasPrefix(b, btfMagic) {
		return 0, errors.New("no BTF header")
	}
	le := func(o int) uint64 { return uint64(b[o]) | uint64(b[o+1])<<8 | uint64(b[o+2])<<16 | uint64(b[o+3])<<24 }
	typeOff, typeLen, strOff, strLen := le(8), le(12), le(16), le(20)
	end := typeOff + typeLen
	if e := strOff + strLen; e > end {
		end = e
	}
	if typeOff != 0 || strOff < typeLen || strLen == 0 || strLen > maxBTFSize || end > maxBTFSize {
		return 0, fmt.Errorf("BTF header with implausible sections (types %d+%d, strings %d+%d)", typeOff, typeLen, strOff, strLen)
	}
	size := int(24 + end)
	if size > len(b) {
		return 0, fmt.Errorf("BTF blob of %d bytes runs past the end of the image", size)
	}
	strs := b[24+strOff : 24+strOff+strLen]
	if strs[0] != 0 || strs[len(strs)-1] != 0 {
		return 0, errors.New("BTF string section is not NUL-delimited")
	}
	return size, nil
}

// findBTF returns the offset and size of the kernel's BTF in img: at
// __start_BTF when kallsyms has it, else the first valid header.
func findBTF(img []byte, textStart uint64, syms *Symbols) (int, int, error) {
	if syms != nil {
		if a, ok := syms.Lookup("__start_BTF"); ok && a >= textStart && a-textStart < uint64(len(img)) {
			off := int(a - textStart)
			if n, err := btfBlobSize(img[off:]); err == nil {
				return off, n, nil
			}
		}
	}
	var lastErr error = errors.New("no BTF header in the kernel image (kernel built without CONFIG_DEBUG_INFO_BTF? give --isf)")
	for off := 0; ; {
		i := bytes.Index(img[off:], btfMagic)
		if i < 0 {
			return 0, 0, lastErr
		}
		off += i
		n, err := btfBlobSize(img[off:])
		if err == nil {
			return off, n, nil
		}
		lastErr = err
		off++
	}
}

func (k *Kernel) loadBTF(img []byte) error {
	off, n, err := findBTF(img, k.Loc.TextStart, k.Syms)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(img[off : off+n])
	k.BTFSize = n
	k.BTFAddr = k.Loc.TextStart + uint64(off)
	// VMs that run the same kernel build share its types
	btfCache.Lock()
	defer btfCache.Unlock()
	if t, ok := btfCache.m[sum]; ok {
		k.Types = t
		return nil
	}
	blob := append([]byte(nil), img[off:off+n]...)
	spec, err := btf.LoadSpecFromReader(bytes.NewReader(blob))
	if err != nil {
		return fmt.Errorf("parse BTF at %#x (%d bytes): %w", k.Loc.TextStart+uint64(off), n, err)
	}
	t := newBTFTypes(spec, blob, "BTF in guest memory")
	if len(btfCache.m) >= maxCachedBTF {
		clear(btfCache.m)
	}
	btfCache.m[sum] = t
	k.Types = t
	return nil
}

func (k *Kernel) readBanner() (banner, release string) {
	a, ok := k.Syms.Lookup("linux_banner")
	if !ok {
		return "", ""
	}
	b, err := k.ReadCString(a, 512)
	if err != nil {
		return "", ""
	}
	banner = strings.TrimSpace(b)
	if m := releaseRE.FindStringSubmatch(banner); m != nil {
		release = m[1]
	}
	return banner, release
}

// ReadCString reads a NUL-terminated string of at most max bytes at a
// kernel virtual address. It does not read past the page the terminator
// is on, so strings at the end of mapped memory work.
func (k *Kernel) ReadCString(va uint64, max int) (string, error) {
	return readCString(k.AS, va, max)
}

func readCString(as *x86.AddressSpace, va uint64, max int) (string, error) {
	var out []byte
	for len(out) < max {
		n := int(x86.PageSize4K - va%x86.PageSize4K)
		if n > max-len(out) {
			n = max - len(out)
		}
		buf := make([]byte, n)
		if _, err := as.ReadAt(buf, int64(va)); err != nil {
			return string(out), err
		}
		if i := bytes.IndexByte(buf, 0); i >= 0 {
			return string(append(out, buf[:i]...)), nil
		}
		out = append(out, buf...)
		va += uint64(n)
	}
	return string(out), nil
}

// IsKernelPtr reports whether a is in the kernel half of the address
// space: at or above 0xffff800000000000 with 4-level paging, at or above
// 0xff00000000000000 with 5 levels (LA57), where the direct map, and so
// every allocated kernel object, sits far lower than with 4 levels.
func (k *Kernel) IsKernelPtr(a uint64) bool { return a >= KernelHalf(k.Loc.Levels) }

// KernelHalf is the lowest kernel address of x86-64 with that many paging
// levels (the canonical upper half).
func KernelHalf(levels int) uint64 {
	if levels == 5 {
		return 0xff00000000000000
	}
	return 0xffff800000000000
}

// Symbol returns the address of a kernel symbol.
func (k *Kernel) Symbol(name string) (uint64, error) { return k.Syms.MustLookup(name) }

// Uint64 reads a 64-bit value at a kernel virtual address.
func (k *Kernel) Uint64(va uint64) (uint64, error) { return k.AS.Uint64(va) }

// Flush drops cached page tables; call it between reads of a running guest.
func (k *Kernel) Flush() { k.AS.Flush() }

// BTF returns the kernel's BTF, or nil when types came from elsewhere.
func (k *Kernel) BTF() *btf.Spec {
	if b, ok := k.Types.(*btfTypes); ok {
		return b.spec
	}
	return nil
}

// BootID tells boots of a kernel apart: it hashes the KASLR placement and
// init_task's stack canary, a random value the kernel draws once per boot.
// Values the kernel writes while it boots (.data..ro_after_init) can only
// be compared within one boot.
func (k *Kernel) BootID() string {
	h := sha256.New()
	binary.Write(h, binary.LittleEndian, [2]uint64{k.Loc.TextStart, k.Loc.PhysStart})
	if a, ok := k.Syms.Lookup("init_task"); ok {
		if t, err := k.Types.Struct("task_struct"); err == nil {
			if off, err := t.FieldOffset("stack_canary"); err == nil {
				if v, err := k.Uint64(a + off); err == nil {
					binary.Write(h, binary.LittleEndian, v)
				}
			}
		}
	}
	return hex.EncodeToString(h.Sum(nil)[:12])
}

// Booted reports whether the kernel has finished booting: its
// system_state (enum system_states) has reached SYSTEM_RUNNING, which
// init/main.c sets after freeing init memory and write-protecting
// read-only data. Before that the kernel still writes its own text and
// rodata, so a baseline taken then is wrong.
func (k *Kernel) Booted() (bool, error) {
	a, ok := k.Syms.Lookup("system_state")
	if !ok {
		return false, errors.New("kernel symbol system_state not found")
	}
	running, err := k.Types.EnumConstant("SYSTEM_RUNNING")
	if err != nil {
		return false, fmt.Errorf("enum system_states: %w", err)
	}
	var b [4]byte
	if _, err := k.AS.ReadAt(b[:], int64(a)); err != nil {
		return false, fmt.Errorf("system_state at %#x: %w", a, err)
	}
	return int64(int32(binary.LittleEndian.Uint32(b[:]))) >= running, nil
}
