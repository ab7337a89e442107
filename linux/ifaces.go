package linux

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// The network interfaces of each network namespace, as `ip addr` and
// /sys/class/net show them: net_namespace_list, each namespace's
// dev_base_head list of net_devices, their IPv4 addresses (in_device's
// ifa_list chain) and IPv6 addresses (inet6_dev's addr_list).

// Interface is one network device.
type Interface struct {
	Index int64  `json:"index"`
	Name  string `json:"name"`
	// Type is the ARP hardware type (/sys/class/net/IF/type): 1 Ethernet,
	// 772 loopback, 65534 none (tun, wireguard).
	Type uint64 `json:"type"`
	// MAC is the hardware address as /sys/class/net/IF/address shows it.
	MAC string `json:"mac"`
	MTU uint64 `json:"mtu"`
	// RawFlags is dev->flags (/sys/class/net/IF/flags); Flags names them
	// with the link state as ip(8) shows it (UP, LOWER_UP, PROMISC, ...).
	RawFlags uint64   `json:"raw_flags"`
	Flags    []string `json:"flags"`
	// Promiscuity counts the users of promiscuous mode (packet sniffers
	// and `ip link set promisc on`); more than 0 sets PROMISC.
	Promiscuity uint64 `json:"promiscuity"`
	// OperState is RFC 2863's operational state, as
	// /sys/class/net/IF/operstate names it.
	OperState string   `json:"operstate"`
	Addrs     []IfAddr `json:"addrs"`
	Addr      Addr     `json:"addr"`
	Errors    []string `json:"errors,omitempty"`
}

// IfAddr is one address of an interface.
type IfAddr struct {
	Family    string `json:"family"` // inet or inet6
	Address   string `json:"address"`
	PrefixLen int    `json:"prefixlen"`
	// Scope is ip(8)'s name for it: global, site, link, host, nowhere or
	// the number.
	Scope string `json:"scope"`
	// Label is the IPv4 address's label (the interface's name or an alias
	// like eth0:1).
	Label string `json:"label,omitempty"`
}

// NetNamespace is a network namespace and its interfaces.
type NetNamespace struct {
	Inum uint64 `json:"ns"`
	Addr Addr   `json:"addr"`
	// PIDs are the processes in it; none for a namespace only a bind
	// mount (ip netns) or a socket keeps.
	PIDs       []int64     `json:"pids"`
	Interfaces []Interface `json:"interfaces"`
	Errors     []string    `json:"errors,omitempty"`
}

// limits of the interface walks
const (
	maxNetNS    = 1 << 14
	maxNetDevs  = 1 << 14
	maxIfAddrs  = 4096
	maxHWAddr   = 32 // MAX_ADDR_LEN
	ifNameSize  = 16
	iffUp       = 0x1
	iffRunning  = 0x40
	iffPromisc  = 0x100
	iffAllmulti = 0x200
	iffLowerUp  = 0x10000
	iffDormant  = 0x20000
)

// ifFlagNames are the net_device flags in the order iproute2 prints them.
var ifFlagNames = []flagName{
	{0x8, "LOOPBACK"}, {0x2, "BROADCAST"}, {0x10, "POINTOPOINT"}, {0x1000, "MULTICAST"},
	{0x80, "NOARP"}, {iffAllmulti, "ALLMULTI"}, {iffPromisc, "PROMISC"}, {0x20, "NOTRAILERS"},
	{0x4, "DEBUG"}, {0x8000, "DYNAMIC"}, {0x4000, "AUTOMEDIA"}, {0x2000, "PORTSEL"},
	{0x400, "MASTER"}, {0x800, "SLAVE"}, {iffUp, "UP"}, {iffLowerUp, "LOWER_UP"},
	{iffDormant, "DORMANT"}, {0x40000, "ECHO"},
}

// operStates names IF_OPER_* (include/uapi/linux/if.h) as sysfs does.
var operStates = []string{"unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up"}

