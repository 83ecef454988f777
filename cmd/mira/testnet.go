package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/testnet"
)

func newTestnetCmd(g *globals) *cobra.Command {
	var (
		nodes     int
		providers int
		jobs      int
		dir       string
		runFor    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "testnet",
		Short: "Run a private network of several nodes in this process, on loopback",
		Long: `Run a private network of several real nodes in this process: each has its
own identity, data dir and database, listens on loopback TCP, and
bootstraps to the first node. Without --dir the data lives in a temporary
dir removed at exit; with --dir it stays and a later run reuses it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !cmd.Flags().Changed("log-level") {
				g.logLevel = "warn" // keep the status output readable
			}
			log, err := g.logger()
			if err != nil {
				return err
			}
			if dir == "" {
				tmp, err := os.MkdirTemp("", "mira-testnet-")
				if err != nil {
					return err
				}
				defer os.RemoveAll(tmp)
				dir = tmp
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			if runFor > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, runFor)
				defer cancel()
			}
			out := cmd.OutOrStdout()
			start := time.Now()
			tn, err := testnet.Start(ctx, testnet.Options{
				Nodes: nodes, Dir: dir, Log: log,
				Configure: testnet.WithProviders(min(providers, nodes-1)),
			})
			if err != nil {
				return err
			}
			defer tn.Close()
			fmt.Fprintf(out, "testnet of %d nodes in %s (started in %v)\n", nodes, dir, time.Since(start).Round(time.Millisecond))
			for i, n := range tn.Nodes() {
				role := "requester"
				if n.IsProvider() {
					g := n.GPUs()[0]
					role = fmt.Sprintf("provider %dx %s", g.Count, g.Model)
				}
				fmt.Fprintf(out, "  node%-2d %s  %-28s api http://%s  token %s\n", i, n.ID(), role, n.APIAddr(), filepath.Join(tn.Dir(i), node.TokenFile))
			}
			var mu sync.Mutex // one writer at a time: status line and job lines
			if jobs > 0 {
				go runSampleJobs(ctx, out, &mu, tn, jobs, min(providers, nodes-1))
			}
			formedAt := watchStatus(ctx, out, &mu, tn, start)
			printSummary(out, tn, start, formedAt)
			if err := tn.Close(); err != nil {
				return err
			}
			if formedAt == 0 {
				return fmt.Errorf("the network did not form")
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&nodes, "nodes", 5, "number of nodes")
	f.IntVar(&providers, "providers", 3, "how many nodes (after node0) declare GPUs and sell capacity")
	f.IntVar(&jobs, "jobs", 4, "sample jobs (wasm and noop) the last node posts once the providers are found")
	f.StringVar(&dir, "dir", "", "keep the nodes' data dirs here (default: a temporary dir)")
	f.DurationVar(&runFor, "for", 0, "run for this long, print a summary and exit (default: until Ctrl-C)")
	return cmd
}

// watchStatus prints a status line every second until ctx ends, rewriting
// one line on a terminal. It returns how long the network took to form (0
// if it never did).
func watchStatus(ctx context.Context, out io.Writer, mu *sync.Mutex, tn *testnet.Testnet, start time.Time) time.Duration {
	var formedAt time.Duration
	tty := isTerminal(out)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		if formedAt == 0 && tn.Formed() == nil {
			formedAt = time.Since(start)
			mu.Lock()
			fmt.Fprintf(out, "\r\033[K"[:clearLen(tty)]+"network formed after %v\n", formedAt.Round(time.Millisecond))
			mu.Unlock()
		}
		line := statusLine(tn, start)
		if tty {
			mu.Lock()
			fmt.Fprintf(out, "\r\033[K%s", line)
			mu.Unlock()
		}
		select {
		case <-ctx.Done():
			if tty {
				fmt.Fprintln(out)
			}
			return formedAt
		case <-t.C:
			if !tty && int(time.Since(start).Seconds())%5 == 0 {
				mu.Lock()
				fmt.Fprintln(out, line)
				mu.Unlock()
			}
		}
	}
}

func statusLine(tn *testnet.Testnet, start time.Time) string {
	nodes := tn.Nodes()
	minPeers, maxPeers, minRT := -1, 0, -1
	for _, n := range nodes {
		p, rt := len(n.ConnectedPeers()), n.RoutingTableSize()
		if minPeers < 0 || p < minPeers {
			minPeers = p
		}
		maxPeers = max(maxPeers, p)
		if minRT < 0 || rt < minRT {
			minRT = rt
		}
	}
	found := "?"
	if n0 := tn.Node(0); n0 != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		recs, err := n0.FindProviders(ctx, market.Requirements{GPUModel: market.AnyGPU})
		cancel()
		if err == nil {
			found = fmt.Sprint(len(recs))
		}
	}
	return fmt.Sprintf("[%5.0fs] nodes up %d/%d  peers per node %d..%d  dht routing table >= %d  providers seen by node0 %s",
		time.Since(start).Seconds(), len(nodes), tn.Len(), minPeers, maxPeers, minRT, found)
}

func printSummary(out io.Writer, tn *testnet.Testnet, start time.Time, formedAt time.Duration) {
	fmt.Fprintf(out, "summary after %v:\n", time.Since(start).Round(time.Second))
	if formedAt > 0 {
		fmt.Fprintf(out, "  network formed after %v\n", formedAt.Round(time.Millisecond))
	} else {
		fmt.Fprintln(out, "  network did NOT form:", tn.Formed())
	}
	for i, n := range tn.Nodes() {
		fmt.Fprintf(out, "  node%-2d %s  ready in %v  peers %d  dht %d\n", i, n.ID(),
			n.StartupTime().Round(time.Millisecond), len(n.ConnectedPeers()), n.RoutingTableSize())
	}
	if n0 := tn.Node(0); n0 != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		recs, err := n0.FindProviders(ctx, market.Requirements{GPUModel: market.AnyGPU})
		cancel()
		if err != nil {
			fmt.Fprintln(out, "  provider lookup from node0 failed:", err)
		}
		for _, r := range recs {
			fmt.Fprintf(out, "  node0 finds provider %s: %dx %s, %d free slot(s), batch price %g credits/GPU-s\n",
				r.Provider, r.GPUs[0].Count, r.GPUs[0].Model, r.FreeSlots, float64(r.PriceBatch)/1e6)
		}
	}
	printBalances(out, tn)
	if rss, err := node.ResidentSetSize(); err == nil {
		fmt.Fprintf(out, "  process RSS %.1f MiB\n", float64(rss)/(1<<20))
	}
}

// printBalances ends the summary with every account's balance as each node
// sees it, once the ledgers have had a moment to reconcile, and whether all
// nodes agree.
func printBalances(out io.Writer, tn *testnet.Testnet) {
	nodes := tn.Nodes()
	if len(nodes) == 0 {
		return
	}
	agree := func() error {
		want, err := nodes[0].Ledger().Digest()
		if err != nil {
			return err
		}
		for i, n := range nodes[1:] {
			if got, err := n.Ledger().Digest(); err != nil || got != want {
				return fmt.Errorf("node%d's ledger differs from node0's", i+1)
			}
		}
		return nil
	}
	err := testnet.WaitFor(context.Background(), 10*time.Second, agree)
	fmt.Fprintln(out, "  balances in credits (balance, held), as node0's ledger has them:")
	for i, m := range nodes {
		if b, berr := nodes[0].Ledger().Balance(m.ID()); berr == nil {
			fmt.Fprintf(out, "    node%-2d %12.6f  %10.6f\n", i, float64(b.Balance)/1e6, float64(b.Held)/1e6)
		}
	}
	if err != nil {
		fmt.Fprintln(out, "  ledgers do NOT agree yet:", err)
		return
	}
	d, _ := nodes[0].Ledger().Digest()
	total, _ := nodes[0].Ledger().Total()
	fmt.Fprintf(out, "  all %d ledgers agree: %d entries, digest %s, total %.3f credits\n",
		len(nodes), nodes[0].Ledger().Count(), d.String()[:16], float64(total)/1e6)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// clearLen is how much of "\r\033[K" (go to column 0, clear the line) to
// print before a line: all of it on a terminal, where a status line may
// be there, none of it elsewhere.
func clearLen(tty bool) int {
	if tty {
		return 4
	}
	return 0
}
