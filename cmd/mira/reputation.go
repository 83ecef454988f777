package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/mira-market/mira/node/api"
)

func newReputationCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "reputation [PEER]",
		Short: "Print peers' records from the local ledger: jobs paid, GPU-seconds, losses, requests left unpaid",
		Long: `Print every peer's record in the local node's ledger, or one peer's.
The records are computed from ledger entries only, so every node holding
the same entries prints the same figures. --json prints the API's body
(GET /v1/reputation[/PEER]).`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := g.client(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			var recs []api.ReputationInfo
			var body any
			if len(args) == 1 {
				r, err := c.Reputation(ctx, args[0])
				if err != nil {
					return err
				}
				recs, body = []api.ReputationInfo{r}, r
			} else {
				if recs, err = c.Reputations(ctx); err != nil {
					return err
				}
				body = recs
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(body)
			}
			return writeReputations(cmd.OutOrStdout(), recs)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON, as the API serves it")
	return cmd
}

// writeReputations prints records as a table, one peer a line.
func writeReputations(out io.Writer, recs []api.ReputationInfo) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "PEER ID\tSTANDING\tJOBS PAID\tLOSSES\tSUCCESS\tGPU-S\tEARNED\tWAIVED\tAWARDS\tPAID FOR\tLEFT UNPAID")
	for _, r := range recs {
		d := r.Derived
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%s\t%s\t%s\t%d\t%d\t%d\t%d\n", r.PeerID, d.Standing, r.Provider.JobsPaid, d.Losses,
			percent(d.SuccessRatio), strconv.FormatFloat(d.GPUSeconds, 'f', -1, 64), strconv.FormatFloat(d.Earned, 'f', -1, 64),
			r.Provider.Waived, r.Requester.Awards, r.Requester.PaidFor, r.Requester.LeftUnpaid)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(out, "%d peers (losses: awards not run, receipts not claimed, verifications lost; earned in credits)\n", len(recs))
	return err
}

// percent shows a ratio as a percentage, "-" for none.
func percent(r *float64) string {
	if r == nil {
		return "-"
	}
	return strconv.FormatFloat(100**r, 'f', 1, 64) + "%"
}
