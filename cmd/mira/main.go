// Command mira runs a node of the mira peer-to-peer GPU compute market and
// talks to a running node's local API.
package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mira-market/mira/node"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "mira:", err)
		os.Exit(1)
	}
}

// globals are the flags every command shares.
type globals struct {
	logLevel string
	dataDir  string
}

func newRootCmd() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "mira",
		Short:         "mira is a peer-to-peer GPU compute market",
		Version:       node.Version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.PersistentFlags().StringVar(&g.dataDir, "data", defaultDataDir(), "the node's data dir")
	root.AddCommand(
		newInitCmd(g),
		newNodeCmd(g),
		newPeersCmd(g),
		newProvidersCmd(g),
		newJobCmd(g),
		newBlobCmd(g),
		newLedgerCmd(g),
		newReputationCmd(g),
		newTestnetCmd(g),
		newBenchCmd(g),
	)
	return root
}

func defaultDataDir() string {
	if d := os.Getenv("MIRA_DATA"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ".mira"
	}
	return home + "/.mira"
}

func (g *globals) logger() (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(strings.ToUpper(g.logLevel))); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})), nil
}
