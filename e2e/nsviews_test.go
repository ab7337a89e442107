package e2e

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/vmwatch/vmwatch/testvm"
)

// The guest-wide views (mounts, ifaces, iomem) against the guest's own /proc and
// tools.

// TestGuestViews runs mounts, ifaces and iomem on both kernels' standard
// guests.
func TestGuestViews(t *testing.T) {
	forEachKernel(t, func(t *testing.T, series string) {
		vm := standard(t, series)
		tg := fmt.Sprintf("pid:%d", vm.PID())
		t.Run("mounts", func(t *testing.T) { checkMounts(t, vm, tg) })
		t.Run("ifaces", func(t *testing.T) { checkIfaces(t, vm, tg, false) })
		t.Run("iomem", func(t *testing.T) { checkIomem(t, vm, tg) })
	})
}

// mountSleeper runs in the mount namespace plantMounts makes.
const mountSleeper = "sleep 1000030"

// plantMounts adds, once per guest: a read-only nosuid tmpfs on a path
// with a space, a bind mount of a subdirectory made shared, and a process
// in a mount namespace of its own with a mount only it sees.
func plantMounts(t *testing.T, vm *testvm.VM) {
	t.Helper()
	script := `[ -e /tmp/vmw-mnt.pid ] || { mkdir -p "/tmp/vmw m" /tmp/vmw-bind /tmp/vmw-ns && ` +
		`mount -t tmpfs -o ro,nosuid,size=1m vmw-src "/tmp/vmw m" && mount --bind /sys/kernel /tmp/vmw-bind && ` +
		`mount --make-shared /tmp/vmw-bind && ` +
		`{ unshare -m sh -c 'mount -t tmpfs vmw-ns /tmp/vmw-ns; echo $$ > /tmp/vmw-mnt.pid; exec ` + mountSleeper + `' ` +
		`</dev/null >/dev/null 2>/tmp/vmw-mnt.err & sleep 1; }; cat /tmp/vmw-mnt.err; }`
	out, err := vm.Run(script)
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(out) != "" {
		t.Logf("planting the mounts: %s", out)
	}
}

// ourMountNS is a namespace in mounts' JSON.
type ourMountNS struct {
	Inum   uint64  `json:"ns"`
	PIDs   []int64 `json:"pids"`
	Reader int64   `json:"reader"`
	Mounts []struct {
		ID           int64    `json:"mount_id"`
		ParentID     int64    `json:"parent_id"`
		Dev          string   `json:"dev"`
		Root         string   `json:"root"`
		MountPoint   string   `json:"mount_point"`
		Visible      bool     `json:"visible"`
		Options      string   `json:"options"`
		Propagation  []string `json:"propagation"`
		FSType       string   `json:"fstype"`
		Source       string   `json:"source"`
		SuperOptions string   `json:"super_options"`
		Errors       []string `json:"errors"`
	} `json:"mounts"`
	Errors []string `json:"errors"`
}

var mntNSLink = regexp.MustCompile(`^## (\d+) mnt:\[(\d+)\]$`)

