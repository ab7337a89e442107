package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/vmwatch/vmwatch/linux"
)

// extract: files from the guest's page cache and modules' memory, written
// to the host.

type extractOut struct {
	linux.CachedFile
	Output string `json:"output"`
	SHA256 string `json:"sha256"`
}

func newExtractCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "extract",
		Short: "Copy a file from the guest's page cache, a module's memory, a process's or the kernel's core to the host",
	}
	cmd.AddCommand(newExtractFileCmd(g), newExtractModuleCmd(g), newExtractCoreCmd(g), newExtractKernelCmd(g))
	return cmd
}

func newExtractFileCmd(g *globalFlags) *cobra.Command {
	var exe, pid int64
	var fd int
	var output string
	var maxSize int64
	cmd := &cobra.Command{
		Use:   "file [PATH] --to FILE",
		Short: "Write a file as the guest's page cache holds it",
		Long: `Writes a file's contents from the guest kernel's page cache: the file a path
names (it must be open, mapped or run by some process: only those are found),
the program a process runs (--exe PID, also when it was deleted after it
started), or a process's descriptor (--pid PID --fd N, a deleted file kept
open too). Pages the guest never read or has evicted are written as zeros and
reported; the SHA-256 of what was written is printed.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output == "" {
				return errors.New("give --to FILE for the extracted contents")
			}
			ways := 0
			if len(args) == 1 {
				ways++
			}
			if exe > 0 {
				ways++
			}
			if pid > 0 || fd >= 0 {
				if pid <= 0 || fd < 0 {
					return errors.New("--pid and --fd go together")
				}
				ways++
			}
			if ways != 1 {
				return errors.New("name the file one way: a PATH, --exe PID, or --pid PID --fd N")
			}
			f, err := os.OpenFile(output, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
			if err != nil {
				return err
			}
			h := sha256.New()
			v, _, err := withSession(cmd.Context(), g, func(s *session) (any, error) {
				k := s.k
				var file uint64
				switch {
				case len(args) == 1:
					file, err = k.FindFile(args[0])
				default:
					p := exe
					if p <= 0 {
						p = pid
					}
					tasks, terr := k.ProcessTasks([]int64{p})
					if len(tasks) == 0 {
						return nil, terr
					}
					if exe > 0 {
						file, err = k.ExeFile(tasks[0])
					} else {
						file, err = k.FDFile(tasks[0], fd)
					}
					if err != nil {
						err = fmt.Errorf("pid %d: %w", p, err)
					}
				}
				if err != nil {
					return nil, err
				}
				limit := maxSize
				if limit <= 0 {
					for _, r := range k.Mem.Ranges() {
						limit += int64(r.End - r.Start)
					}
				}
				return k.ReadCachedFile(file, limit, io.MultiWriter(f, h))
			})
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				os.Remove(output)
				return err
			}
			out := extractOut{CachedFile: v.(linux.CachedFile), Output: output, SHA256: hex.EncodeToString(h.Sum(nil))}
			if !out.Complete {
				linef(os.Stderr, "vmwatch: warning: %s: %d of %d pages are not in the guest's memory and were written as zeros (first missing: %v)",
					out.Path, out.Pages-out.Cached, out.Pages, out.Missing)
			}
			return emit(os.Stdout, g.output, out, func(tw *tabwriter.Writer) {
				row(tw, "PATH", "SIZE", "PAGES", "CACHED", "SHA256", "OUTPUT")
				row(tw, out.Path, out.Size, out.Pages, out.Cached, out.SHA256, out.Output)
			})
		},
	}
	cmd.Flags().StringVar(&output, "to", "", "write the contents to this file")
	cmd.Flags().Int64Var(&exe, "exe", 0, "the program process PID runs")
	cmd.Flags().Int64Var(&pid, "pid", 0, "with --fd: the process")
	cmd.Flags().IntVar(&fd, "fd", -1, "with --pid: the descriptor")
	cmd.Flags().Int64Var(&maxSize, "max-size", 0, "refuse files larger than this many bytes (default: the guest's memory size)")
	return cmd
}

type moduleOut struct {
	Module string            `json:"module"`
	Ranges []linux.AddrRange `json:"ranges"`
	Bytes  int64             `json:"bytes"`
	Output string            `json:"output"`
	SHA256 string            `json:"sha256"`
}

func newExtractModuleCmd(g *globalFlags) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "module NAME --to FILE",
		Short: "Write a loaded module's memory (its text, data and read-only data)",
		Long: `Writes every region of a loaded module's memory one after the other (text
first) and lists the regions with their addresses (to disassemble the text at
its load address, or to scan it with YARA). A module hidden from the list
cannot be named here; check --scan finds hidden ones.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output == "" {
				return errors.New("give --to FILE for the module's memory")
			}
			f, err := os.OpenFile(output, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
			if err != nil {
				return err
			}
			h := sha256.New()
			w := io.MultiWriter(f, h)
			v, _, err := withSession(cmd.Context(), g, func(s *session) (any, error) {
				mods, merr := s.k.Modules()
				for _, m := range mods {
					if m.Name != args[0] {
						continue
					}
					out := moduleOut{Module: m.Name, Ranges: m.Ranges, Output: output}
					for _, r := range m.Ranges {
						n := int64(r.End - r.Start)
						if n <= 0 || n > 1<<30 {
							return nil, fmt.Errorf("module %s: region %v-%v of %d bytes", m.Name, r.Start, r.End, n)
						}
						b := make([]byte, n)
						if _, err := s.k.AS.ReadAt(b, int64(r.Start)); err != nil {
							return nil, fmt.Errorf("module %s region %v: %w", m.Name, r.Start, err)
						}
						if _, err := w.Write(b); err != nil {
							return nil, err
						}
						out.Bytes += n
					}
					return out, nil
				}
				if merr != nil {
					return nil, merr
				}
				return nil, fmt.Errorf("no module %q in the module list (vmwatch lsmod lists them)", args[0])
			})
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				os.Remove(output)
				return err
			}
			out := v.(moduleOut)
			out.SHA256 = hex.EncodeToString(h.Sum(nil))
			return emit(os.Stdout, g.output, out, func(tw *tabwriter.Writer) {
				row(tw, "MODULE", "START", "END", "BYTES")
				for _, r := range out.Ranges {
					row(tw, out.Module, r.Start, r.End, int64(r.End-r.Start))
				}
				row(tw, "total", "", "", out.Bytes)
			})
		},
	}
	cmd.Flags().StringVar(&output, "to", "", "write the memory to this file")
	return cmd
}

