package main

import (
	"fmt"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/mira-market/mira/node"
)

func newNodeCmd(g *globals) *cobra.Command {
	var (
		api       string
		listen    []string
		bootstrap []string
	)
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Run a node until Ctrl-C or SIGTERM",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			cfg, err := node.LoadConfig(g.dataDir)
			if err != nil {
				return err
			}
			if api != "" {
				cfg.API = api
			}
			if len(listen) > 0 {
				cfg.Listen = listen
			}
			cfg.Bootstrap = append(cfg.Bootstrap, bootstrap...)
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			n, err := node.Start(ctx, cfg, node.WithLogger(log))
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "mira node %s on network %q\n", n.ID(), cfg.Network)
			for _, a := range n.ListenAddrs() {
				fmt.Fprintf(out, "  listening  %s\n", a)
			}
			fmt.Fprintf(out, "  api        http://%s (token in %s/%s)\n", n.APIAddr(), cfg.DataDir, node.TokenFile)
			<-ctx.Done()
			log.Info("shutting down")
			return n.Close()
		},
	}
	f := cmd.Flags()
	f.StringVar(&api, "api", "", "API listen address, overriding the config")
	f.StringSliceVar(&listen, "listen", nil, "libp2p listen multiaddrs, overriding the config")
	f.StringSliceVar(&bootstrap, "bootstrap", nil, "extra bootstrap peer multiaddrs")
	return cmd
}
