package target

import "testing"

func TestQEMUArgs(t *testing.T) {
	for _, c := range []struct {
		args    []string
		machine string
		size    uint64
	}{
		{[]string{"qemu-system-x86_64", "-machine", "q35,memory-backend=mem", "-m", "4096M"}, "q35", 4 << 30},
		{[]string{"/usr/bin/qemu-system-x86_64", "-machine", "pc-q35-7.2,usb=off", "-m", "size=524288k"}, "pc-q35-7.2", 512 << 20},
		{[]string{"qemu-system-x86_64", "-M", "type=pc", "-m", "2G"}, "pc", 2 << 30},
		{[]string{"qemu-kvm", "-m", "1024"}, "pc", 1 << 30},
	} {
		m, s, err := qemuArgs(c.args)
		if err != nil || m != c.machine || s != c.size {
			t.Errorf("%v: %q %d %v", c.args, m, s, err)
		}
	}
	if _, _, err := qemuArgs([]string{"/sbin/init"}); err == nil {
		t.Error("non-QEMU process accepted")
	}
}
