package guestmem

import "testing"

// FuzzParseDump: any bytes give a memory map or an error, never a panic,
// and reads inside the reported ranges succeed.
func FuzzParseDump(f *testing.F) {
	f.Add(buildELFCore([]Range{{0, 4096}}, [][]byte{fakeRAM(4096)}, 0x1000))
	f.Add(append(WriteLiMEHeader(0, 4096), fakeRAM(4096)...))
	f.Add([]byte("\x7fELF\x02\x01\x01"))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := ParseDump("fuzz", data, nil)
		if err != nil {
			return
		}
		for _, r := range d.Ranges() {
			b := make([]byte, min(64, int(r.Size())))
			if _, err := d.ReadAt(b, int64(r.Start)); err != nil {
				t.Fatalf("read inside reported range %v: %v", r, err)
			}
		}
	})
}

// FuzzParseMtree: QEMU's text output parsed without panics.
func FuzzParseMtree(f *testing.F) {
	f.Add(mtreeSample)
	f.Add("FlatView #0\n AS \"memory\"\n  0-ff (prio 0, ram): x @zz\n")
	f.Fuzz(func(t *testing.T, s string) {
		fr, err := ParseMtree(s)
		if err != nil {
			return
		}
		for _, r := range fr {
			if r.End <= r.Start {
				t.Fatalf("inverted range %+v", r)
			}
		}
	})
}
