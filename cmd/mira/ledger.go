package main

import (
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/spf13/cobra"
)

func newLedgerCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ledger",
		Short: "Read the local node's ledger: balances, entries, verification",
	}
	balance := &cobra.Command{
		Use:   "balance [ACCOUNT]",
		Short: "Print an account's balance and held credits (default: this node's)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := g.client(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			b, err := c.Balance(ctx, accountArg(args))
			if err != nil {
				return err
			}
			frozen := ""
			if b.Frozen {
				frozen = "  FROZEN (equivocated)"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s  balance %.6f  held %.6f  available %.6f%s\n", b.Account, b.Balance, b.Held, b.Available, frozen)
			return nil
		},
	}
	var after uint64
	var limit int
	entries := &cobra.Command{
		Use:   "entries [ACCOUNT]",
		Short: "Print an account's ledger entries as JSON lines (default: this node's)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := g.client(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			es, err := c.Entries(ctx, accountArg(args), after, limit)
			if err != nil {
				return err
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			for _, e := range es {
				if err := enc.Encode(e); err != nil {
					return err
				}
			}
			return nil
		},
	}
	entries.Flags().Uint64Var(&after, "after", 0, "only entries after this sequence number")
	entries.Flags().IntVar(&limit, "limit", 100, "at most this many entries (1..1000)")
	verify := &cobra.Command{
		Use:   "verify",
		Short: "Re-validate the whole local ledger and report problems",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, ctx, cancel, err := g.client(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			v, err := c.VerifyLedger(ctx)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "entries %d  digest %s  total %s credits\n", v.Entries, v.Digest, strconv.FormatFloat(v.Total, 'f', -1, 64))
			for _, p := range v.Problems {
				fmt.Fprintln(out, "problem:", p)
			}
			if !v.OK {
				return fmt.Errorf("ledger has %d problem(s)", len(v.Problems))
			}
			fmt.Fprintln(out, "ok")
			return nil
		},
	}
	cmd.AddCommand(balance, entries, verify)
	return cmd
}

// accountArg is the optional ACCOUNT argument; "" means the node's own.
func accountArg(args []string) string {
	if len(args) == 1 {
		return args[0]
	}
	return ""
}
