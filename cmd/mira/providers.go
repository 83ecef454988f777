package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mira-market/mira/node/api"
)

func newProvidersCmd(g *globals) *cobra.Command {
	var q api.ProviderQuery
	cmd := &cobra.Command{
		Use:   "providers",
		Short: "List the providers that fit a GPU requirement, found through the DHT",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, ctx, cancel, err := g.client(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			providers, err := c.Providers(ctx, q)
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "PEER ID\tGPUS\tINTERACTIVE\tBATCH\tFREE\tEXECUTORS\tEXPIRES IN")
			for _, p := range providers {
				var gpus []string
				for _, g := range p.GPUs {
					gpus = append(gpus, fmt.Sprintf("%dx %s %dGiB (%s)", g.Count, g.Model, g.VRAMMiB/1024, g.Source))
				}
				fmt.Fprintf(w, "%s\t%s\t%g\t%g\t%d\t%s\t%v\n", p.PeerID, strings.Join(gpus, ", "),
					p.Prices["interactive"], p.Prices["batch"], p.FreeSlots, strings.Join(p.Executors, ","),
					time.Until(p.ExpiresAt).Round(time.Second))
			}
			if err := w.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%d providers (prices in credits per GPU-second)\n", len(providers))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&q.GPU, "gpu", "any", "GPU model (e.g. nvidia-h100) or any")
	f.IntVar(&q.Count, "count", 1, "GPUs needed on one provider")
	f.IntVar(&q.VRAMMiB, "vram-mib", 0, "least VRAM per GPU, MiB")
	return cmd
}