// checkMounts compares every namespace's mounts with the mountinfo of the
// process vmwatch read it as: the same lines in the same order, except
// that of the super block's options only the generic ones must match.
func checkMounts(t *testing.T, vm *testvm.VM, tg string) {
	plantMounts(t, vm)
	out, err := vm.Run("cat /tmp/vmw-mnt.pid")
	if err != nil {
		t.Fatal(err)
	}
	sleeper, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
	if err != nil {
		t.Fatalf("pid of %q: %q", mountSleeper, out)
	}
	var bad []string
	for try := 0; try < 2; try++ {
		bad = nil
		var ours []ourMountNS
		vmwatchJSON(t, &ours, "mounts", "--all", "-t", tg)
		var readers []string
		for _, ns := range ours {
			readers = append(readers, strconv.FormatInt(ns.Reader, 10))
		}
		out, err := vm.Run(`for p in ` + strings.Join(readers, " ") + `; do echo "## $p $(readlink /proc/$p/ns/mnt)"; cat /proc/$p/mountinfo; done`)
		if err != nil {
			t.Fatal(err)
		}
		guest := map[int64][]string{}
		guestNS := map[int64]uint64{}
		var cur int64 = -1
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if m := mntNSLink.FindStringSubmatch(l); m != nil {
				cur, _ = strconv.ParseInt(m[1], 10, 64)
				guestNS[cur], _ = strconv.ParseUint(m[2], 10, 64)
				guest[cur] = []string{}
				continue
			}
			if cur >= 0 {
				guest[cur] = append(guest[cur], l)
			}
		}
		lines, hidden := 0, 0
		planted := map[string]bool{}
		for _, ns := range ours {
			if _, ok := guest[ns.Reader]; !ok {
				// a short-lived process (a udev worker) that ended since
				if ns.Reader == 1 || ns.Reader == sleeper {
					bad = append(bad, fmt.Sprintf("namespace %d: pid %d gave no mountinfo", ns.Inum, ns.Reader))
				}
				continue
			}
			if guestNS[ns.Reader] != ns.Inum {
				bad = append(bad, fmt.Sprintf("pid %d: vmwatch says mount namespace %d, the guest mnt:[%d]", ns.Reader, ns.Inum, guestNS[ns.Reader]))
			}
			var vis []string
			visIDs := map[int64]bool{}
			for _, m := range ns.Mounts {
				if len(m.Errors) > 0 {
					bad = append(bad, fmt.Sprintf("mount %d: errors %v", m.ID, m.Errors))
				}
				if !m.Visible {
					hidden++
					continue
				}
				visIDs[m.ID] = true
				l := fmt.Sprintf("%d %d %s %s %s %s", m.ID, m.ParentID, m.Dev, escMount(m.Root), escMount(m.MountPoint), m.Options)
				for _, p := range m.Propagation {
					l += " " + p
				}
				vis = append(vis, l+" - "+escMount(m.FSType)+" "+escMount(m.Source)+" "+m.SuperOptions)
				switch {
				case m.MountPoint == "/tmp/vmw m" && m.Source == "vmw-src" && m.Options == "ro,nosuid,relatime" && m.FSType == "tmpfs":
					planted["tmpfs with a space"] = true
				case m.MountPoint == "/tmp/vmw-bind" && m.Root == "/kernel" && ns.Reader != sleeper && len(m.Propagation) > 0 && strings.HasPrefix(m.Propagation[0], "shared:"):
					planted["shared bind mount"] = true
				case m.MountPoint == "/tmp/vmw-ns" && m.Source == "vmw-ns" && ns.Reader == sleeper && len(ns.PIDs) == 1:
					planted["namespace of its own"] = true
				}
			}
			g := guest[ns.Reader]
			if len(g) != len(vis) {
				bad = append(bad, fmt.Sprintf("pid %d (namespace %d): vmwatch has %d visible mounts, /proc/%d/mountinfo %d:\nvmwatch %q\nguest   %q", ns.Reader, ns.Inum, len(vis), ns.Reader, len(g), vis, g))
				continue
			}
			for i := range g {
				if !sameMountLine(vis[i], g[i]) {
					bad = append(bad, fmt.Sprintf("pid %d line %d:\nvmwatch %s\nguest   %s", ns.Reader, i+1, vis[i], g[i]))
				}
				lines++
			}
			for _, m := range ns.Mounts {
				if !m.Visible && containsMountID(g, m.ID) {
					bad = append(bad, fmt.Sprintf("mount %d: vmwatch says outside pid %d's root, but its mountinfo shows it", m.ID, ns.Reader))
				}
			}
		}
		if len(planted) != 3 {
			bad = append(bad, fmt.Sprintf("planted mounts found: %v (want all three)", planted))
		}
		if len(bad) == 0 {
			t.Logf("%d mount namespaces, %d mountinfo lines equal (%d mounts outside their reader's root)", len(ours), lines, hidden)
			if lines < 8 {
				t.Errorf("only %d lines compared", lines)
			}
			return
		}
		t.Logf("try %d: %d differences (mounts may have changed meanwhile): %s", try+1, len(bad), bad[0])
	}
	t.Error(strings.Join(bad, "\n"))
}

