package backup

import (
	"encoding/json"
	"testing"
)

// FuzzParsePoint: restore point metadata from a damaged or forged
// repository is rejected or accepted, never a panic; what is accepted is
// safe to restore from (segment count and size agree).
func FuzzParsePoint(f *testing.F) {
	good, _ := json.Marshal(&Point{Domain: "web1", Disks: []Disk{{Target: "vda", Size: 5 << 20, SegmentSize: SegmentSize,
		Segments: []Segment{{Object: "a1", SHA256: string(make([]byte, 64))}, {Object: "b2", SHA256: string(make([]byte, 64))}}}}})
	f.Add(good)
	f.Add([]byte(`{"disks":[{"target":"vda","size":-1,"segment_size":4194304,"segments":[]}]}`))
	f.Add([]byte(`{"disks":[{"target":"vda","size":9007199254740993,"segment_size":1,"segments":null}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := parsePoint(b)
		if err != nil {
			return
		}
		for _, d := range p.Disks {
			if d.SegmentSize != SegmentSize || int64(len(d.Segments)) != nsegs(d.Size) || d.Size < 0 {
				t.Fatalf("accepted an unreadable disk: %+v", d)
			}
		}
	})
}
