package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/vmwatch/vmwatch/journal"
	"github.com/vmwatch/vmwatch/monitor"
	"github.com/vmwatch/vmwatch/web"
)

func newServeCmd(g *globalFlags) *cobra.Command {
	var (
		configFile  string
		qmps        []string
		listen      string
		stateDir    string
		checkConfig bool
		noLibvirt   bool
		interval    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Watch every VM on the host: checks, metrics, alarms, journal, Prometheus and a web dashboard",
		Long: `serve runs vmwatch as a daemon. It watches the libvirt domains of the host
(qemu:///system) and the plain QEMU VMs given in the configuration or with
--qmp NAME=SOCKET, runs the detectors and collects metrics for each VM on its
own schedule, raises alarms, runs their actions, and records everything in a
hash-chained journal. The dashboard, the JSON API (/api/) and Prometheus
metrics (/metrics) are served on --listen (loopback by default; any other
address needs a token).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg := &monitor.Config{}
			if configFile != "" {
				c, err := monitor.LoadConfig(configFile)
				if err != nil {
					return err
				}
				cfg = c
			}
			for _, q := range qmps {
				name, path, ok := strings.Cut(q, "=")
				if !ok || name == "" || path == "" {
					return fmt.Errorf("--qmp %q: want NAME=SOCKET", q)
				}
				cfg.VMs = append(cfg.VMs, monitor.VMConfig{Name: name, QMP: path})
			}
			if listen != "" {
				cfg.Listen = listen
			}
			if stateDir != "" {
				cfg.StateDir = stateDir
			}
			if noLibvirt {
				f := false
				cfg.Libvirt.Enabled = &f
			}
			if interval > 0 {
				cfg.Defaults.CheckInterval = monitor.Duration(interval)
				cfg.Defaults.MetricsInterval = monitor.Duration(interval)
			}
			cfg.SetDefaults()
			if err := cfg.Validate(); err != nil {
				return fmt.Errorf("configuration: %w", err)
			}
			if checkConfig {
				fmt.Printf("configuration is valid: listen %s, state in %s, %d plain QEMU VM(s), libvirt %s, %d alarm(s)\n",
					cfg.Listen, cfg.StateDir, len(cfg.VMs), libvirtDesc(cfg), len(cfg.Alarms))
				return nil
			}
			log := slog.Default()
			d, err := monitor.New(cfg, log)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if err := d.Start(ctx); err != nil {
				d.Stop()
				return err
			}
			srv, err := web.New(d, log)
			if err != nil {
				d.Stop()
				return err
			}
			err = srv.ListenAndServe(ctx, func(addr string) {
				scheme := "http"
				if cfg.TLS.Cert != "" {
					scheme = "https"
				}
				fmt.Fprintf(os.Stderr, "vmwatch serve: dashboard on %s://%s/ (journal %s)\n", scheme, addr, cfg.Journal.Path)
			})
			d.Stop()
			if err != nil && !errors.Is(err, context.Canceled) {
				return err
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&configFile, "config", "c", "", "configuration file (YAML; see the README)")
	f.StringArrayVar(&qmps, "qmp", nil, "watch a plain QEMU VM: NAME=QMP_SOCKET (repeatable)")
	f.StringVar(&listen, "listen", "", "address of the dashboard, API and metrics (default 127.0.0.1:8080)")
	f.StringVar(&stateDir, "state-dir", "", "where the journal, baselines and evidence go (default /var/lib/vmwatch)")
	f.BoolVar(&checkConfig, "check-config", false, "validate the configuration and exit")
	f.BoolVar(&noLibvirt, "no-libvirt", false, "do not watch libvirt domains")
	f.DurationVar(&interval, "interval", 0, "check and metrics interval for every VM (default 10s)")
	return cmd
}

func libvirtDesc(c *monitor.Config) string {
	if c.Libvirt.Enabled != nil && !*c.Libvirt.Enabled {
		return "off"
	}
	return c.Libvirt.URI
}

func newJournalCmd(g *globalFlags) *cobra.Command {
	var path, keyFile string
	open := func() (*journal.Journal, error) {
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("journal %s: %w", path, err)
		}
		var key []byte
		if keyFile != "" {
			b, err := os.ReadFile(keyFile)
			if err != nil {
				return nil, err
			}
			key = b
		}
		return journal.Open(path, journal.Options{Key: key})
	}
	cmd := &cobra.Command{Use: "journal", Short: "Verify or export the daemon's journal"}
	cmd.PersistentFlags().StringVar(&path, "journal", "/var/lib/vmwatch/journal.db", "the journal database")
	cmd.PersistentFlags().StringVar(&keyFile, "key-file", "", "the journal's HMAC key, if it has one")
	verify := &cobra.Command{
		Use:   "verify",
		Short: "Check the hash chain: report every edited, deleted or reordered record (exit 1 if any)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			j, err := open()
			if err != nil {
				return err
			}
			defer j.Close()
			n, probs, err := j.Verify(cmd.Context())
			if err != nil {
				return err
			}
			if g.output != "table" {
				emit(os.Stdout, g.output, map[string]any{"checked": n, "problems": probs, "ok": len(probs) == 0}, nil)
			} else if len(probs) == 0 {
				fmt.Printf("journal %s: %d records, the chain is intact\n", path, n)
			} else {
				fmt.Printf("journal %s: %d records, %d problem(s):\n", path, n, len(probs))
				for _, p := range probs {
					fmt.Println("  " + p.String())
				}
			}
			if len(probs) > 0 {
				return exitError_(1)
			}
			return nil
		},
	}
	var vm, kind string
	var since time.Duration
	export := &cobra.Command{
		Use:   "export",
		Short: "Write the journal as JSON lines with Elastic Common Schema field names",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			j, err := open()
			if err != nil {
				return err
			}
			defer j.Close()
			q := journal.Query{VM: vm, Kind: kind}
			if since > 0 {
				q.Since = time.Now().Add(-since)
			}
			_, err = j.Export(cmd.Context(), os.Stdout, q)
			return err
		},
	}
	export.Flags().StringVar(&vm, "vm", "", "only this VM")
	export.Flags().StringVar(&kind, "kind", "", "only this kind (finding.opened, finding.closed, alarm, lifecycle, action, evidence, daemon)")
	export.Flags().DurationVar(&since, "since", 0, "only records newer than this (e.g. 24h)")
	cmd.AddCommand(verify, export)
	return cmd
}
