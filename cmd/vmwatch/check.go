package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/vmwatch/vmwatch/detect"
)

func newCheckCmd(g *globalFlags) *cobra.Command {
	var (
		failOn       string
		ruleFiles    []string
		noDefault    bool
		yaraFile     string
		baselineFile string
		scan         bool
		only         []string
		list         bool
		vmName       string
	)
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Run every detector once and print findings (exit 1 when one is at or above --fail-on)",
		Long: `check compares the kernel's views of itself to find what an attacker hides:
processes missing from the task list, modules missing from the module list,
redirected system calls and interrupts, patched kernel code, ftrace/kprobe
hooks, stolen credentials and suspicious processes; then it runs rules and,
if asked, YARA signatures. Exit status: 0 clean, 1 findings at or above
--fail-on, 2 error.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if list {
				tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				row(tw, "DETECTOR", "WHAT IT LOOKS FOR")
				for _, d := range detect.Detectors() {
					t := d.Title
					if d.Scan {
						t += " (with --scan)"
					}
					row(tw, d.ID, t)
				}
				return tw.Flush()
			}
			threshold, err := detect.ParseSeverity(failOn)
			if err != nil {
				return fmt.Errorf("--fail-on: %w", err)
			}
			opt := detect.Options{VM: vmName, Scan: scan, Only: only}
			if opt.VM == "" {
				opt.VM = g.target
			}
			rs := &detect.RuleSet{}
			if !noDefault {
				if rs, err = detect.DefaultRules(); err != nil {
					return err
				}
			}
			for _, f := range ruleFiles {
				if err := rs.LoadFile(f); err != nil {
					return err
				}
			}
			opt.Rules = rs
			if yaraFile != "" {
				if opt.Yara, err = detect.CompileYara(yaraFile); err != nil {
					return err
				}
			}
			var recordTo string
			if baselineFile != "" {
				b, err := detect.LoadBaseline(baselineFile)
				switch {
				case err == nil:
					opt.Baseline = b
				case errors.Is(err, os.ErrNotExist):
					recordTo = baselineFile
				default:
					return err
				}
			}
			var rep *detect.Report
			_, s, err := withSession(cmd.Context(), g, func(s *session) (any, error) {
				var err error
				if recordTo != "" {
					b, err := detect.RecordBaseline(s.k)
					if err != nil {
						return nil, err
					}
					if err := b.Save(recordTo); err != nil {
						return nil, fmt.Errorf("save baseline: %w", err)
					}
					fmt.Fprintf(os.Stderr, "vmwatch: recorded a kernel code baseline in %s; later checks compare against it\n", recordTo)
				}
				rep, err = detect.Run(cmd.Context(), s.k, opt)
				return rep, err
			})
			if err != nil {
				return err
			}
			_ = s
			warnDetectors(os.Stderr, rep.Errors)
			if err := emit(os.Stdout, g.output, rep.Findings, func(tw *tabwriter.Writer) {
				if len(rep.Findings) == 0 {
					linef(tw, "no findings (%d detectors, %s)", len(rep.Timings), totalTime(rep))
					return
				}
				row(tw, "SEVERITY", "ID", "ATT&CK", "FINDING")
				for _, f := range rep.Findings {
					row(tw, strings.ToUpper(f.Severity.String()), f.ID, f.Attack, f.Title)
				}
				tw.Flush()
				fmt.Fprintln(os.Stdout)
				for _, f := range rep.Findings {
					if f.Severity >= detect.Low {
						linef(os.Stdout, "%s %s: %s", strings.ToUpper(f.Severity.String()), f.ID, f.Explanation)
					}
				}
			}); err != nil {
				return err
			}
			if m, ok := rep.Max(); ok && m >= threshold {
				return exitError_(1)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&failOn, "fail-on", "high", "exit 1 when a finding is at or above this severity (info, low, medium, high, critical)")
	f.StringArrayVar(&ruleFiles, "rules", nil, "a YAML rules file to add (repeatable)")
	f.BoolVar(&noDefault, "no-default-rules", false, "do not load the rules shipped with vmwatch")
	f.StringVar(&yaraFile, "yara", "", "scan kernel and process memory with these YARA rules (needs a build with -tags yara)")
	f.StringVar(&baselineFile, "baseline", "", "compare kernel code with this baseline file; records it when the file does not exist")
	f.BoolVar(&scan, "scan", false, "also search all of physical memory for hidden tasks (slower)")
	f.StringSliceVar(&only, "only", nil, "run only these detectors (see --list)")
	f.BoolVar(&list, "list", false, "list the detectors and exit")
	f.StringVar(&vmName, "vm", "", "the VM's name in findings (default: the target)")
	return cmd
}

func totalTime(r *detect.Report) string {
	var t float64
	for _, x := range r.Timings {
		t += x.Ms
	}
	return (time.Duration(t * float64(time.Millisecond))).Round(time.Millisecond).String()
}

func newBaselineCmd(g *globalFlags) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "baseline -f FILE",
		Short: "Record the kernel's code and read-only data as the known-good baseline for check --baseline",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if file == "" {
				return errors.New("give the baseline file with -f FILE")
			}
			v, _, err := withSession(cmd.Context(), g, func(s *session) (any, error) {
				return detect.RecordBaseline(s.k)
			})
			if err != nil {
				return err
			}
			b := v.(*detect.Baseline)
			if err := b.Save(file); err != nil {
				return err
			}
			size := 0
			for _, r := range b.Regions {
				size += r.Size
			}
			fmt.Printf("recorded %s of kernel %s in %s\n", human(uint64(size)), b.Release, file)
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "where to write the baseline")
	return cmd
}
