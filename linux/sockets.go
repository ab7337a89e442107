package linux

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sort"
	"strings"
)

// Socket is an open socket with the processes that hold it.
type Socket struct {
	Sock       Addr   `json:"sock"`
	Family     string `json:"family"`   // inet, inet6, unix, netlink, ...
	Protocol   string `json:"protocol"` // tcp, udp, raw, unix, ...
	Type       string `json:"type"`     // stream, dgram, ...
	LocalAddr  string `json:"local_address,omitempty"`
	LocalPort  uint16 `json:"local_port,omitempty"`
	RemoteAddr string `json:"remote_address,omitempty"`
	RemotePort uint16 `json:"remote_port,omitempty"`
	State      string `json:"state"`
	Inode      uint64 `json:"inode"`
	Path       string `json:"path,omitempty"` // unix sockets
	// PortID is a netlink socket's port (often the owner's pid).
	PortID uint32 `json:"portid,omitempty"`
	// NetNS is the network namespace the socket lives in (the inode
	// number of /proc/PID/ns/net); compare with the init namespace's.
	NetNS  uint64   `json:"net_ns,omitempty"`
	PIDs   []int64  `json:"pids"`
	Errors []string `json:"errors,omitempty"`
}

// Linux ABI values (uapi: socket families, IP protocols, socket types).
var (
	familyNames = map[uint64]string{1: "unix", 2: "inet", 10: "inet6", 16: "netlink", 17: "packet", 40: "vsock"}
	// netlink protocols by the names ss(8) prints (uapi linux/netlink.h)
	netlinkNames = map[uint64]string{0: "rtnl", 1: "unused", 2: "usersock", 3: "fw", 4: "tcpdiag", 5: "nflog", 6: "xfrm",
		7: "selinux", 8: "iscsi", 9: "audit", 10: "fiblookup", 11: "connector", 12: "nft", 13: "ip6fw", 14: "dec-rt",
		15: "uevent", 16: "genl", 18: "scsi-trans", 19: "ecryptfs", 20: "rdma", 21: "crypto", 22: "smc"}
	protoNames = map[uint64]string{0: "ip", 1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp", 136: "udplite", 255: "raw"}
	typeNames  = map[uint64]string{1: "stream", 2: "dgram", 3: "raw", 4: "rdm", 5: "seqpacket", 10: "packet"}
)

// tcpStateNames maps the kernel's TCP_* states (include/net/tcp_states.h),
// whose values BTF gives, to the names ss(8) prints.
var tcpStateNames = map[string]string{
	"TCP_ESTABLISHED": "ESTABLISHED", "TCP_SYN_SENT": "SYN_SENT", "TCP_SYN_RECV": "SYN_RECV",
	"TCP_FIN_WAIT1": "FIN_WAIT1", "TCP_FIN_WAIT2": "FIN_WAIT2", "TCP_TIME_WAIT": "TIME_WAIT",
	"TCP_CLOSE": "CLOSE", "TCP_CLOSE_WAIT": "CLOSE_WAIT", "TCP_LAST_ACK": "LAST_ACK",
	"TCP_LISTEN": "LISTEN", "TCP_CLOSING": "CLOSING", "TCP_NEW_SYN_RECV": "NEW_SYN_RECV",
}

func (k *Kernel) tcpStates() map[uint64]string {
	out := map[uint64]string{}
	for kn, name := range tcpStateNames {
		if v, err := k.Types.EnumConstant(kn); err == nil {
			out[uint64(v)] = name
		}
	}
	return out
}

// OpenFile is one entry of a process's file descriptor table.
type OpenFile struct {
	FD   int
	File uint64 // struct file
	// CloseOnExec is the descriptor's bit in fdt->close_on_exec.
	CloseOnExec bool
}

// Files reads a task's file descriptor table (task->files->fdt->fd[]).
func (k *Kernel) Files(task Value) ([]OpenFile, error) {
	fp, err := task.Field("files")
	if err != nil {
		return nil, err
	}
	files, err := fp.Ptr()
	if err != nil || files == 0 {
		return nil, err
	}
	fdtp, err := k.ReadField("files_struct", files, "fdt")
	if err != nil {
		return nil, err
	}
	fdt, err := fdtp.Deref()
	if err != nil {
		return nil, fmt.Errorf("fdtable: %w", err)
	}
	f := &fields{v: fdt}
	maxFDs := f.uint("max_fds")
	arr := f.ptr("fd")
	coe := f.ptr("close_on_exec")
	if len(f.errs) > 0 {
		return nil, fmt.Errorf("fdtable: %s", strings.Join(f.errs, "; "))
	}
	if maxFDs > maxFDsRead {
		maxFDs = maxFDsRead
	}
	if maxFDs == 0 || arr == 0 {
		return nil, nil
	}
	buf, err := k.readTable("fd array", arr, maxFDs*8, maxFDsRead*8)
	if err != nil {
		return nil, err
	}
	// the close-on-exec bitmap: an array of unsigned longs
	var bits []byte
	if coe != 0 {
		n := (maxFDs + 63) / 64 * 8
		bits, _ = k.readTable("close_on_exec bitmap", coe, n, maxFDsRead/8)
	}
	var out []OpenFile
	for i := 0; i < int(maxFDs); i++ {
		if p := binary.LittleEndian.Uint64(buf[i*8:]); p != 0 {
			of := OpenFile{FD: i, File: p}
			if i/8 < len(bits) {
				of.CloseOnExec = bits[i/8]&(1<<(i%8)) != 0
			}
			out = append(out, of)
		}
	}
	return out, nil
}

// maxFDsRead bounds the descriptors read per process.
const maxFDsRead = maxFDs

// Sockets lists the sockets held open by processes.
func (k *Kernel) Sockets() ([]Socket, error) {
	leaders, walkErr := k.TaskList()
	if walkErr != nil && len(leaders) == 0 {
		return nil, walkErr
	}
	sockOps, err := k.Symbol("socket_file_ops")
	if err != nil {
		return nil, err
	}
	tt, err := k.Types.Struct("task_struct")
	if err != nil {
		return nil, err
	}
	states := k.tcpStates()
	nsr := k.newNSReader()
	bySock := map[uint64]*Socket{}
	var order []uint64
	for _, a := range leaders {
		task, err := k.ReadValue(tt, a)
		if err != nil {
			continue
		}
		tg, _ := task.Field("tgid")
		tgid, _ := tg.Int()
		files, err := k.Files(task)
		if err != nil {
			continue
		}
		for _, of := range files {
			file, err := k.Object("file", of.File)
			if err != nil {
				continue
			}
			ff := &fields{v: file}
			if ff.ptr("f_op") != sockOps {
				continue
			}
			sockp := ff.ptr("private_data")
			ino := uint64(0)
			if ip := ff.ptr("f_inode"); ip != 0 {
				if v, err := k.ReadField("inode", ip, "i_ino"); err == nil {
					ino, _ = v.Uint()
				}
			}
			s, ok := bySock[sockp]
			if !ok {
				s = k.socket(sockp, states, nsr)
				s.Inode = ino
				bySock[sockp] = s
				order = append(order, sockp)
			}
			if n := len(s.PIDs); n == 0 || s.PIDs[n-1] != tgid {
				s.PIDs = append(s.PIDs, tgid)
			}
		}
	}
	out := make([]Socket, 0, len(order))
	for _, a := range order {
		out = append(out, *bySock[a])
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Protocol != out[j].Protocol {
			return out[i].Protocol > out[j].Protocol
		}
		return out[i].LocalPort < out[j].LocalPort
	})
	return out, walkErr
}

