package main

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/vmwatch/vmwatch/linux"
)

// readList runs a view that walks a kernel list. A walk that read something
// but then hit an error (a list that changed under us, or damage) keeps what
// it has: the view prints it and warns on stderr.
func readList[T any](cmd *cobra.Command, g *globalFlags, what string, view func(k *linux.Kernel) ([]T, error)) ([]T, error) {
	var walkErr error
	v, _, err := withSession(cmd.Context(), g, func(s *session) (any, error) {
		items, err := view(s.k)
		if items == nil && err != nil {
			return nil, err
		}
		walkErr = err
		return items, nil
	})
	if err != nil {
		return nil, err
	}
	if walkErr != nil {
		warnIncomplete(os.Stderr, what, walkErr)
	}
	return v.([]T), nil
}

func newPsCmd(g *globalFlags) *cobra.Command {
	var threads bool
	cmd := &cobra.Command{
		Use:   "ps",
		Short: "List processes (from the kernel's task list)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var init linux.InitNamespaces
			ps, err := readList(cmd, g, "process list", func(k *linux.Kernel) ([]linux.Process, error) {
				init, _ = k.InitNamespaces()
				return k.Processes(linux.PSOptions{Threads: threads})
			})
			if err != nil {
				return err
			}
			linux.SortProcesses(ps)
			return emitPS(os.Stdout, g.output, ps, threads, init)
		},
	}
	cmd.Flags().BoolVar(&threads, "threads", false, "list every thread, not only processes")
	return cmd
}

// emitPS writes the process list as JSON or as ps's table.
func emitPS(w io.Writer, format string, ps []linux.Process, threads bool, init linux.InitNamespaces) error {
	// processes in PID namespaces of their own, and containers, get
	// columns of their own when there are any
	nsCols := false
	for _, p := range ps {
		if p.PIDNS != 0 && p.PIDNS != init.PID || p.Container != nil {
			nsCols = true
		}
	}
	return emit(w, format, ps, func(tw *tabwriter.Writer) {
		head := []any{"PID", "PPID", "UID", "GID", "EUID", "STATE", "START", "THR"}
		if threads {
			head = []any{"TGID", "PID", "PPID", "UID", "GID", "EUID", "STATE", "START"}
		}
		if nsCols {
			head = append(head, "NSPID", "CONTAINER")
		}
		row(tw, append(head, "COMM", "COMMAND")...)
		for _, p := range ps {
			cells := []any{p.PID, p.PPID, p.UID, p.GID, p.EUID, p.State, startTime(p.StartTime), p.Threads}
			if threads {
				cells = []any{p.TGID, p.PID, p.PPID, p.UID, p.GID, p.EUID, p.State, startTime(p.StartTime)}
			}
			if nsCols {
				cells = append(cells, nsPID(p, init), containerName(p.Container))
			}
			row(tw, append(cells, p.Comm, commandLine(p))...)
		}
	})
}

// nsPID is a process's pid inside its own PID namespace, "-" in the
// guest's first one.
func nsPID(p linux.Process, init linux.InitNamespaces) string {
	if p.PIDNS == 0 || p.PIDNS == init.PID {
		return "-"
	}
	return strconv.FormatInt(p.NSPID, 10)
}

func containerName(c *linux.Container) string {
	if c == nil {
		return "-"
	}
	id := c.ID
	if len(id) == 64 {
		id = id[:12]
	}
	return c.Runtime + ":" + id
}

func commandLine(p linux.Process) string {
	if len(p.Cmdline) > 0 {
		s := strings.Join(p.Cmdline, " ")
		if len(s) > 200 {
			s = s[:200] + "…"
		}
		return s
	}
	if p.Kernel {
		if p.FullName != "" {
			return "[" + p.FullName + "]"
		}
		return "[" + p.Comm + "]"
	}
	if len(p.Errors) > 0 {
		return "(unreadable)"
	}
	return ""
}

func startTime(sec float64) string {
	switch {
	case sec < 60:
		return fmt.Sprintf("%.2fs", sec)
	case sec < 3600:
		return fmt.Sprintf("%dm%02ds", int(sec)/60, int(sec)%60)
	case sec < 86400:
		return fmt.Sprintf("%dh%02dm", int(sec)/3600, int(sec)%3600/60)
	}
	return fmt.Sprintf("%dd%02dh", int(sec)/86400, int(sec)%86400/3600)
}

// treeNode is a process in pstree's JSON output.
type treeNode struct {
	PID      int64       `json:"pid"`
	Comm     string      `json:"comm"`
	Cmdline  []string    `json:"cmdline,omitempty"`
	Children []*treeNode `json:"children,omitempty"`
}

