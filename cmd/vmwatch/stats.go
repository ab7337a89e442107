package main

import (
	"fmt"
	"os"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/vmwatch/vmwatch/linux"
)

type statsOut struct {
	linux.GuestStats
	Top []linux.ProcessUsage `json:"top"`
}

func newStatsCmd(g *globalFlags) *cobra.Command {
	var top int
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Guest memory, load, tasks, uptime and the top processes, read from the guest kernel (no agent)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			v, _, err := withSession(cmd.Context(), g, func(s *session) (any, error) {
				st, err := s.k.Stats()
				if err != nil {
					return nil, err
				}
				o := &statsOut{GuestStats: st}
				ps, _ := s.k.Processes(linux.PSOptions{NoCmdline: true})
				for _, p := range ps {
					if u, err := s.k.Usage(p); err == nil {
						o.Top = append(o.Top, u)
					}
				}
				sort.Slice(o.Top, func(i, j int) bool {
					if o.Top[i].CPUTime != o.Top[j].CPUTime {
						return o.Top[i].CPUTime > o.Top[j].CPUTime
					}
					return o.Top[i].RSS > o.Top[j].RSS
				})
				if top > 0 && len(o.Top) > top {
					o.Top = o.Top[:top]
				}
				return o, nil
			})
			if err != nil {
				return err
			}
			o := v.(*statsOut)
			return emit(os.Stdout, g.output, o, func(tw *tabwriter.Writer) {
				row(tw, "memory:", fmt.Sprintf("%s total, %s free, %s available, %s buffers, %s cached", human(o.MemTotal), human(o.MemFree), human(o.MemAvailable), human(o.Buffers), human(o.Cached)))
				row(tw, "load:", fmt.Sprintf("%.2f %.2f %.2f (%d running, %d tasks)", o.Load[0], o.Load[1], o.Load[2], o.Running, o.Threads))
				row(tw, "uptime:", fmt.Sprintf("%s (booted %s)", (time.Duration(o.Uptime)*time.Second).String(), time.Unix(int64(o.BootTime), 0).UTC().Format(time.RFC3339)))
				tw.Flush()
				fmt.Fprintln(tw)
				row(tw, "PID", "COMM", "CPU TIME", "RSS")
				for _, p := range o.Top {
					row(tw, p.PID, p.Comm, fmt.Sprintf("%.2fs", p.CPUTime), human(p.RSS))
				}
			})
		},
	}
	cmd.Flags().IntVarP(&top, "top", "n", 10, "how many processes to list (by CPU time, then resident memory)")
	return cmd
}