// SocketOfFile returns the socket behind an open file, if it is one.
func (k *Kernel) SocketOfFile(file uint64) (*Socket, bool) {
	sockOps, err := k.Symbol("socket_file_ops")
	if err != nil {
		return nil, false
	}
	fv, err := k.Object("file", file)
	if err != nil {
		return nil, false
	}
	ff := &fields{v: fv}
	if ff.ptr("f_op") != sockOps {
		return nil, false
	}
	return k.socket(ff.ptr("private_data"), k.tcpStates(), k.newNSReader()), true
}

// socket reads a struct socket and its struct sock.
func (k *Kernel) socket(addr uint64, states map[uint64]string, nsr *nsReader) *Socket {
	s := &Socket{}
	sv, err := k.Object("socket", addr)
	if err != nil {
		s.Errors = append(s.Errors, err.Error())
		return s
	}
	sf := &fields{v: sv}
	skp := sf.ptr("sk")
	s.Type = typeNames[sf.uint("type")]
	s.Sock = Addr(skp)
	if skp == 0 {
		s.State = "unconnected"
		s.Errors = sf.errs
		return s
	}
	sk, err := k.Object("sock", skp)
	if err != nil {
		s.Errors = append(sf.errs, err.Error())
		return s
	}
	f := &fields{v: sk}
	fam := f.uint("__sk_common.skc_family")
	s.Family = familyNames[fam]
	if s.Family == "" {
		s.Family = fmt.Sprintf("family %d", fam)
	}
	proto := f.uint("sk_protocol")
	state := f.uint("__sk_common.skc_state")
	// skc_net is a possible_net_t: a struct holding the pointer when the
	// kernel has network namespaces
	if sk.Type.HasField("__sk_common.skc_net.net") {
		if net := f.ptr("__sk_common.skc_net.net"); net != 0 {
			ns, err := nsr.nsInum("net", net)
			f.note(err)
			s.NetNS = ns
		}
	}
	switch fam {
	case 2, 10:
		s.Protocol = protoNames[proto]
		if s.Protocol == "" {
			s.Protocol = fmt.Sprintf("proto %d", proto)
		}
		if s.Type == "raw" {
			s.Protocol = "raw"
		}
		s.LocalPort = uint16(f.uint("__sk_common.skc_num"))
		dport := uint16(f.uint("__sk_common.skc_dport"))
		s.RemotePort = dport>>8 | dport<<8
		if fam == 2 {
			s.LocalAddr = ipv4(f.uint("__sk_common.skc_rcv_saddr"))
			s.RemoteAddr = ipv4(f.uint("__sk_common.skc_daddr"))
		} else {
			s.LocalAddr = k.ipv6(sk, "__sk_common.skc_v6_rcv_saddr", f)
			s.RemoteAddr = k.ipv6(sk, "__sk_common.skc_v6_daddr", f)
		}
		switch {
		case s.Protocol == "tcp":
			s.State = states[state]
		case state == 1:
			s.State = "ESTABLISHED"
		default:
			s.State = "UNCONN"
		}
		if s.State == "" {
			s.State = fmt.Sprintf("state %d", state)
		}
	case 1:
		s.Protocol = "unix"
		s.State = map[uint64]string{1: "ESTABLISHED", 7: "UNCONN", 10: "LISTEN"}[state]
		s.Path = k.unixPath(skp, f)
	case 16:
		s.Protocol = "netlink"
		if n, ok := netlinkNames[proto]; ok {
			s.LocalAddr = n
		} else {
			s.LocalAddr = fmt.Sprintf("proto %d", proto)
		}
		if nl, err := k.Object("netlink_sock", skp); err == nil {
			s.PortID = uint32((&fields{v: nl}).uint("portid"))
		}
		// netlink keeps sk_state at TCP_CLOSE unless connected (NETLINK_CONNECTED)
		s.State = map[uint64]string{1: "ESTABLISHED"}[state]
		if s.State == "" {
			s.State = "UNCONN"
		}
	default:
		s.Protocol = s.Family
		if s.Family == "packet" {
			s.LocalAddr = fmt.Sprintf("0x%04x", proto>>8|proto<<8&0xff00) // the ethertype, in network byte order
		} else if proto != 0 {
			s.LocalAddr = fmt.Sprintf("proto %d", proto)
		}
		s.State = "UNCONN"
		if state == 1 {
			s.State = "ESTABLISHED"
		}
	}
	s.Errors = append(sf.errs, f.errs...)
	return s
}