func buildTree(ps []linux.Process) []*treeNode {
	nodes := map[int64]*treeNode{}
	for _, p := range ps {
		nodes[p.PID] = &treeNode{PID: p.PID, Comm: p.Comm, Cmdline: p.Cmdline}
	}
	var roots []*treeNode
	for _, p := range ps {
		n := nodes[p.PID]
		if parent, ok := nodes[p.PPID]; ok && p.PPID != p.PID {
			parent.Children = append(parent.Children, n)
		} else {
			roots = append(roots, n)
		}
	}
	var sortRec func(ns []*treeNode)
	sortRec = func(ns []*treeNode) {
		sort.Slice(ns, func(i, j int) bool { return ns[i].PID < ns[j].PID })
		for _, n := range ns {
			sortRec(n.Children)
		}
	}
	sortRec(roots)
	return roots
}

func newPstreeCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "pstree",
		Short: "Show processes as a tree of parents and children",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ps, err := readList(cmd, g, "process list", func(k *linux.Kernel) ([]linux.Process, error) {
				return k.Processes(linux.PSOptions{})
			})
			if err != nil {
				return err
			}
			roots := buildTree(ps)
			if g.output != "table" {
				return emit(os.Stdout, g.output, roots, nil)
			}
			var b strings.Builder
			var walk func(n *treeNode, prefix string, last, top bool)
			walk = func(n *treeNode, prefix string, last, top bool) {
				label := fmt.Sprintf("%d %s", n.PID, n.Comm)
				if len(n.Cmdline) > 0 && strings.Join(n.Cmdline, " ") != n.Comm {
					label += "  " + strings.Join(n.Cmdline, " ")
				}
				if top {
					linef(&b, "%s", label)
				} else if last {
					linef(&b, "%s└─ %s", prefix, label)
					prefix += "   "
				} else {
					linef(&b, "%s├─ %s", prefix, label)
					prefix += "│  "
				}
				for i, c := range n.Children {
					walk(c, prefix, i == len(n.Children)-1, false)
				}
			}
			for _, r := range roots {
				walk(r, "", true, true)
			}
			_, err = os.Stdout.WriteString(b.String())
			return err
		},
	}
}

func newLsmodCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "lsmod",
		Short: "List loaded kernel modules (from the kernel's module list)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ms, err := readList(cmd, g, "module list", (*linux.Kernel).Modules)
			if err != nil {
				return err
			}
			return emit(os.Stdout, g.output, ms, func(tw *tabwriter.Writer) {
				row(tw, "MODULE", "SIZE", "REFS", "USED BY", "STATE", "ADDRESS")
				for _, m := range ms {
					row(tw, m.Name, m.Size, m.Refcount, linux.FormatUsedBy(m.UsedBy), m.State, m.Base)
				}
			})
		},
	}
}

func newSocketsCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "sockets",
		Short: "List open sockets with their owning processes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var init linux.InitNamespaces
			ss, err := readList(cmd, g, "socket list", func(k *linux.Kernel) ([]linux.Socket, error) {
				init, _ = k.InitNamespaces()
				return k.Sockets()
			})
			if err != nil {
				return err
			}
			// sockets of other network namespaces (containers, ip netns)
			// are marked as such, never shown as the guest's own
			netCol := false
			for _, s := range ss {
				if s.NetNS != 0 && s.NetNS != init.Net {
					netCol = true
				}
			}
			return emit(os.Stdout, g.output, ss, func(tw *tabwriter.Writer) {
				head := []any{"PROTO", "LOCAL", "REMOTE", "STATE", "INODE", "PIDS"}
				if netCol {
					head = append(head, "NETNS")
				}
				row(tw, head...)
				for _, s := range ss {
					local, remote := endpoint(s.LocalAddr, s.LocalPort), endpoint(s.RemoteAddr, s.RemotePort)
					if s.Protocol == "unix" {
						local, remote = s.Path, ""
					}
					pids := make([]string, len(s.PIDs))
					for i, p := range s.PIDs {
						pids[i] = strconv.FormatInt(p, 10)
					}
					proto := s.Protocol
					if s.Family == "inet6" {
						proto += "6"
					}
					if s.Protocol == "netlink" {
						local = fmt.Sprintf("%s:%d", s.LocalAddr, s.PortID)
					}
					cells := []any{proto, dash(local), dash(remote), s.State, s.Inode, strings.Join(pids, ",")}
					if netCol {
						ns := "host"
						if s.NetNS != init.Net {
							ns = strconv.FormatUint(s.NetNS, 10)
						}
						cells = append(cells, ns)
					}
					row(tw, cells...)
				}
			})
		},
	}
}

func endpoint(addr string, port uint16) string {
	if addr == "" {
		return ""
	}
	if strings.Contains(addr, ":") {
		return fmt.Sprintf("[%s]:%d", addr, port)
	}
	return fmt.Sprintf("%s:%d", addr, port)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newDmesgCmd(g *globalFlags) *cobra.Command {
	var tail int
	cmd := &cobra.Command{
		Use:   "dmesg",
		Short: "Print the kernel log (from the printk ring buffer)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			recs, err := readList(cmd, g, "kernel log", (*linux.Kernel).Dmesg)
			if err != nil {
				return err
			}
			if tail > 0 && len(recs) > tail {
				recs = recs[len(recs)-tail:]
			}
			if g.output != "table" {
				return emit(os.Stdout, g.output, recs, nil)
			}
			var b strings.Builder
			for _, r := range recs {
				// a record of several lines keeps one prefix per line, as
				// in dmesg(1); each line is escaped
				for _, l := range strings.Split(r.Format(), "\n") {
					linef(&b, "%s", l)
				}
			}
			_, err = os.Stdout.WriteString(b.String())
			return err
		},
	}
	cmd.Flags().IntVarP(&tail, "tail", "n", 0, "print only the last N records")
	return cmd
}

