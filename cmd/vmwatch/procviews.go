package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/vmwatch/vmwatch/linux"
)

// The per-process views: maps, lsof, envars, caps. Each takes pids (none:
// every process) and reads one view per process; a process whose view
// cannot be read carries the error in its errors list.

// procView is one process's part of a per-process view.
type procView[T any] struct {
	PID    int64    `json:"pid"`
	Comm   string   `json:"comm"`
	Items  T        `json:"-"`
	Errors []string `json:"errors,omitempty"`
}

func parsePIDs(args []string) ([]int64, error) {
	var out []int64
	for _, a := range args {
		p, err := strconv.ParseInt(a, 10, 64)
		if err != nil || p < 0 {
			return nil, fmt.Errorf("%q is not a pid: give process ids as numbers", a)
		}
		out = append(out, p)
	}
	return out, nil
}

// readPerProcess runs view on each selected process. Missing pids are a
// warning when others were found and the command's error when none was.
func readPerProcess[T any](cmd *cobra.Command, g *globalFlags, args []string, what string,
	view func(k *linux.Kernel, task linux.Value) (T, error)) ([]procView[T], error) {
	pids, err := parsePIDs(args)
	if err != nil {
		return nil, err
	}
	out, err := readList(cmd, g, what, func(k *linux.Kernel) ([]procView[T], error) {
		tasks, err := k.ProcessTasks(pids)
		if len(tasks) == 0 {
			if err == nil {
				err = errors.New("no process in the task list")
			}
			return nil, err
		}
		out := make([]procView[T], 0, len(tasks))
		for _, t := range tasks {
			pid, comm := linux.TaskIdentity(t)
			pv := procView[T]{PID: pid, Comm: comm}
			items, e := view(k, t)
			pv.Items = items
			if e != nil {
				pv.Errors = append(pv.Errors, e.Error())
			}
			out = append(out, pv)
		}
		return out, err
	})
	return out, err
}

// mapsOut is a process's mappings in JSON.
type mapsOut struct {
	PID    int64           `json:"pid"`
	Comm   string          `json:"comm"`
	Maps   []linux.Mapping `json:"maps"`
	Errors []string        `json:"errors,omitempty"`
}

func newMapsCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "maps [PID]...",
		Short: "Show processes' memory mappings as /proc/PID/maps does",
		Long: `Lists every mapping (VMA) of the processes given (all user processes when
none is): address range, permissions, file offset, device, inode and the file
or the kernel's name for it ([heap], [stack], [vdso], [vvar], [vsyscall],
[anon:NAME]). The table is /proc/PID/maps's own format.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ps, err := readPerProcess(cmd, g, args, "process list", func(k *linux.Kernel, t linux.Value) ([]linux.Mapping, error) {
				return k.Maps(t)
			})
			if err != nil {
				return err
			}
			var out []mapsOut
			for _, p := range ps {
				if len(p.Items) == 0 && len(p.Errors) == 0 && len(args) == 0 {
					continue // a kernel thread
				}
				out = append(out, mapsOut{p.PID, p.Comm, p.Items, p.Errors})
			}
			if g.output != "table" {
				return emit(os.Stdout, g.output, out, nil)
			}
			for _, p := range out {
				if len(out) > 1 {
					linef(os.Stdout, "# %d %s", p.PID, p.Comm)
				}
				for _, e := range p.Errors {
					linef(os.Stderr, "vmwatch: warning: pid %d: %s", p.PID, e)
				}
				for _, m := range p.Maps {
					linef(os.Stdout, "%s", m.Line())
				}
			}
			return nil
		},
	}
}

// lsofRow is one descriptor in lsof's JSON lines.
type lsofOut struct {
	PID    int64      `json:"pid"`
	Comm   string     `json:"comm"`
	FDs    []linux.FD `json:"fds"`
	Errors []string   `json:"errors,omitempty"`
}

func newLsofCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "lsof [PID]...",
		Short: "List open files by descriptor, as /proc/PID/fd and fdinfo show them",
		Long: `Lists the open file descriptors of the processes given (all processes when
none is): descriptor, type, open flags (octal, as fdinfo shows them, with
O_CLOEXEC), file position, inode and the name readlink /proc/PID/fd/N gives
(paths with " (deleted)", socket:[INODE], pipe:[INODE], anon_inode:NAME).`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ps, err := readPerProcess(cmd, g, args, "process list", func(k *linux.Kernel, t linux.Value) ([]linux.FD, error) {
				return k.FDs(t)
			})
			if err != nil {
				return err
			}
			out := make([]lsofOut, 0, len(ps))
			for _, p := range ps {
				out = append(out, lsofOut{p.PID, p.Comm, p.Items, p.Errors})
			}
			return emit(os.Stdout, g.output, out, func(tw *tabwriter.Writer) {
				row(tw, "PID", "COMM", "FD", "TYPE", "FLAGS", "POS", "INODE", "NAME")
				for _, p := range out {
					for _, e := range p.Errors {
						linef(os.Stderr, "vmwatch: warning: pid %d: %s", p.PID, e)
					}
					for _, d := range p.FDs {
						name := d.Path
						if len(d.Errors) > 0 && name == "" {
							name = "(unreadable: " + d.Errors[0] + ")"
						}
						row(tw, p.PID, p.Comm, d.FD, d.Type, fmt.Sprintf("0%o", d.Flags), d.Pos, d.Inode, name)
					}
				}
			})
		},
	}
}

type envarsOut struct {
	PID     int64    `json:"pid"`
	Comm    string   `json:"comm"`
	Environ []string `json:"environ"`
	Errors  []string `json:"errors,omitempty"`
}

func newEnvarsCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "envars [PID]...",
		Short: "Show processes' environments, as /proc/PID/environ gives them",
		Long: `Reads the environment area of the processes given (all user processes when
none is) from their memory: the strings /proc/PID/environ gives, in order.
A process that changed its environment area (setproctitle) shows what is
there now, as /proc does.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ps, err := readPerProcess(cmd, g, args, "process list", func(k *linux.Kernel, t linux.Value) ([]string, error) {
				mm, err := t.Field("mm")
				if err != nil {
					return nil, err
				}
				p, err := mm.Ptr()
				if err != nil || p == 0 {
					return nil, err
				}
				return k.Environ(p)
			})
			if err != nil {
				return err
			}
			var out []envarsOut
			for _, p := range ps {
				if p.Items == nil && len(p.Errors) == 0 && len(args) == 0 {
					continue // a kernel thread
				}
				env := p.Items
				if env == nil {
					env = []string{}
				}
				out = append(out, envarsOut{p.PID, p.Comm, env, p.Errors})
			}
			return emit(os.Stdout, g.output, out, func(tw *tabwriter.Writer) {
				row(tw, "PID", "COMM", "VARIABLE", "VALUE")
				for _, p := range out {
					for _, e := range p.Errors {
						linef(os.Stderr, "vmwatch: warning: pid %d: %s", p.PID, e)
					}
					for _, kv := range p.Environ {
						k, v, _ := strings.Cut(kv, "=")
						row(tw, p.PID, p.Comm, k, v)
					}
				}
			})
		},
	}
}

type capsOut struct {
	PID  int64  `json:"pid"`
	Comm string `json:"comm"`
	linux.Capabilities
	// EffectiveNames names the effective set's capabilities.
	EffectiveNames []string `json:"effective_names"`
	Errors         []string `json:"errors,omitempty"`
}

func newCapsCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "caps [PID]...",
		Short: "Show processes' capabilities, as the Cap* lines of /proc/PID/status",
		Long: `Reads the inheritable, permitted, effective, bounding and ambient capability
sets of the processes given (all processes when none is) from their
credentials, in hex as /proc/PID/status shows them, and names the effective
ones ("full" when the effective set is the whole bounding set).`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ps, err := readPerProcess(cmd, g, args, "process list", func(k *linux.Kernel, t linux.Value) (linux.Capabilities, error) {
				return k.Caps(t)
			})
			if err != nil {
				return err
			}
			out := make([]capsOut, 0, len(ps))
			for _, p := range ps {
				out = append(out, capsOut{PID: p.PID, Comm: p.Comm, Capabilities: p.Items,
					EffectiveNames: append([]string{}, linux.CapNames(p.Items.Effective)...), Errors: p.Errors})
			}
			return emit(os.Stdout, g.output, out, func(tw *tabwriter.Writer) {
				row(tw, "PID", "COMM", "CAPINH", "CAPPRM", "CAPEFF", "CAPBND", "CAPAMB", "EFFECTIVE")
				for _, p := range out {
					for _, e := range p.Errors {
						linef(os.Stderr, "vmwatch: warning: pid %d: %s", p.PID, e)
					}
					eff := strings.Join(p.EffectiveNames, ",")
					switch {
					case p.Effective == 0:
						eff = "-"
					case p.Effective == p.Bounding:
						eff = "full"
					}
					row(tw, p.PID, p.Comm, capHex(p.Inheritable), capHex(p.Permitted), capHex(p.Effective),
						capHex(p.Bounding), capHex(p.Ambient), eff)
				}
			})
		},
	}
}