type coreOut struct {
	linux.CoreInfo
	Output string `json:"output"`
}

func newExtractCoreCmd(g *globalFlags) *cobra.Command {
	var output string
	var maxSize int64
	cmd := &cobra.Command{
		Use:   "core PID --to FILE",
		Short: "Write a process's memory as an ELF core file that gdb opens",
		Long: `Writes a process's memory as an ELF core, laid out as the kernel's own core
dumps are: the process's status, every thread's user registers (from the top
of its kernel stack), the auxiliary vector and the mapped files in notes, and
one segment per mapping. Pages the process never touched are read from the
file's page cache for a file mapping, and left as holes (zeros) otherwise.
Open it with the program: gdb PROGRAM FILE (extract file --exe PID gives the
program as the guest holds it). The VM runs on while the core is read: give
--pause for a consistent one.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output == "" {
				return errors.New("give --to FILE for the core")
			}
			pid, err := strconv.ParseInt(args[0], 10, 64)
			if err != nil || pid <= 0 {
				return fmt.Errorf("PID %q: want a process id", args[0])
			}
			v, err := writeCore(cmd, g, output, func(s *session, f *os.File) (any, error) {
				tasks, terr := s.k.ProcessTasks([]int64{pid})
				if len(tasks) == 0 {
					if terr == nil {
						terr = fmt.Errorf("no process %d in the task list (vmwatch ps lists them)", pid)
					}
					return nil, terr
				}
				return s.k.WriteCore(tasks[0], f, uint64(max(maxSize, 0)))
			})
			if err != nil {
				return err
			}
			out := coreOut{CoreInfo: v.(linux.CoreInfo), Output: output}
			for _, e := range out.Errors {
				linef(os.Stderr, "vmwatch: warning: pid %d: %s", out.PID, e)
			}
			return emit(os.Stdout, g.output, out, func(tw *tabwriter.Writer) {
				row(tw, "PID", "COMM", "THREADS", "SEGMENTS", "PAGES", "PRESENT", "CACHED", "SIZE", "OUTPUT")
				row(tw, out.PID, out.Comm, out.Threads, out.Segments, out.Pages, out.Present, out.Cached, out.Size, out.Output)
			})
		},
	}
	cmd.Flags().StringVar(&output, "to", "", "write the core to this file")
	cmd.Flags().Int64Var(&maxSize, "max-size", 64<<30, "refuse a process with more readable memory mapped than this many bytes (0: no limit)")
	return cmd
}

type kernelCoreOut struct {
	linux.KernelCoreInfo
	Output string `json:"output"`
}

func newExtractKernelCmd(g *globalFlags) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "kernel --to FILE",
		Short: "Write the guest's memory as a kdump-style ELF core with the kernel's VMCOREINFO",
		Long: `Writes all of the guest's RAM as an ELF core laid out as a kdump vmcore: the
kernel's own VMCOREINFO note (release, page size, symbol addresses, structure
offsets, KERNELOFFSET, for crash and makedumpfile), a segment for the kernel
image at its virtual addresses, and one per range of RAM at the direct map's
addresses with its physical address. Pages of zeros are holes in the file. The
VM runs on while it is read: give --pause for a consistent core.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if output == "" {
				return errors.New("give --to FILE for the core")
			}
			v, err := writeCore(cmd, g, output, func(s *session, f *os.File) (any, error) {
				return s.k.WriteKernelCore(f)
			})
			if err != nil {
				return err
			}
			out := kernelCoreOut{KernelCoreInfo: v.(linux.KernelCoreInfo), Output: output}
			if out.VMCoreInfo == 0 {
				linef(os.Stderr, "vmwatch: warning: the kernel keeps no VMCOREINFO (built without CONFIG_CRASH_CORE?): the core has none")
			}
			return emit(os.Stdout, g.output, out, func(tw *tabwriter.Writer) {
				row(tw, "RELEASE", "SEGMENTS", "PAGES", "ZERO", "VMCOREINFO", "SIZE", "OUTPUT")
				row(tw, out.Release, out.Segments, out.Pages, out.Zero, out.VMCoreInfo, out.Size, out.Output)
			})
		},
	}
	cmd.Flags().StringVar(&output, "to", "", "write the core to this file")
	return cmd
}

// writeCore creates output and runs write on it in a session; a failed
// core is removed, not left half written.
func writeCore(cmd *cobra.Command, g *globalFlags, output string, write func(*session, *os.File) (any, error)) (any, error) {
	f, err := os.OpenFile(output, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	v, _, err := withSession(cmd.Context(), g, func(s *session) (any, error) { return write(s, f) })
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(output)
		return nil, err
	}
	return v, nil
}
