package linux

import (
	"encoding/binary"
	"fmt"
)

// BTF kinds (include/uapi/linux/btf.h) and the size of what follows each
// type's 12-byte header.
const (
	btfKindInt       = 1
	btfKindArray     = 3
	btfKindStruct    = 4
	btfKindUnion     = 5
	btfKindEnum      = 6
	btfKindFuncProto = 13
	btfKindVar       = 14
	btfKindDatasec   = 15
	btfKindDeclTag   = 17
	btfKindEnum64    = 19
	btfKindMax       = 19
)

// btfScan walks the raw type section of a BTF blob once, without building
// types: it counts the types and collects every enumerator's value (what
// EnumConstant needs), which decoding the whole spec would cost tens of
// megabytes for.
func btfScan(blob []byte) (enums map[string]int64, count int, err error) {
	if len(blob) < 24 {
		return nil, 0, fmt.Errorf("BTF blob of %d bytes", len(blob))
	}
	le := binary.LittleEndian
	hdrLen := uint64(le.Uint32(blob[4:]))
	typeOff, typeLen := uint64(le.Uint32(blob[8:])), uint64(le.Uint32(blob[12:]))
	strOff, strLen := uint64(le.Uint32(blob[16:])), uint64(le.Uint32(blob[20:]))
	if hdrLen < 24 || hdrLen+typeOff+typeLen > uint64(len(blob)) || hdrLen+strOff+strLen > uint64(len(blob)) {
		return nil, 0, fmt.Errorf("BTF header out of bounds")
	}
	types := blob[hdrLen+typeOff : hdrLen+typeOff+typeLen]
	strs := blob[hdrLen+strOff : hdrLen+strOff+strLen]
	name := func(off uint32) string {
		if uint64(off) >= uint64(len(strs)) {
			return ""
		}
		s := strs[off:]
		for i, c := range s {
			if c == 0 {
				return string(s[:i])
			}
		}
		return ""
	}
	enums = map[string]int64{}
	for p := 0; p+12 <= len(types); count++ {
		info := le.Uint32(types[p+4:])
		kind, vlen := int(info>>24&0x1f), int(info&0xffff)
		signed := info&(1<<31) != 0
		p += 12
		var extra int
		switch kind {
		case btfKindInt, btfKindVar, btfKindDeclTag:
			extra = 4
		case btfKindArray:
			extra = 12
		case btfKindStruct, btfKindUnion, btfKindDatasec:
			extra = 12 * vlen
		case btfKindEnum, btfKindFuncProto:
			extra = 8 * vlen
		case btfKindEnum64:
			extra = 12 * vlen
		default:
			if kind == 0 || kind > btfKindMax {
				return enums, count, fmt.Errorf("BTF type %d has unknown kind %d", count+1, kind)
			}
		}
		if p+extra > len(types) {
			return enums, count, fmt.Errorf("BTF type %d runs past the type section", count+1)
		}
		switch kind {
		case btfKindEnum:
			for i := 0; i < vlen; i++ {
				e := types[p+8*i:]
				v := int64(int32(le.Uint32(e[4:])))
				if !signed {
					v = int64(le.Uint32(e[4:]))
				}
				if n := name(le.Uint32(e)); n != "" {
					if _, dup := enums[n]; !dup {
						enums[n] = v
					}
				}
			}
		case btfKindEnum64:
			for i := 0; i < vlen; i++ {
				e := types[p+12*i:]
				v := int64(uint64(le.Uint32(e[4:])) | uint64(le.Uint32(e[8:]))<<32)
				if n := name(le.Uint32(e)); n != "" {
					if _, dup := enums[n]; !dup {
						enums[n] = v
					}
				}
			}
		}
		p += extra
	}
	return enums, count, nil
}