type symbolOut struct {
	Address linux.Addr `json:"address"`
	Type    string     `json:"type"`
	Name    string     `json:"name"`
	Offset  uint64     `json:"offset,omitempty"`
	Query   string     `json:"query,omitempty"`
}

func newSymbolsCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "symbols [NAME|ADDRESS]...",
		Short: "Look kernel symbols up by name or address (all symbols without arguments)",
		RunE: func(cmd *cobra.Command, args []string) error {
			var missing []string
			v, _, err := withSession(cmd.Context(), g, func(s *session) (any, error) {
				var out []symbolOut
				if len(args) == 0 {
					for _, sym := range s.k.Syms.All() {
						out = append(out, symbolOut{Address: linux.Addr(sym.Addr), Type: string(sym.Type), Name: sym.Name})
					}
					return out, nil
				}
				for _, a := range args {
					if strings.HasPrefix(a, "0x") || strings.HasPrefix(a, "ffff") {
						addr, err := strconv.ParseUint(strings.TrimPrefix(a, "0x"), 16, 64)
						if err != nil {
							return nil, fmt.Errorf("%q is not an address", a)
						}
						sym, off, ok := s.k.Syms.Nearest(addr)
						if !ok {
							missing = append(missing, a)
							continue
						}
						out = append(out, symbolOut{Address: linux.Addr(sym.Addr), Type: string(sym.Type), Name: sym.Name, Offset: off, Query: a})
						continue
					}
					sym, ok := s.k.Syms.Get(a)
					if !ok {
						missing = append(missing, a)
						continue
					}
					out = append(out, symbolOut{Address: linux.Addr(sym.Addr), Type: string(sym.Type), Name: sym.Name, Query: a})
				}
				return out, nil
			})
			if err != nil {
				return err
			}
			out := v.([]symbolOut)
			if err := emit(os.Stdout, g.output, out, func(tw *tabwriter.Writer) {
				for _, s := range out {
					name := s.Name
					if s.Offset != 0 {
						name = fmt.Sprintf("%s+%#x", s.Name, s.Offset)
					}
					row(tw, fmt.Sprintf("%016x", uint64(s.Address)), s.Type, name)
				}
			}); err != nil {
				return err
			}
			if len(missing) > 0 {
				return fmt.Errorf("no kernel symbol for %s", strings.Join(missing, ", "))
			}
			return nil
		},
	}
}

func newIomemCmd(g *globalFlags) *cobra.Command {
	var ports bool
	cmd := &cobra.Command{
		Use:   "iomem",
		Short: "Show the kernel's map of physical memory (or I/O ports), as /proc/iomem does",
		Long: `Walks the kernel's resource tree (iomem_resource, or ioport_resource with
--ports) and prints it as /proc/iomem and /proc/ioports do, as root sees them:
each range, its owner (System RAM, Kernel code, a PCI device, a driver) and
its nesting.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			rs, err := readList(cmd, g, "resource tree", func(k *linux.Kernel) ([]linux.Resource, error) {
				return k.Resources(ports)
			})
			if err != nil {
				return err
			}
			if g.output != "table" {
				return emit(os.Stdout, g.output, rs, nil)
			}
			width := 8
			if ports {
				width = 4
			}
			for _, r := range rs {
				linef(os.Stdout, "%s", r.Line(width))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&ports, "ports", false, "the I/O port map (/proc/ioports) instead")
	return cmd
}

func newPtraceCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "ptrace",
		Short: "Show which threads are traced and by whom",
		Long: `Lists every traced thread with its tracer (the TracerPid of
/proc/PID/task/TID/status), whether it was attached or seized, and the
options the tracer set. Debuggers and strace trace; so does malware that
injects code into another process or hides a process's system calls.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ps, err := readList(cmd, g, "task list", func(k *linux.Kernel) ([]linux.Ptrace, error) {
				return k.Ptraces()
			})
			if err != nil {
				return err
			}
			if ps == nil {
				ps = []linux.Ptrace{}
			}
			return emit(os.Stdout, g.output, ps, func(tw *tabwriter.Writer) {
				row(tw, "PID", "TID", "COMM", "TRACER_PID", "TRACER_TID", "TRACER", "HOW", "OPTIONS")
				for _, p := range ps {
					how := "attach"
					if p.Seized {
						how = "seize"
					}
					row(tw, p.PID, p.TID, p.Comm, p.TracerPID, p.TracerTID, p.TracerComm, how, dash(strings.Join(p.Options, ",")))
				}
			})
		},
	}
}
