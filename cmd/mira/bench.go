package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mira-market/mira/testnet"
)

func newBenchCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Run a benchmark scenario and print its figures",
	}
	cmd.AddCommand(newBenchStartupCmd(g))
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
			rssBefore, _ := residentSetSize()
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
			rss, err := residentSetSize()
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

// residentSetSize reads this process's resident set size from /proc.
func residentSetSize() (int64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("read RSS: %w", err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse VmRSS %q: %w", rest, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/self/status")
}

