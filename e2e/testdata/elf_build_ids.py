# Ground truth for vmwatch libraries: for each pid given, every file that
# /proc/PID/maps maps from offset 0 and that is an ELF object: the address
# of that mapping and the GNU build id read from the file on disk (through
# /proc/PID/root, so files in other mount namespaces are found).
import struct
import sys


def build_id(path):
    try:
        with open(path, "rb") as f:
            h = f.read(64)
            if len(h) < 64 or h[:4] != b"\x7fELF":
                return None
            if h[4] != 2 or h[5] != 1:
                return ""
            phoff, = struct.unpack_from("<Q", h, 32)
            phentsize, phnum = struct.unpack_from("<HH", h, 54)
            f.seek(phoff)
            ph = f.read(phentsize * phnum)
            for i in range(phnum):
                t, = struct.unpack_from("<I", ph, i * phentsize)
                if t != 4:  # PT_NOTE
                    continue
                off, = struct.unpack_from("<Q", ph, i * phentsize + 8)
                size, = struct.unpack_from("<Q", ph, i * phentsize + 32)
                f.seek(off)
                n = f.read(size)
                while len(n) >= 12:
                    namesz, descsz, typ = struct.unpack_from("<III", n)
                    ne = 12 + (namesz + 3) // 4 * 4
                    de = ne + (descsz + 3) // 4 * 4
                    if n[12:12 + namesz].rstrip(b"\0") == b"GNU" and typ == 3:
                        return n[ne:ne + descsz].hex()
                    n = n[de:]
            return ""
    except OSError:
        return None


for pid in sys.argv[1:]:
    seen = set()
    try:
        maps = open("/proc/%s/maps" % pid).read().splitlines()
    except OSError:
        continue
    for line in maps:
        p = line.split(None, 5)
        if len(p) < 6 or p[2] != "00000000" or p[4] == "0" or p[5] in seen:
            continue
        seen.add(p[5])
        b = build_id("/proc/%s/root%s" % (pid, p[5]))
        if b is not None:
            print(pid, int(p[0].split("-")[0], 16), b or "-", p[5])