// Interfaces lists every network namespace on net_namespace_list with its
// devices in dev_base_head order, and the processes in each.
func (k *Kernel) Interfaces() ([]NetNamespace, error) {
	nets, walkErr := k.netNamespaces()
	if nets == nil && walkErr != nil {
		return nil, walkErr
	}
	if walkErr != nil {
		walkErr = fmt.Errorf("net_namespace_list: %w", walkErr)
		if len(nets) == 0 {
			return nil, walkErr
		}
	}
	members := k.netMembers()
	nsr := k.newNSReader()
	r := k.newIfReader()
	out := make([]NetNamespace, 0, len(nets))
	for _, n := range nets {
		ns := NetNamespace{Addr: Addr(n), PIDs: members[n]}
		if ns.PIDs == nil {
			ns.PIDs = []int64{}
		}
		var err error
		if ns.Inum, err = nsr.nsInum("net", n); err != nil {
			ns.Errors = append(ns.Errors, err.Error())
		}
		devs, err := r.devices(n)
		ns.Interfaces = devs
		if err != nil {
			ns.Errors = append(ns.Errors, err.Error())
		}
		out = append(out, ns)
	}
	return out, walkErr
}

// netMembers maps each network namespace to the processes in it.
func (k *Kernel) netMembers() map[uint64][]int64 {
	out := map[uint64][]int64{}
	tasks, _ := k.ProcessTasks(nil)
	for _, t := range tasks {
		np, err := t.Field("nsproxy")
		if err != nil {
			continue
		}
		nsp, _ := np.Ptr()
		if nsp == 0 {
			continue
		}
		v, err := k.ReadField("nsproxy", nsp, "net_ns")
		if err != nil {
			continue
		}
		n, _ := v.Ptr()
		pid, _ := TaskIdentity(t)
		if n != 0 && !slices.Contains(out[n], pid) {
			out[n] = append(out[n], pid)
		}
	}
	for _, p := range out {
		slices.Sort(p)
	}
	return out
}

type ifReader struct {
	k *Kernel
	// address lists already read: a forged guest can point every device
	// at one long list
	seen map[uint64]bool
	// bits of dev->state (enum netdev_state_t) and the oper states that
	// count as up, from BTF
	stStart, stNoCarrier, stDormant uint
}

func (k *Kernel) newIfReader() *ifReader {
	r := &ifReader{k: k, stStart: 0, stNoCarrier: 2, stDormant: 4, seen: map[uint64]bool{}}
	for name, p := range map[string]*uint{"__LINK_STATE_START": &r.stStart, "__LINK_STATE_NOCARRIER": &r.stNoCarrier, "__LINK_STATE_DORMANT": &r.stDormant} {
		if v, err := k.Types.EnumConstant(name); err == nil && v >= 0 && v < 64 {
			*p = uint(v)
		}
	}
	return r
}

// devices walks a namespace's dev_base_head.
func (r *ifReader) devices(net uint64) ([]Interface, error) {
	netT, err := r.k.Types.Struct("net")
	if err != nil {
		return nil, err
	}
	headOff, err := netT.FieldOffset("dev_base_head")
	if err != nil {
		return nil, err
	}
	devT, err := r.k.Types.Struct("net_device")
	if err != nil {
		return nil, err
	}
	nodeOff, err := devT.FieldOffset("dev_list")
	if err != nil {
		return nil, err
	}
	var addrs []uint64
	walkErr := r.k.WalkList(net+headOff, maxNetDevs, func(n uint64) error {
		addrs = append(addrs, n-nodeOff)
		return nil
	})
	if walkErr != nil {
		walkErr = fmt.Errorf("network namespace %#x devices: %w", net, walkErr)
	}
	out := make([]Interface, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, r.device(devT, a))
	}
	return out, walkErr
}

