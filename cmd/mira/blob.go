package main

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/mira-market/mira/node/api"
)

func newBlobCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "blob",
		Short: "Store and read content-addressed blobs (job inputs, wasm modules, results)",
	}
	put := &cobra.Command{
		Use:   "put FILE",
		Short: "Store a file in the local node and print its content ID (- for stdin)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := api.NewClientFromDataDir(g.dataDir)
			if err != nil {
				return err
			}
			r := io.Reader(os.Stdin)
			if args[0] != "-" {
				f, err := os.Open(args[0])
				if err != nil {
					return err
				}
				defer f.Close()
				r = f
			}
			info, err := c.PutBlob(cmd.Context(), r)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %d\n", info.ID, info.Size)
			return nil
		},
	}
	var out string
	get := &cobra.Command{
		Use:   "get ID",
		Short: "Print a blob the local node holds",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := api.NewClientFromDataDir(g.dataDir)
			if err != nil {
				return err
			}
			rc, err := c.Blob(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			defer rc.Close()
			return writeOut(cmd, out, rc, args[0])
		},
	}
	get.Flags().StringVarP(&out, "output", "o", "", "write to this file instead of stdout")
	rm := &cobra.Command{
		Use:   "rm ID",
		Short: "Unpin a blob the local node holds and remove it, unless a requester's job still needs it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := api.NewClientFromDataDir(g.dataDir)
			if err != nil {
				return err
			}
			d, err := c.DeleteBlob(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if d.Removed {
				fmt.Fprintf(cmd.OutOrStdout(), "%s removed\n", d.ID)
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "%s unpinned; kept while a requester's job needs it, then evictable\n", d.ID)
			}
			return nil
		},
	}
	cmd.AddCommand(put, get, rm)
	return cmd
}
