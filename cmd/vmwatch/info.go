package main

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/vmwatch/vmwatch/guestmem"
	"github.com/vmwatch/vmwatch/linux"
)

type stepOut struct {
	Name string  `json:"name"`
	Ms   float64 `json:"ms"`
}

type infoOut struct {
	Target        string              `json:"target"`
	MemorySource  string              `json:"memory_source"`
	RAM           []guestmem.Range    `json:"ram"`
	RAMBytes      uint64              `json:"ram_bytes"`
	Release       string              `json:"release"`
	Banner        string              `json:"banner"`
	TextStart     linux.Addr          `json:"text_start"`
	PhysStart     linux.Addr          `json:"phys_start"`
	VirtShift     string              `json:"kaslr_virtual_shift"`
	PhysShift     string              `json:"kaslr_physical_shift"`
	PhysBase      linux.Addr          `json:"phys_base"`
	PageTableRoot linux.Addr          `json:"page_table_root"`
	PagingLevels  int                 `json:"paging_levels"`
	FoundBy       string              `json:"found_by"`
	Symbols       int                 `json:"symbols"`
	SymbolSource  string              `json:"symbol_source"`
	Kallsyms      *linux.KallsymsInfo `json:"kallsyms,omitempty"`
	Types         int                 `json:"types"`
	TypeSource    string              `json:"type_source"`
	BTFBytes      int                 `json:"btf_bytes,omitempty"`
	BTFAddr       linux.Addr          `json:"btf_address,omitempty"`
	// Namespaces are the guest's first namespaces (init's): a process or
	// socket in another one belongs to a container or an ip netns.
	Namespaces  *linux.InitNamespaces `json:"namespaces,omitempty"`
	Steps       []stepOut             `json:"bootstrap"`
	BootstrapMs float64               `json:"bootstrap_ms"`
	PausedMs    *float64              `json:"paused_ms,omitempty"`
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func newInfoCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "info",
		Short: "Kernel release, KASLR shifts, page-table root, symbols, types, RAM and bootstrap timings",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			v, s, err := withSession(cmd.Context(), g, func(s *session) (any, error) {
				k := s.k
				o := &infoOut{
					Target: g.target, MemorySource: s.tg.Mem.Describe(), RAM: s.tg.Mem.Ranges(),
					RAMBytes: guestmem.TotalSize(s.tg.Mem.Ranges()),
					Release:  k.Release, Banner: k.Banner,
					TextStart: linux.Addr(k.Loc.TextStart), PhysStart: linux.Addr(k.Loc.PhysStart),
					VirtShift: hexSigned(k.Loc.VirtShift()), PhysShift: hexSigned(k.Loc.PhysShift()),
					PhysBase: linux.Addr(k.Loc.PhysBase()), PageTableRoot: linux.Addr(k.Loc.Root),
					PagingLevels: k.Loc.Levels, FoundBy: k.Loc.Source,
					Symbols: k.Syms.Len(), SymbolSource: k.Syms.Source, Kallsyms: k.Kallsyms,
					Types: k.Types.Count(), TypeSource: k.Types.Source(), BTFBytes: k.BTFSize,
					BTFAddr: linux.Addr(k.BTFAddr),
				}
				if ns, err := k.InitNamespaces(); err == nil {
					o.Namespaces = &ns
				}
				var total time.Duration
				for _, st := range k.Steps {
					o.Steps = append(o.Steps, stepOut{st.Name, ms(st.Duration)})
					total += st.Duration
				}
				o.BootstrapMs = ms(total)
				return o, nil
			})
			if err != nil {
				return err
			}
			o := v.(*infoOut)
			if g.pause {
				p := ms(s.paused)
				o.PausedMs = &p
			}
			return emit(os.Stdout, g.output, o, func(tw *tabwriter.Writer) {
				row(tw, "target:", o.Target)
				row(tw, "memory:", o.MemorySource)
				var rs []string
				for _, r := range o.RAM {
					rs = append(rs, r.String())
				}
				row(tw, "RAM:", fmt.Sprintf("%s (%s)", strings.Join(rs, " "), human(o.RAMBytes)))
				row(tw, "kernel:", o.Release)
				row(tw, "banner:", o.Banner)
				row(tw, "kernel text:", fmt.Sprintf("%v (physical %v)", o.TextStart, o.PhysStart))
				row(tw, "KASLR shift:", fmt.Sprintf("virtual %s, physical %s, phys_base %v", o.VirtShift, o.PhysShift, o.PhysBase))
				row(tw, "page tables:", fmt.Sprintf("root %v, %d levels (found by %s)", o.PageTableRoot, o.PagingLevels, o.FoundBy))
				row(tw, "symbols:", fmt.Sprintf("%d from %s", o.Symbols, o.SymbolSource))
				if o.Kallsyms != nil {
					row(tw, "kallsyms:", fmt.Sprintf("layout %s, token table at %v", o.Kallsyms.Layout, o.Kallsyms.TokenTable))
				}
				if o.BTFBytes > 0 {
					row(tw, "types:", fmt.Sprintf("%d from %s at %v (%s)", o.Types, o.TypeSource, o.BTFAddr, human(uint64(o.BTFBytes))))
				} else {
					row(tw, "types:", fmt.Sprintf("%d from %s", o.Types, o.TypeSource))
				}
				if o.Namespaces != nil {
					row(tw, "namespaces:", fmt.Sprintf("pid:[%d] net:[%d] mnt:[%d] (init's)", o.Namespaces.PID, o.Namespaces.Net, o.Namespaces.Mnt))
				}
				var st []string
				for _, x := range o.Steps {
					st = append(st, fmt.Sprintf("%s %.1f ms", x.Name, x.Ms))
				}
				row(tw, "bootstrap:", fmt.Sprintf("%.1f ms (%s)", o.BootstrapMs, strings.Join(st, ", ")))
				if o.PausedMs != nil {
					row(tw, "paused:", fmt.Sprintf("%.1f ms", *o.PausedMs))
				}
			})
		},
	}
}

func human(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}
