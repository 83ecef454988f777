package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/testnet"
)

func newBenchCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Run a benchmark scenario and print its figures",
	}
	cmd.AddCommand(newBenchStartupCmd(g), newBenchProvidersCmd(g), newBenchMarketCmd(g), newBenchLedgerCmd(g))
	return cmd
}

func newBenchStartupCmd(g *globals) *cobra.Command {
	var (
		nodes int
		idle  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "startup",
		Short: "Start an in-process testnet; report start-to-ready time per node and idle RSS",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, err := os.MkdirTemp("", "mira-bench-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(dir)
			ctx := cmd.Context()
			rssBefore, _ := node.ResidentSetSize()
			start := time.Now()
			tn, err := testnet.Start(ctx, testnet.Options{Nodes: nodes, Dir: dir})
			if err != nil {
				return err
			}
			defer tn.Close()
			started := time.Since(start)
			if nodes > 1 { // a lone node has no peers to form a network with
				if err := testnet.WaitFor(ctx, time.Minute, tn.Formed); err != nil {
					return err
				}
			}
			formed := time.Since(start)
			var ready []time.Duration
			for _, n := range tn.Nodes() {
				ready = append(ready, n.StartupTime())
			}
			slices.Sort(ready)
			select {
			case <-time.After(idle):
			case <-ctx.Done():
				return ctx.Err()
			}
			runtime.GC()
			rss, err := node.ResidentSetSize()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "nodes                      %d\n", nodes)
			fmt.Fprintf(out, "node start-to-ready        median %v  max %v\n",
				ready[len(ready)/2].Round(time.Microsecond*100), ready[len(ready)-1].Round(time.Microsecond*100))
			fmt.Fprintf(out, "all nodes started          %v\n", started.Round(time.Millisecond))
			fmt.Fprintf(out, "network formed             %v\n", formed.Round(time.Millisecond))
			fmt.Fprintf(out, "process RSS after %v idle  %.1f MiB (before start %.1f MiB; %.1f MiB per node)\n",
				idle, mib(rss), mib(rssBefore), mib(rss-rssBefore)/float64(nodes))
			return tn.Close()
		},
	}
	cmd.Flags().IntVar(&nodes, "nodes", 1, "number of nodes")
	cmd.Flags().DurationVar(&idle, "idle", 10*time.Second, "how long the network idles before RSS is read")
	return cmd
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

func newBenchProvidersCmd(g *globals) *cobra.Command {
	var nodes, providers, queries int
	cmd := &cobra.Command{
		Use:   "providers",
		Short: "Time provider lookups through the DHT from a node that is no provider",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			log, err := g.benchLogger(cmd)
			if err != nil {
				return err
			}
			tn, asker, cleanup, err := startProviderNet(ctx, log, nodes, providers, nil)
			if err != nil {
				return err
			}
			defer cleanup()
			all := market.Requirements{GPUModel: market.AnyGPU, GPUs: 1}
			var took []time.Duration
			incomplete := 0
			for range queries {
				start := time.Now()
				found, err := asker.FindProviders(ctx, all)
				took = append(took, time.Since(start))
				if err != nil || len(found) != providers {
					incomplete++
				}
			}
			slices.Sort(took)
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "nodes %d, providers %d, queries %d (gpu=any), incomplete %d\n", nodes, providers, queries, incomplete)
			fmt.Fprintf(out, "query time  median %v  p90 %v  p99 %v  max %v\n",
				pct(took, 50), pct(took, 90), pct(took, 99), took[len(took)-1].Round(time.Microsecond*10))
			return tn.Close()
		},
	}
	cmd.Flags().IntVar(&nodes, "nodes", 10, "number of nodes")
	cmd.Flags().IntVar(&providers, "providers", 3, "number of providers among them")
	cmd.Flags().IntVar(&queries, "queries", 100, "number of timed queries")
	return cmd
}

// pct is the p-th percentile of sorted durations (nearest rank).
func pct(sorted []time.Duration, p int) time.Duration {
	i := (len(sorted)*p + 99) / 100
	return sorted[max(i-1, 0)].Round(time.Microsecond * 10)
}

// median is the middle value of v (the mean of the two middle ones for an
// even count); v is sorted in place.
func median(v []float64) float64 {
	slices.Sort(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

// benchLogger is where a bench's nodes log: warnings and errors on stderr
// (a figure measured past an error is no figure), or what --log-level asks.
func (g *globals) benchLogger(cmd *cobra.Command) (*slog.Logger, error) {
	if f := cmd.Flag("log-level"); f == nil || !f.Changed {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})), nil
	}
	return g.logger()
}

// benchWasmCache is the compilation cache every benchmark's testnet
// shares, in the user's own cache dir: each run is a fresh testnet, and
// compiling the sample modules again each time (seconds of CPU, and the
// compiler's garbage left to collect while the market is timed) is not the
// market's cost. A node uses it only if it is the user's own and mode
// 0700; "" (no cache dir) gives each testnet its own.
func benchWasmCache() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "mira", "bench-wasm-cache")
}

// startProviderNet starts a testnet whose members 1..providers sell
// capacity, and waits until its last member (the asker) finds them all, so
// timed runs measure the market, not the network's warm-up.
func startProviderNet(ctx context.Context, log *slog.Logger, nodes, providers int, adjust func(*node.Config)) (*testnet.Testnet, *node.Node, func(), error) {
	if providers < 1 || providers >= nodes {
		return nil, nil, nil, fmt.Errorf("--providers must be in 1..%d", nodes-1)
	}
	dir, err := os.MkdirTemp("", "mira-bench-")
	if err != nil {
		return nil, nil, nil, err
	}
	withProviders := testnet.WithProviders(providers)
	configure := func(i int, c *node.Config) {
		withProviders(i, c)
		if adjust != nil {
			adjust(c)
		}
	}
	tn, err := testnet.Start(ctx, testnet.Options{Nodes: nodes, Dir: dir, Configure: configure, Log: log, WasmCacheDir: benchWasmCache()})
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, nil, err
	}
	cleanup := func() { tn.Close(); os.RemoveAll(dir) }
	// Compiling the sample modules is start-up work, not the market's.
	for _, n := range tn.Nodes() {
		select {
		case <-n.Warm():
		case <-ctx.Done():
			cleanup()
			return nil, nil, nil, ctx.Err()
		}
	}
	asker := tn.Node(nodes - 1)
	if err := testnet.WaitFor(ctx, time.Minute, func() error {
		found, err := asker.FindProviders(ctx, market.Requirements{GPUModel: market.AnyGPU, GPUs: 1})
		if err == nil && len(found) != providers {
			err = fmt.Errorf("found %d of %d providers", len(found), providers)
		}
		return err
	}); err != nil {
		cleanup()
		return nil, nil, nil, err
	}
	return tn, asker, cleanup, nil
}
