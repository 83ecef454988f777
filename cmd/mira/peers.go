package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mira-market/mira/node/api"
)

// apiTimeout bounds one CLI call to the local API.
const apiTimeout = 30 * time.Second

// client connects to the running node of --data, with a context that
// bounds the call.
func (g *globals) client(cmd *cobra.Command) (*api.Client, context.Context, context.CancelFunc, error) {
	c, err := api.NewClientFromDataDir(g.dataDir)
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), apiTimeout)
	return c, ctx, cancel, nil
}

func newPeersCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "peers",
		Short: "List the running node's connected peers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, ctx, cancel, err := g.client(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			peers, err := c.Peers(ctx)
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "PEER ID\tLATENCY\tADDRESS")
			for _, p := range peers {
				addr := ""
				if len(p.Addrs) > 0 {
					addr = p.Addrs[0]
				}
				fmt.Fprintf(w, "%s\t%.2f ms\t%s\n", p.PeerID, p.LatencyMS, addr)
			}
			return w.Flush()
		},
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "connect MULTIADDR",
		Short: "Dial a peer (a multiaddr ending in /p2p/<peer id>)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := g.client(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			id, err := c.Connect(ctx, args[0])
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "connected to", id)
			return nil
		},
	})
	return cmd
}