func ipv4(be uint64) string {
	b := [4]byte{byte(be), byte(be >> 8), byte(be >> 16), byte(be >> 24)}
	return netip.AddrFrom4(b).String()
}

func (k *Kernel) ipv6(sk Value, path string, f *fields) string {
	v, err := sk.Field(path)
	if err != nil {
		f.note(err)
		return ""
	}
	b := v.Bytes()
	if len(b) != 16 {
		f.note(fmt.Errorf("%s is %d bytes", path, len(b)))
		return ""
	}
	var a [16]byte
	copy(a[:], b)
	return netip.AddrFrom16(a).String()
}

// unixPath reads the bound path of a unix socket (unix_sock->addr->name).
func (k *Kernel) unixPath(skp uint64, f *fields) string {
	us, err := k.Types.Struct("unix_sock")
	if err != nil {
		return ""
	}
	ap, err := k.ReadField("unix_sock", skp, "addr")
	_ = us
	if err != nil {
		return ""
	}
	addr, err := ap.Ptr()
	if err != nil || addr == 0 {
		return ""
	}
	ua, err := k.Object("unix_address", addr)
	if err != nil {
		f.note(err)
		return ""
	}
	uf := &fields{v: ua}
	n := uf.int("len")
	nameOff, err := ua.Type.FieldOffset("name")
	if err != nil || n <= 2 || n > 110 {
		return ""
	}
	b := make([]byte, n)
	if _, err := k.AS.ReadAt(b, int64(addr+nameOff)); err != nil {
		f.note(err)
		return ""
	}
	p := b[2:] // after sun_family
	if p[0] == 0 {
		return "@" + strings.TrimRight(string(p[1:]), "\x00")
	}
	return strings.TrimRight(string(p), "\x00")
}
