package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/vmwatch/vmwatch/linux"
)

// The views of a guest's namespaces: its mount tables (mounts) and its
// network interfaces (ifaces).

func newMountsCmd(g *globalFlags) *cobra.Command {
	var all bool
	return withAll(&all, &cobra.Command{
		Use:   "mounts [PID]...",
		Short: "Show the mount table of each mount namespace, as /proc/PID/mountinfo does",
		Long: `Lists the mounts of every mount namespace (of the processes given, when pids
are), each in /proc/PID/mountinfo's format and order: mount id, parent id,
major:minor, root, mount point, mount options, propagation (shared:N,
master:N, unbindable), then after " - " the file system type, the source and
the super block's options.

Mount points are shown as the namespace's first process (or the pid given)
sees them from its root, as mountinfo does; mounts outside that root are
left out unless --all is given (they are then marked "# outside root").
The super block options are the generic ones (rw/ro, sync, dirsync, mand,
lazytime): the options a file system adds itself (ext4's errors=, tmpfs's
size=) are not read.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			pids, err := parsePIDs(args)
			if err != nil {
				return err
			}
			nss, err := readList(cmd, g, "mount tables", func(k *linux.Kernel) ([]linux.MountNamespace, error) {
				return k.Mounts(pids)
			})
			if err != nil {
				return err
			}
			if !all {
				for i := range nss {
					var vis []linux.Mount
					for _, m := range nss[i].Mounts {
						if m.Visible {
							vis = append(vis, m)
						}
					}
					nss[i].Mounts = vis
				}
			}
			if g.output != "table" {
				return emit(os.Stdout, g.output, nss, nil)
			}
			for _, ns := range nss {
				linef(os.Stdout, "# mount namespace %d: %d processes (%s), as pid %d sees it",
					ns.Inum, len(ns.PIDs), pidList(ns.PIDs, 8), ns.Reader)
				for _, e := range ns.Errors {
					linef(os.Stderr, "vmwatch: warning: mount namespace %d: %s", ns.Inum, e)
				}
				for _, m := range ns.Mounts {
					for _, e := range m.Errors {
						linef(os.Stderr, "vmwatch: warning: mount %d: %s", m.ID, e)
					}
					suffix := ""
					if !m.Visible {
						suffix = "  # outside root"
					}
					linef(os.Stdout, "%s%s", m.Line(), suffix)
				}
			}
			return nil
		},
	})
}

// withAll adds the --all flag of the views that hide what /proc hides.
func withAll(all *bool, cmd *cobra.Command) *cobra.Command {
	cmd.Flags().BoolVar(all, "all", false, "also show what /proc would not (marked)")
	return cmd
}

// pidList names up to n pids, then how many more.
func pidList(pids []int64, n int) string {
	var b strings.Builder
	for i, p := range pids {
		if i == n {
			b.WriteString(" …+" + strconv.Itoa(len(pids)-n))
			break
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(strconv.FormatInt(p, 10))
	}
	return b.String()
}

func newIfacesCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "ifaces",
		Short: "Show the network interfaces of every network namespace, as ip addr does",
		Long: `Lists every network namespace on the kernel's list (also those no process is
in, kept by a bind mount or a socket) with its interfaces: index, name, MAC,
MTU, the flags ip(8) shows (UP, LOWER_UP, PROMISC, ...), the operational
state, the count of promiscuous-mode users (a packet sniffer raises it even
when ip shows no PROMISC), and the IPv4 and IPv6 addresses with prefix
length and scope.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			nss, err := readList(cmd, g, "network namespaces", func(k *linux.Kernel) ([]linux.NetNamespace, error) {
				return k.Interfaces()
			})
			if err != nil {
				return err
			}
			if g.output != "table" {
				return emit(os.Stdout, g.output, nss, nil)
			}
			for _, ns := range nss {
				who := "no process"
				if len(ns.PIDs) > 0 {
					who = strconv.Itoa(len(ns.PIDs)) + " processes (" + pidList(ns.PIDs, 8) + ")"
				}
				linef(os.Stdout, "# network namespace %d: %s", ns.Inum, who)
				for _, e := range ns.Errors {
					linef(os.Stderr, "vmwatch: warning: network namespace %d: %s", ns.Inum, e)
				}
				for _, d := range ns.Interfaces {
					for _, e := range d.Errors {
						linef(os.Stderr, "vmwatch: warning: interface %s: %s", d.Name, e)
					}
					promisc := ""
					if d.Promiscuity > 0 {
						promisc = fmt.Sprintf(" promiscuity %d", d.Promiscuity)
					}
					linef(os.Stdout, "%d: %s: <%s> mtu %d state %s%s", d.Index, d.Name, strings.Join(d.Flags, ","), d.MTU, strings.ToUpper(d.OperState), promisc)
					linef(os.Stdout, "    link %s type %d", dash(d.MAC), d.Type)
					for _, a := range d.Addrs {
						label := ""
						if a.Label != "" && a.Label != d.Name {
							label = " " + a.Label
						}
						linef(os.Stdout, "    %s %s/%d scope %s%s", a.Family, a.Address, a.PrefixLen, a.Scope, label)
					}
				}
			}
			return nil
		},
	}
}