// escMount escapes as mountinfo does: space, tab, newline, backslash as \ooo.
func escMount(s string) string {
	r := strings.NewReplacer(" ", `\040`, "\t", `\011`, "\n", `\012`, `\`, `\134`)
	return r.Replace(s)
}

// sameMountLine compares a line of vmwatch with one of mountinfo: all
// equal up to the super block's options, of which vmwatch's (the generic
// ones) must be where mountinfo's begin.
func sameMountLine(ours, guest string) bool {
	oi, gi := strings.LastIndexByte(ours, ' '), strings.LastIndexByte(guest, ' ')
	if oi < 0 || gi < 0 || ours[:oi] != guest[:gi] {
		return false
	}
	o, g := ours[oi+1:], guest[gi+1:]
	return g == o || strings.HasPrefix(g, o+",")
}

func containsMountID(lines []string, id int64) bool {
	p := strconv.FormatInt(id, 10) + " "
	for _, l := range lines {
		if strings.HasPrefix(l, p) {
			return true
		}
	}
	return false
}

// netSleeper runs in the network namespace plantNet makes.
const netSleeper = "sleep 1000040"

// plantNet makes, once per guest, a network namespace (with a mount
// namespace and a sysfs of its own) holding a dummy interface with two
// IPv4 addresses (one with a label), an MTU of 1400 and promiscuous mode
// set by hand. No packet leaves it: a dummy device drops what it is sent.
func plantNet(t *testing.T, vm *testvm.VM) int64 {
	t.Helper()
	script := `[ -e /tmp/vmw-net.pid ] || { unshare -mn sh -c 'mount -t sysfs sysfs /sys && ip link set lo up && ` +
		`ip link add vmw1 type dummy && ip link set vmw1 mtu 1400 && ip link set vmw1 up && ` +
		`ip addr add 10.97.0.5/16 dev vmw1 && ip addr add 10.97.9.9/24 dev vmw1 label vmw1:a && ` +
		`ip link set vmw1 promisc on && echo $$ > /tmp/vmw-net.pid && exec ` + netSleeper + `' ` +
		`</dev/null >/dev/null 2>/tmp/vmw-net.err & sleep 2; cat /tmp/vmw-net.err; }; cat /tmp/vmw-net.pid`
	out, err := vm.Run(script)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	pid, err := strconv.ParseInt(lines[len(lines)-1], 10, 64)
	if err != nil {
		t.Fatalf("planting the network namespace: %s", out)
	}
	return pid
}

// ourNetNS is a namespace in ifaces' JSON.
type ourNetNS struct {
	Inum       uint64  `json:"ns"`
	PIDs       []int64 `json:"pids"`
	Interfaces []struct {
		Index       int64    `json:"index"`
		Name        string   `json:"name"`
		MAC         string   `json:"mac"`
		MTU         uint64   `json:"mtu"`
		RawFlags    uint64   `json:"raw_flags"`
		Flags       []string `json:"flags"`
		Promiscuity uint64   `json:"promiscuity"`
		OperState   string   `json:"operstate"`
		Addrs       []struct {
			Family    string `json:"family"`
			Address   string `json:"address"`
			PrefixLen int    `json:"prefixlen"`
			Scope     string `json:"scope"`
			Label     string `json:"label"`
		} `json:"addrs"`
		Errors []string `json:"errors"`
	} `json:"interfaces"`
	Errors []string `json:"errors"`
}

var (
	ipLinkLine = regexp.MustCompile(`^(\d+): ([^:@ ]+)(?:@\S+)?: <([^>]*)> mtu (\d+) .*?link/\S+(?: ([0-9a-f:]+))?`)
	ipAddrLine = regexp.MustCompile(`^(\d+): (\S+)\s+(inet6?) ([0-9a-f.:]+)/(\d+) .*?scope (\S+)([^\\]*)`)
	ipPromisc  = regexp.MustCompile(` promiscuity (\d+) `)
	ipFlagTok  = regexp.MustCompile(`^([A-Z_-]*)([0-9a-f]*)$`)
	sysNetLine = regexp.MustCompile(`^sys (\S+) 0x([0-9a-f]+) (\S+)$`)
	nsLine     = regexp.MustCompile(`^## (\d+) net:\[(\d+)\]$`)
)

// busyboxIPFlags are the flags BusyBox's ip names (it prints others in hex).
var busyboxIPFlags = []string{"NO-CARRIER", "LOOPBACK", "BROADCAST", "POINTOPOINT", "MULTICAST", "NOARP", "UP", "LOWER_UP"}

// checkIfaces compares every network namespace that has a process with
// what ip -o link and ip -o addr show inside it (entered with nsenter),
// and the raw flags and operational state with sysfs where the process's
// /sys belongs to its network namespace (init's and the planted one's).
func checkIfaces(t *testing.T, vm *testvm.VM, tg string, iproute2 bool) {
	planted := plantNet(t, vm)
	if iproute2 {
		plantSniffer(t, vm)
	}
	var bad []string
	for try := 0; try < 2; try++ {
		bad = nil
		var ours []ourNetNS
		vmwatchJSON(t, &ours, "ifaces", "-t", tg)
		var cmd strings.Builder
		detail := "" // BusyBox's ip has no -d
		if iproute2 {
			detail = "-d"
		}
		for _, ns := range ours {
			if len(ns.PIDs) == 0 {
				continue
			}
			p := ns.PIDs[0]
			sys := ""
			if p == 1 || p == planted {
				sys = `; for d in /sys/class/net/*; do echo "sys ${d##*/} $(cat $d/flags) $(cat $d/operstate)"; done`
			}
			fmt.Fprintf(&cmd, `echo "## %d $(readlink /proc/%d/ns/net)"; nsenter -t %d -m -n sh -c 'ip %s -o link; ip -o addr%s'; `, p, p, p, detail, sys)
		}
		out, err := vm.Run(cmd.String() + "true")
		if err != nil {
			t.Fatal(err)
		}
		type gIf struct {
			name, mac    string
			mtu, promisc uint64
			flags        []string
			addrs        []string
		}
		guest := map[int64]map[int64]*gIf{} // reader pid -> index -> interface
		guestNS := map[int64]uint64{}
		sysFlags := map[int64]map[string][2]string{}
		var cur int64 = -1
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if m := nsLine.FindStringSubmatch(l); m != nil {
				cur, _ = strconv.ParseInt(m[1], 10, 64)
				guestNS[cur], _ = strconv.ParseUint(m[2], 10, 64)
				guest[cur] = map[int64]*gIf{}
				sysFlags[cur] = map[string][2]string{}
				continue
			}
			if cur < 0 {
				continue
			}
			if m := ipLinkLine.FindStringSubmatch(l); m != nil {
				idx, _ := strconv.ParseInt(m[1], 10, 64)
				mtu, _ := strconv.ParseUint(m[4], 10, 64)
				g := &gIf{name: m[2], mac: m[5], mtu: mtu}
				if pm := ipPromisc.FindStringSubmatch(l); pm != nil {
					g.promisc, _ = strconv.ParseUint(pm[1], 10, 64)
				}
				for _, f := range strings.Split(m[3], ",") {
					if fm := ipFlagTok.FindStringSubmatch(f); fm != nil && fm[1] != "" {
						g.flags = append(g.flags, fm[1])
					}
				}
				guest[cur][idx] = g
			} else if m := ipAddrLine.FindStringSubmatch(l); m != nil {
				idx, _ := strconv.ParseInt(m[1], 10, 64)
				if g := guest[cur][idx]; g != nil {
					a := m[3] + " " + m[4] + "/" + m[5] + " scope " + m[6]
					if m[3] == "inet" {
						rest := strings.Fields(m[7])
						if len(rest) > 0 {
							a += " label " + rest[len(rest)-1]
						}
					}
					g.addrs = append(g.addrs, a)
				}
			} else if m := sysNetLine.FindStringSubmatch(l); m != nil {
				sysFlags[cur][m[1]] = [2]string{m[2], m[3]}
			}
		}
		ifaces, addrs, sysCompared := 0, 0, 0
		found, sniffed := false, false
		for _, ns := range ours {
			if len(ns.Errors) > 0 {
				bad = append(bad, fmt.Sprintf("namespace %d: %v", ns.Inum, ns.Errors))
			}
			if len(ns.PIDs) == 0 {
				continue
			}
			p := ns.PIDs[0]
			gs, ok := guest[p]
			if !ok {
				bad = append(bad, fmt.Sprintf("namespace %d: pid %d gave no answer", ns.Inum, p))
				continue
			}
			if guestNS[p] != ns.Inum {
				bad = append(bad, fmt.Sprintf("pid %d: vmwatch says network namespace %d, the guest net:[%d]", p, ns.Inum, guestNS[p]))
			}
			if len(gs) != len(ns.Interfaces) {
				bad = append(bad, fmt.Sprintf("namespace %d: vmwatch has %d interfaces, ip -o link in pid %d's %d", ns.Inum, len(ns.Interfaces), p, len(gs)))
			}
			for _, d := range ns.Interfaces {
				g := gs[d.Index]
				if g == nil {
					bad = append(bad, fmt.Sprintf("namespace %d: interface %d %s is not in the guest's ip -o link", ns.Inum, d.Index, d.Name))
					continue
				}
				if len(d.Errors) > 0 {
					bad = append(bad, fmt.Sprintf("interface %s: errors %v", d.Name, d.Errors))
				}
				if d.Name != g.name || d.MTU != g.mtu || g.mac != "" && d.MAC != g.mac {
					bad = append(bad, fmt.Sprintf("interface %d: vmwatch %s mtu %d %s, ip %s mtu %d %s", d.Index, d.Name, d.MTU, d.MAC, g.name, g.mtu, g.mac))
				}
				if iproute2 && d.Promiscuity != g.promisc {
					bad = append(bad, fmt.Sprintf("interface %s: vmwatch promiscuity %d, ip -d link %d", d.Name, d.Promiscuity, g.promisc))
				}
				if d.Name == "vmw2" && d.Promiscuity > 0 && d.RawFlags&0x100 != 0 && !slices.Contains(d.Flags, "PROMISC") {
					sniffed = true
				}
				for _, f := range g.flags {
					if !slices.Contains(d.Flags, f) {
						bad = append(bad, fmt.Sprintf("interface %s: ip shows %s, vmwatch's flags are %v", d.Name, f, d.Flags))
					}
				}
				for _, f := range d.Flags {
					if (iproute2 || slices.Contains(busyboxIPFlags, f)) && !slices.Contains(g.flags, f) {
						bad = append(bad, fmt.Sprintf("interface %s: vmwatch shows %s, ip's flags are %v", d.Name, f, g.flags))
					}
				}
				var mine []string
				for _, a := range d.Addrs {
					s := fmt.Sprintf("%s %s/%d scope %s", a.Family, a.Address, a.PrefixLen, a.Scope)
					if a.Family == "inet" {
						s += " label " + a.Label
					}
					mine = append(mine, s)
				}
				if !slices.Equal(mine, g.addrs) {
					bad = append(bad, fmt.Sprintf("interface %s addresses:\nvmwatch %q\nip      %q", d.Name, mine, g.addrs))
				}
				if s, ok := sysFlags[p][d.Name]; ok {
					if strconv.FormatUint(d.RawFlags, 16) != s[0] || d.OperState != s[1] {
						bad = append(bad, fmt.Sprintf("interface %s: vmwatch flags %#x %s, sysfs 0x%s %s", d.Name, d.RawFlags, d.OperState, s[0], s[1]))
					}
					sysCompared++
				}
				ifaces++
				addrs += len(mine)
				if p == planted && d.Name == "vmw1" && d.MTU == 1400 && d.Promiscuity == 1 && slices.Contains(d.Flags, "PROMISC") && len(d.Addrs) >= 2 {
					found = true
				}
			}
		}
		if !found {
			bad = append(bad, "the planted interface vmw1 (mtu 1400, promiscuous, two addresses) was not found")
		}
		if iproute2 && !sniffed {
			bad = append(bad, "the sniffer on vmw2 (promiscuous, which ip does not show) was not found")
		}
		if len(bad) == 0 {
			t.Logf("%d network namespaces, %d interfaces and %d addresses equal to ip -o link/addr; %d raw flags equal to sysfs", len(ours), ifaces, addrs, sysCompared)
			if ifaces < 4 || sysCompared < 4 {
				t.Errorf("only %d interfaces and %d sysfs flags compared", ifaces, sysCompared)
			}
			return
		}
		t.Logf("try %d: %d differences: %s", try+1, len(bad), bad[0])
	}
	t.Error(strings.Join(bad, "\n"))
}

// plantSniffer starts, once per guest, a packet socket that asked for
// promiscuous mode (PACKET_ADD_MEMBERSHIP, PACKET_MR_PROMISC) on a dummy
// interface vmw2, as a sniffer does: dev->promiscuity rises, and ip shows
// no PROMISC (only ip -d's promiscuity count tells).
func plantSniffer(t *testing.T, vm *testvm.VM) {
	t.Helper()
	py := `import socket,struct,time; s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW,socket.htons(3)); ` +
		`s.bind(("vmw2",0)); s.setsockopt(263,1,struct.pack("iHH8s",socket.if_nametoindex("vmw2"),1,0,b"")); time.sleep(1000060)`
	out, err := vm.Run(`[ -e /tmp/vmw-sniff ] || { touch /tmp/vmw-sniff; ip link add vmw2 type dummy && ip link set vmw2 up && ` +
		`{ python3 -c '` + py + `' </dev/null >/dev/null 2>/tmp/vmw-sniff.err & sleep 3; cat /tmp/vmw-sniff.err; }; }`)
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(out) != "" {
		t.Logf("planting the sniffer: %s", out)
	}
}

// bashSleeper holds the write end of the planted bash's input.
const bashSleeper = "sleep 1000050"

// checkBash starts, once per guest, an interactive bash reading commands
// from a FIFO (one of them a multi-line loop, one unsetting HISTFILE),
// asks it for its own history with timestamps, and compares vmwatch's
// list for that bash with it, entry for entry. The bash runs in a session
// of its own: an interactive bash takes the foreground of its controlling
// terminal, here the serial console, whose shell's reads then fail (EIO).
func checkBash(t *testing.T, vm *testvm.VM, tg string) {
	script := `f=/tmp/vmw-bash.fifo; [ -e $f ] || { mkfifo $f && ( setsid bash -i <$f >/tmp/vmw-bash.out 2>&1 & ) && ` +
		`( ` + bashSleeper + ` >$f & ) && printf 'echo planted one\nid -u\nfor i in 1 2; do\n echo $i\ndone\nunset HISTFILE\n' >$f; sleep 2; }; ` +
		`rm -f /tmp/vmw-hist; echo 'HISTTIMEFORMAT="%s " history > /tmp/vmw-hist.new; mv /tmp/vmw-hist.new /tmp/vmw-hist' >$f; ` +
		`for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /tmp/vmw-hist ] && break; sleep 1; done; pgrep -x bash; echo ---; cat /tmp/vmw-hist`
	out, err := vm.Run(script)
	if err != nil {
		t.Fatal(err)
	}
	pidPart, hist, ok := strings.Cut(out, "---\n")
	if !ok {
		t.Fatalf("bash history from the guest: %q", out)
	}
	pids := strings.Fields(pidPart)
	if len(pids) != 1 {
		t.Fatalf("bash processes in the guest: %q (want the planted one)", pids)
	}
	pid, _ := strconv.ParseInt(pids[0], 10, 64)
	histLine := regexp.MustCompile(`^\s*(\d+)\s+(\d+) (.*)$`)
	var want []string
	for _, l := range strings.Split(strings.TrimRight(hist, "\n"), "\n") {
		m := histLine.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("bash's history line %q", l)
		}
		n, _ := strconv.Atoi(m[1])
		want = append(want, fmt.Sprintf("%d %s %s", n-1, m[2], m[3]))
	}
	var ours []struct {
		PID     int64 `json:"pid"`
		History []struct {
			Index   int    `json:"index"`
			Time    int64  `json:"time"`
			Command string `json:"command"`
		} `json:"history"`
		Errors []string `json:"errors"`
	}
	vmwatchJSON(t, &ours, "bash", "-t", tg)
	if len(ours) != 1 || ours[0].PID != pid {
		t.Fatalf("vmwatch bash found %+v, the guest one bash, pid %d", ours, pid)
	}
	var got []string
	for _, e := range ours[0].History {
		if e.Index >= 0 {
			got = append(got, fmt.Sprintf("%d %d %s", e.Index, e.Time, e.Command))
		}
	}
	// the guest's list ends with the history command that printed it
	if !slices.Equal(got, want) {
		t.Fatalf("bash pid %d history:\nvmwatch %q\nbash    %q (errors %v)", pid, got, want, ours[0].Errors)
	}
	if len(want) < 5 || !strings.Contains(strings.Join(want, "\n"), "for i in 1 2; do") {
		t.Errorf("the planted commands are not all in bash's own history: %q", want)
	}
	t.Logf("bash pid %d: %d history entries equal to its own history builtin's, with timestamps", pid, len(got))
}

// checkIomem compares iomem and iomem --ports with the guest's /proc/iomem
// and /proc/ioports (read as root: real addresses), line for line.
func checkIomem(t *testing.T, vm *testvm.VM, tg string) {
	for _, c := range []struct{ file, flag string }{{"/proc/iomem", ""}, {"/proc/ioports", "--ports"}} {
		args := []string{"iomem", "-t", tg}
		if c.flag != "" {
			args = append(args, c.flag)
		}
		ours := strings.TrimRight(string(vmwatch(t, args...)), "\n")
		guest, err := vm.Run("cat " + c.file)
		if err != nil {
			t.Fatal(err)
		}
		guest = strings.TrimRight(guest, "\n")
		if ours != guest {
			t.Errorf("vmwatch %s differs from %s:\nvmwatch:\n%s\nguest:\n%s", strings.Join(args, " "), c.file, ours, guest)
			continue
		}
		n := strings.Count(ours, "\n") + 1
		if n < 10 || !strings.Contains(ours, "Kernel code") && c.flag == "" {
			t.Errorf("%s: %d lines, no Kernel code", c.file, n)
		}
		t.Logf("%s: %d lines equal", c.file, n)
	}
}