func (r *ifReader) device(devT *Type, a uint64) Interface {
	d := Interface{Addr: Addr(a), Addrs: []IfAddr{}}
	v, err := r.k.ReadValue(devT, a)
	if err != nil {
		d.Errors = append(d.Errors, err.Error())
		return d
	}
	f := &fields{v: v}
	d.Name = cString(f, "name", ifNameSize)
	d.Index = f.int("ifindex")
	d.Type = f.uint("type")
	d.MTU = f.uint("mtu")
	d.RawFlags = f.uint("flags")
	d.Promiscuity = f.uint("promiscuity")
	gflags := f.uint("gflags")
	state := f.uint("state")
	oper := f.uint("operstate")
	alen := f.uint("addr_len")
	hw := f.ptr("dev_addr")
	ip4, ip6 := f.ptr("ip_ptr"), f.ptr("ip6_ptr")
	d.Errors = append(d.Errors, f.errs...)
	if oper < uint64(len(operStates)) {
		d.OperState = operStates[oper]
	} else {
		d.OperState = strconv.FormatUint(oper, 10)
	}
	if alen > maxHWAddr {
		d.Errors = append(d.Errors, fmt.Sprintf("hardware address length %d is over %d", alen, maxHWAddr))
		alen = 0
	}
	if hw != 0 && alen > 0 {
		b := make([]byte, alen)
		if _, err := r.k.AS.ReadAt(b, int64(hw)); err == nil {
			hex := make([]string, len(b))
			for i, x := range b {
				hex[i] = fmt.Sprintf("%02x", x)
			}
			d.MAC = strings.Join(hex, ":")
		} else {
			d.Errors = append(d.Errors, "hardware address: "+err.Error())
		}
	}
	d.Flags = ipFlags(d.RawFlags, gflags, state, oper, r)
	for _, p := range []*uint64{&ip4, &ip6} {
		if *p == 0 {
			continue
		}
		if r.seen[*p] {
			d.Errors = append(d.Errors, fmt.Sprintf("address list %#x is another device's too: not read again", *p))
			*p = 0
			continue
		}
		r.seen[*p] = true
	}
	if ip4 != 0 {
		a, err := r.inet4(ip4)
		d.Addrs = append(d.Addrs, a...)
		if err != nil {
			d.Errors = append(d.Errors, "IPv4 addresses: "+err.Error())
		}
	}
	if ip6 != 0 {
		a, err := r.inet6(ip6)
		d.Addrs = append(d.Addrs, a...)
		if err != nil {
			d.Errors = append(d.Errors, "IPv6 addresses: "+err.Error())
		}
	}
	return d
}

// ipFlags computes the flags ip(8) shows, as dev_get_flags does: the
// promiscuous and all-multicast bits from gflags, RUNNING, LOWER_UP and
// DORMANT from the link state.
func ipFlags(flags, gflags, state, oper uint64, r *ifReader) []string {
	// (dev->flags has PROMISC while any user wants it, a sniffer too; ip
	// shows it only when set by hand: RawFlags and Promiscuity tell both)
	f := flags&^(iffPromisc|iffAllmulti|iffRunning|iffLowerUp|iffDormant) | gflags&(iffPromisc|iffAllmulti)
	if state&(1<<r.stStart) != 0 {
		if oper == 6 || oper == 0 { // IF_OPER_UP, IF_OPER_UNKNOWN
			f |= iffRunning
		}
		if state&(1<<r.stNoCarrier) == 0 {
			f |= iffLowerUp
		}
		if state&(1<<r.stDormant) != 0 {
			f |= iffDormant
		}
	}
	var out []string
	if f&iffUp != 0 && f&iffRunning == 0 {
		out = append(out, "NO-CARRIER")
	}
	for _, n := range ifFlagNames {
		if f&n.flag != 0 {
			out = append(out, n.name)
		}
	}
	return out
}

// cString reads a char array member as a C string of at most n bytes.
func cString(f *fields, path string, n int) string {
	s := f.str(path)
	if len(s) > n {
		s = s[:n]
	}
	return s
}