func capHex(v uint64) string { return fmt.Sprintf("%016x", v) }

type bashOut struct {
	PID     int64                `json:"pid"`
	Comm    string               `json:"comm"`
	History []linux.HistoryEntry `json:"history"`
	Errors  []string             `json:"errors,omitempty"`
}

func newBashCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "bash [PID]...",
		Short: "Recover the command history held in bash processes' memory",
		Long: `Searches the heap of every bash process (of the processes given, when pids
are) for its history list: each command with the time bash recorded it, in
the list's order. The list is in memory whether or not it was ever written
to ~/.bash_history, and stays there after HISTFILE is unset or the file is
deleted. Entries found on the heap but not in the list (index -1) follow,
by time.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			type hist struct {
				bash    bool
				entries []linux.HistoryEntry
			}
			ps, err := readPerProcess(cmd, g, args, "process list", func(k *linux.Kernel, t linux.Value) (hist, error) {
				if len(args) == 0 && !k.IsBash(t) {
					return hist{}, nil
				}
				h, err := k.BashHistory(t)
				return hist{true, h}, err
			})
			if err != nil {
				return err
			}
			out := []bashOut{}
			for _, p := range ps {
				if !p.Items.bash && len(p.Errors) == 0 {
					continue
				}
				h := p.Items.entries
				if h == nil {
					h = []linux.HistoryEntry{}
				}
				out = append(out, bashOut{p.PID, p.Comm, h, p.Errors})
			}
			return emit(os.Stdout, g.output, out, func(tw *tabwriter.Writer) {
				row(tw, "PID", "COMM", "INDEX", "TIME", "COMMAND")
				for _, p := range out {
					for _, e := range p.Errors {
						linef(os.Stderr, "vmwatch: warning: pid %d: %s", p.PID, e)
					}
					for _, e := range p.History {
						idx := strconv.Itoa(e.Index)
						if e.Index < 0 {
							idx = "-"
						}
						row(tw, p.PID, p.Comm, idx, time.Unix(e.Time, 0).UTC().Format(time.RFC3339), e.Command)
					}
				}
			})
		},
	}
}

type librariesOut struct {
	PID       int64           `json:"pid"`
	Comm      string          `json:"comm"`
	Libraries []linux.Library `json:"libraries"`
	Errors    []string        `json:"errors,omitempty"`
}

func newLibrariesCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "libraries [PID]...",
		Short: "List the ELF objects mapped into processes, with their build ids",
		Long: `Lists the ELF objects mapped into the processes given (all user processes when
none is): the program, the dynamic loader, each shared library and the vDSO,
with the address its first byte is mapped at, its ELF type and its GNU build
id (read from its notes in the process's memory: the build id names the exact
build, to match with a package or a debug file). A library loaded from memory
or from a deleted file shows its /memfd: or " (deleted)" path.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ps, err := readPerProcess(cmd, g, args, "process list", func(k *linux.Kernel, t linux.Value) ([]linux.Library, error) {
				return k.Libraries(t)
			})
			if err != nil {
				return err
			}
			var out []librariesOut
			for _, p := range ps {
				if len(p.Items) == 0 && len(p.Errors) == 0 && len(args) == 0 {
					continue // a kernel thread
				}
				out = append(out, librariesOut{p.PID, p.Comm, p.Items, p.Errors})
			}
			return emit(os.Stdout, g.output, out, func(tw *tabwriter.Writer) {
				row(tw, "PID", "COMM", "BASE", "TYPE", "BUILD_ID", "PATH")
				for _, p := range out {
					for _, e := range p.Errors {
						linef(os.Stderr, "vmwatch: warning: pid %d: %s", p.PID, e)
					}
					for _, l := range p.Libraries {
						for _, e := range l.Errors {
							linef(os.Stderr, "vmwatch: warning: pid %d %s: %s", p.PID, l.Path, e)
						}
						row(tw, p.PID, p.Comm, l.Base, l.Type, dash(l.BuildID), l.Path)
					}
				}
			})
		},
	}
}
