package linux

import (
	"errors"
	"fmt"
	"strings"
)

// LogRecord is one record of the kernel log.
type LogRecord struct {
	Seq      uint64 `json:"seq"`
	TimeNs   uint64 `json:"ts_nsec"`
	Level    uint8  `json:"level"`
	Facility uint8  `json:"facility"`
	Text     string `json:"text"`
}

// Format prints the record the way dmesg does: "[    1.234567] text",
// one prefix per line.
func (r LogRecord) Format() string {
	prefix := fmt.Sprintf("[%5d.%06d] ", r.TimeNs/1e9, r.TimeNs%1e9/1e3)
	lines := strings.Split(r.Text, "\n")
	for i := range lines {
		lines[i] = prefix + lines[i]
	}
	return strings.Join(lines, "\n")
}

// limits for the printk ring buffer
const (
	maxLogDescBits  = 24
	maxLogDataBits  = 30
	maxPrintkStruct = 1024 // bytes of one prb_desc or printk_info
)

// Dmesg reads the kernel log from the lockless printk ring buffer (Linux
// 5.10+): descriptors (state and id), infos (sequence, time, length) and
// the text data ring.
func (k *Kernel) Dmesg() ([]LogRecord, error) {
	prbp, err := k.Symbol("prb")
	if err != nil {
		return nil, fmt.Errorf("kernel log: %w (kernels before 5.10 keep the log differently; not supported)", err)
	}
	pv, err := k.Uint64(prbp)
	if err != nil {
		return nil, err
	}
	rb, err := k.Object("printk_ringbuffer", pv)
	if err != nil {
		return nil, err
	}
	f := &fields{v: rb}
	countBits := f.uint("desc_ring.count_bits")
	descs := f.ptr("desc_ring.descs")
	infos := f.ptr("desc_ring.infos")
	headID := f.uint("desc_ring.head_id")
	tailID := f.uint("desc_ring.tail_id")
	sizeBits := f.uint("text_data_ring.size_bits")
	data := f.ptr("text_data_ring.data")
	if len(f.errs) > 0 {
		return nil, fmt.Errorf("printk ring buffer: %s", strings.Join(f.errs, "; "))
	}
	if countBits == 0 || countBits > maxLogDescBits || sizeBits == 0 || sizeBits > maxLogDataBits {
		return nil, fmt.Errorf("printk ring buffer at %#x has implausible sizes (2^%d descriptors, 2^%d bytes)", pv, countBits, sizeBits)
	}
	dt, err := k.Types.Struct("prb_desc")
	if err != nil {
		return nil, err
	}
	it, err := k.Types.Struct("printk_info")
	if err != nil {
		return nil, err
	}
	// prb_desc is 24 bytes and printk_info 88 on x86-64: a layout far
	// beyond that would make the arrays below huge
	if dt.Size == 0 || dt.Size > maxPrintkStruct || it.Size == 0 || it.Size > maxPrintkStruct {
		return nil, fmt.Errorf("printk ring buffer: implausible prb_desc (%d bytes) or printk_info (%d bytes)", dt.Size, it.Size)
	}
	count := uint64(1) << countBits
	size := uint64(1) << sizeBits
	descBuf, err := k.readTable("printk descriptors", descs, count*dt.Size, count*maxPrintkStruct)
	if err != nil {
		return nil, err
	}
	infoBuf, err := k.readTable("printk infos", infos, count*it.Size, count*maxPrintkStruct)
	if err != nil {
		return nil, err
	}
	dataBuf, err := k.readTable("printk text ring", data, size, size)
	if err != nil {
		return nil, err
	}
	committed, err1 := k.Types.EnumConstant("desc_committed")
	finalized, err2 := k.Types.EnumConstant("desc_finalized")
	if err1 != nil || err2 != nil {
		return nil, errors.Join(err1, err2)
	}
	// prb_desc has had state_var since the lockless ring came (5.10), so
	// its absence is an error like the others, not offset 0
	svOff, err0 := dt.FieldOffset("state_var")
	beginOff, err1 := dt.FieldOffset("text_blk_lpos.begin")
	nextOff, err2 := dt.FieldOffset("text_blk_lpos.next")
	if err0 != nil || err1 != nil || err2 != nil {
		return nil, errors.Join(err0, err1, err2)
	}
	// state_var: the top two bits are the state, the rest the id
	const flagsShift = 62
	idMask := uint64(1)<<flagsShift - 1
	var out []LogRecord
	for id, n := tailID&idMask, uint64(0); n <= count; id, n = (id+1)&idMask, n+1 {
		i := id & (count - 1)
		// the buffers hold count whole structs; the offsets come from a
		// checked layout but are read through checked helpers all the same
		d, _ := bytesAt(descBuf, i*dt.Size, dt.Size)
		ib, _ := bytesAt(infoBuf, i*it.Size, it.Size)
		sv, ok := u64At(d, svOff)
		if !ok {
			return out, fmt.Errorf("printk descriptor %d: state_var at byte %d outside its %d bytes", i, svOff, dt.Size)
		}
		st := int64(sv >> flagsShift)
		if sv&idMask == id && (st == committed || st == finalized) {
			info := Value{k: k, Type: it, buf: ib}
			ifl := &fields{v: info}
			rec := LogRecord{Seq: ifl.uint("seq"), TimeNs: ifl.uint("ts_nsec"), Level: uint8(ifl.uint("level")), Facility: uint8(ifl.uint("facility"))}
			textLen := ifl.uint("text_len")
			begin, ok1 := u64At(d, beginOff)
			next, ok2 := u64At(d, nextOff)
			if !ok1 || !ok2 {
				return out, fmt.Errorf("printk descriptor %d: text_blk_lpos outside its %d bytes", i, dt.Size)
			}
			if text, ok := ringText(dataBuf, sizeBits, begin, next, textLen); ok {
				rec.Text = text
				out = append(out, rec)
			}
		}
		if id == headID&idMask {
			break
		}
	}
	return out, nil
}

// ringText extracts a record's text from the data ring: a block is an
// id (unsigned long) followed by the text; a block that would wrap is
// stored whole at the start of the ring instead (get_data() in
// kernel/printk/printk_ringbuffer.c).
func ringText(ring []byte, sizeBits, begin, next, textLen uint64) (string, bool) {
	if begin&1 != 0 && next&1 != 0 { // data-less record
		return "", false
	}
	size := uint64(len(ring))
	wraps := func(lpos uint64) uint64 { return lpos >> sizeBits }
	var start, n uint64
	switch {
	case wraps(begin) == wraps(next) && begin < next:
		start, n = begin&(size-1), next-begin
	case wraps(begin+size) == wraps(next):
		start, n = 0, next&(size-1)
	default:
		return "", false
	}
	if n < 8 || start+n > size {
		return "", false
	}
	blk := ring[start+8 : start+n]
	if textLen > uint64(len(blk)) {
		textLen = uint64(len(blk))
	}
	return string(blk[:textLen]), true
}