// inet4 walks in_device->ifa_list.
func (r *ifReader) inet4(indev uint64) ([]IfAddr, error) {
	lv, err := r.k.ReadField("in_device", indev, "ifa_list")
	if err != nil {
		return nil, err
	}
	p, _ := lv.Ptr()
	ifaT, err := r.k.Types.Struct("in_ifaddr")
	if err != nil {
		return nil, err
	}
	var out []IfAddr
	seen := map[uint64]bool{}
	for p != 0 {
		if seen[p] || len(seen) >= maxIfAddrs {
			return out, fmt.Errorf("in_ifaddr %#x reached twice or more than %d addresses: %w", p, maxIfAddrs, ErrListCorrupt)
		}
		seen[p] = true
		v, err := r.k.ReadValue(ifaT, p)
		if err != nil {
			return out, err
		}
		f := &fields{v: v}
		a := IfAddr{Family: "inet", Address: ipv4(f.uint("ifa_local")), PrefixLen: int(f.uint("ifa_prefixlen")),
			Scope: scopeName(int64(f.uint("ifa_scope"))), Label: cString(f, "ifa_label", ifNameSize)}
		next := f.ptr("ifa_next")
		if len(f.errs) > 0 {
			return out, fmt.Errorf("in_ifaddr %#x: %s", p, strings.Join(f.errs, "; "))
		}
		out = append(out, a)
		p = next
	}
	return out, nil
}

// inet6 walks inet6_dev->addr_list.
func (r *ifReader) inet6(idev uint64) ([]IfAddr, error) {
	devT, err := r.k.Types.Struct("inet6_dev")
	if err != nil {
		return nil, err
	}
	headOff, err := devT.FieldOffset("addr_list")
	if err != nil {
		return nil, err
	}
	ifaT, err := r.k.Types.Struct("inet6_ifaddr")
	if err != nil {
		return nil, err
	}
	nodeOff, err := ifaT.FieldOffset("if_list")
	if err != nil {
		return nil, err
	}
	var out []IfAddr
	walkErr := r.k.WalkList(idev+headOff, maxIfAddrs, func(n uint64) error {
		v, err := r.k.ReadValue(ifaT, n-nodeOff)
		if err != nil {
			return err
		}
		f := &fields{v: v}
		av, err := v.Field("addr")
		if err != nil {
			return err
		}
		b := av.Bytes()
		if len(b) != 16 {
			return fmt.Errorf("inet6_ifaddr %#x: address of %d bytes", n-nodeOff, len(b))
		}
		a := IfAddr{Family: "inet6", Address: netip.AddrFrom16([16]byte(b)).String(), PrefixLen: int(f.uint("prefix_len")),
			Scope: scope6Name(f.uint("scope"))}
		if len(f.errs) > 0 {
			return fmt.Errorf("inet6_ifaddr %#x: %s", n-nodeOff, strings.Join(f.errs, "; "))
		}
		out = append(out, a)
		return nil
	})
	return out, walkErr
}

// scopeName names an IPv4 address scope (rt_scope_t) as ip(8) does.
func scopeName(s int64) string {
	switch s {
	case 0:
		return "global"
	case 200:
		return "site"
	case 253:
		return "link"
	case 254:
		return "host"
	case 255:
		return "nowhere"
	}
	return strconv.FormatInt(s, 10)
}

// scope6Name names an IPv6 address's scope: inet6_ifaddr->scope holds
// IFA_* bits (IFA_HOST 0x10, IFA_LINK 0x20, IFA_SITE 0x40), which the
// kernel reports to ip(8) as the rt_scope_t of the same name.
func scope6Name(s uint64) string {
	switch {
	case s&0x10 != 0:
		return "host"
	case s&0x20 != 0:
		return "link"
	case s&0x40 != 0:
		return "site"
	}
	return "global"
}

// netNamespaces walks net_namespace_list: the address of every struct net.
func (k *Kernel) netNamespaces() ([]uint64, error) {
	head, err := k.Symbol("net_namespace_list")
	if err != nil {
		return nil, err
	}
	netT, err := k.Types.Struct("net")
	if err != nil {
		return nil, err
	}
	listOff, err := netT.FieldOffset("list")
	if err != nil {
		return nil, err
	}
	var nets []uint64
	walkErr := k.WalkList(head, maxNetNS, func(n uint64) error {
		nets = append(nets, n-listOff)
		return nil
	})
	return nets, walkErr
}
