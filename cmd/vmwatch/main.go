// Command vmwatch introspects Linux virtual machines from the hypervisor:
// it reads a guest's memory from outside and rebuilds what the guest
// kernel knows, without installing anything in the guest and without
// kernel debug symbols on the host.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// Exit codes: 0 success, 1 findings (vmwatch check), 2 errors.
const (
	exitOK    = 0
	exitError = 2
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRoot()
	if err := root.ExecuteContext(ctx); err != nil {
		var ee exitError_
		if errors.As(err, &ee) {
			os.Exit(int(ee))
		}
		printError(os.Stderr, err)
		os.Exit(exitError)
	}
	os.Exit(exitOK)
}

// exitError_ asks main to exit with a status, without printing.
type exitError_ int

func (e exitError_) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// globalFlags are shared by every verb.
type globalFlags struct {
	target    string
	output    string
	pause     bool
	systemMap string
	isf       string
	noDirect  bool
	machine   string
	logLevel  string
	timeout   int
}

func newRoot() *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:   "vmwatch",
		Short: "Agentless introspection of Linux virtual machines from the hypervisor",
		Long: `vmwatch reads a running (or dumped) Linux guest's memory from outside and
rebuilds the kernel's view: processes, modules, sockets, the kernel log,
symbols. It needs no agent in the guest and no debug symbols or profiles on
the host: it finds the kernel's own symbol table (kallsyms) and type
information (BTF) in guest memory.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			return setupLogging(g.logLevel)
		},
	}
	pf := root.PersistentFlags()
	pf.StringVarP(&g.target, "target", "t", "", "the guest: "+targetUsage)
	pf.StringVarP(&g.output, "output", "o", "table", "output format: table, json or jsonl")
	pf.BoolVar(&g.pause, "pause", false, "pause the VM (QMP stop/cont) while reading, for an exact snapshot")
	pf.StringVar(&g.systemMap, "system-map", "", "use this System.map instead of the guest's kallsyms")
	pf.StringVar(&g.isf, "isf", "", "use this Volatility 3 ISF file (JSON, .xz allowed) for types instead of BTF")
	pf.BoolVar(&g.noDirect, "no-direct", false, "read guest RAM with process_vm_readv even when it could be mapped")
	pf.StringVar(&g.machine, "machine", "", "QEMU machine type (q35 or pc) for placing RAM when there is no QMP socket")
	pf.StringVar(&g.logLevel, "log-level", "warn", "log level: debug, info, warn, error")
	pf.IntVar(&g.timeout, "timeout", 30, "seconds before giving up on a guest")
	root.AddCommand(
		newInfoCmd(g), newPsCmd(g), newPstreeCmd(g), newLsmodCmd(g),
		newSocketsCmd(g), newDmesgCmd(g), newSymbolsCmd(g),
		newMapsCmd(g), newLsofCmd(g), newEnvarsCmd(g), newCapsCmd(g), newBashCmd(g), newLibrariesCmd(g), newMountsCmd(g), newIfacesCmd(g), newIomemCmd(g), newPtraceCmd(g), newExtractCmd(g),
		newCheckCmd(g), newBaselineCmd(g), newStatsCmd(g),
		newServeCmd(g), newJournalCmd(g),
		newBackupCmd(g), newBackupsCmd(g), newRestoreCmd(g), newVerifyCmd(g), newPruneCmd(g),
	)
	return root
}

func setupLogging(level string) error {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})))
	return nil
}
