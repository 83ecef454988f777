package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
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

func newBenchMarketCmd(g *globals) *cobra.Command {
	var nodes, providers, jobs, burst, bursts, slots int
	var executor, cpuProfile string
	cmd := &cobra.Command{
		Use:   "market",
		Short: "Time submit-to-lease and submit-to-done of each tier on an in-process testnet (noop or wasm jobs)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			log, err := g.benchLogger(cmd)
			if err != nil {
				return err
			}
			tn, asker, cleanup, err := startProviderNet(ctx, log, nodes, providers, func(c *node.Config) {
				c.Provider.Slots = slots
				// The node's own background intervals, not the testnet's
				// test-speed ones: a reconciliation every second fetches
				// the entries that gossip is still delivering.
				d := node.DefaultConfig(c.DataDir)
				c.ReconcileInterval, c.PingInterval, c.RedialInterval = d.ReconcileInterval, d.PingInterval, d.RedialInterval
			})
			if err != nil {
				return err
			}
			defer cleanup()
			if cpuProfile != "" {
				f, err := os.Create(cpuProfile)
				if err != nil {
					return err
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return err
				}
				defer pprof.StopCPUProfile()
			}
			out := cmd.OutOrStdout()
			for _, tier := range []string{protocol.TierInteractive, protocol.TierBatch} {
				var took, done, toAssigned, toRunning []time.Duration
				for range jobs {
					spec := &pb.JobSpec{Executor: executor, Tier: tier, MaxPrice: 10000, MaxDurationMs: 10000, Resources: &pb.Resources{Gpus: 1}}
					if executor == "wasm" {
						spec.Module, spec.Args = "sample", []string{"echo", "hi"}
					}
					start := time.Now()
					j, err := asker.SubmitJob(ctx, spec, start.Add(time.Minute))
					if err != nil {
						return err
					}
					ch, err := asker.WatchJob(ctx, j.ID)
					if err != nil {
						return err
					}
					var last market.Job
					// The engine's clock of the award; a snapshot of it can
					// be missed when the acceptance follows at once.
					var assignedAt time.Time
					for s := range ch {
						if s.State == market.Assigned && assignedAt.IsZero() {
							assignedAt = s.Updated
						}
						last = s
					}
					if last.State != market.Succeeded {
						return fmt.Errorf("job %s ended %s: %s", j.ID, last.State, last.Error)
					}
					// The lease began at the acceptance, in the engine's clock
					// (the watcher may see the job only once it has ended).
					took, done = append(took, last.Leased.Sub(start)), append(done, time.Since(start))
					if !assignedAt.IsZero() {
						toAssigned = append(toAssigned, assignedAt.Sub(last.Created))
						toRunning = append(toRunning, last.Leased.Sub(assignedAt))
					}
				}
				slices.Sort(took)
				slices.Sort(done)
				fmt.Fprintf(out, "%-11s %d %s jobs one at a time: submit->lease p50 %v  p99 %v  max %v;  submit->succeeded p50 %v  p99 %v\n",
					tier, jobs, executor, pct(took, 50), pct(took, 99), took[len(took)-1].Round(10*time.Microsecond), pct(done, 50), pct(done, 99))
				if len(toAssigned) > 0 {
					// Assigned is the engine's award (the bid's arrival);
					// the award leaves once the posting hold is on disk, so
					// the second stage holds that wait and the provider's
					// acceptance.
					slices.Sort(toAssigned)
					slices.Sort(toRunning)
					fmt.Fprintf(out, "%-11s stages of %d: submit->assigned p50 %v  p99 %v;  assigned->running p50 %v  p99 %v\n",
						tier, len(toAssigned), pct(toAssigned, 50), pct(toAssigned, 99), pct(toRunning, 50), pct(toRunning, 99))
				}
			}
			if burst == 0 || bursts < 1 {
				return tn.Close()
			}
			var figs []burstFigures
			for range bursts {
				b, err := benchBurst(ctx, out, tn, asker, burst)
				if err != nil {
					return err
				}
				figs = append(figs, b)
			}
			// The cap is measured right after, with the testnet stopped
			// so that its background work does not slow the measurement.
			pprof.StopCPUProfile() // a --cpuprofile is of the market, not of the cap's measurement
			if err := tn.Close(); err != nil {
				return err
			}
			c, err := measureCap("bench", nodes, providers)
			if err != nil {
				return fmt.Errorf("measure the signature cap: %w", err)
			}
			fmt.Fprintf(out, "signature cap (measured just now): %v\n", c)
			var rates, cpus, settled []float64
			for _, b := range figs {
				rates = append(rates, b.leaseRate/(c.JobsPerSecond()/2))
				cpus = append(cpus, b.cpuPerJob.Seconds()/c.PerJob().Seconds())
				settled = append(settled, b.settledCPUPerJob.Seconds()/c.PerJob().Seconds())
				fmt.Fprintf(out, "burst against the cap: %.0f leases/s = %.2f × cap/2 (the goal: ≥ 1); CPU per job %.2f × the cap's, %.2f × with settlement (the goal: ≤ 2)\n",
					b.leaseRate, rates[len(rates)-1], cpus[len(cpus)-1], settled[len(settled)-1])
			}
			if len(figs) > 1 {
				fmt.Fprintf(out, "median of %d bursts: %.2f × cap/2; CPU per job %.2f × the cap's, %.2f × with settlement\n",
					len(figs), median(rates), median(cpus), median(settled))
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&nodes, "nodes", 10, "number of nodes")
	cmd.Flags().IntVar(&providers, "providers", 3, "number of providers among them")
	cmd.Flags().IntVar(&jobs, "jobs", 100, "jobs per tier, one at a time")
	cmd.Flags().IntVar(&burst, "burst", 1000, "batch jobs posted at once, for leases/s (0: skip)")
	cmd.Flags().IntVar(&bursts, "bursts", 1, "how many bursts, one after another (a VM's speed drifts: their median is steadier)")
	cmd.Flags().IntVar(&slots, "slots", 1024, "slots per provider")
	cmd.Flags().StringVar(&executor, "executor", "noop", "noop, or wasm (the shipped sample module, echo hi)")
	cmd.Flags().StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of the timed part to this file")
	return cmd
}

// burstFigures are what a burst measured.
type burstFigures struct {
	leaseRate                   float64 // leases/s, to the last lease
	cpuPerJob, settledCPUPerJob time.Duration
}

// benchBurst posts n batch noop jobs at once and times until every one
// has been leased, then until every node's ledger has settled them.
func benchBurst(ctx context.Context, out io.Writer, tn *testnet.Testnet, asker *node.Node, n int) (burstFigures, error) {
	// Each job adds four entries (hold, lease, receipt, payment) to every
	// ledger; the count is read before the first job goes out.
	settledAt := maxLedgerCount(tn) + 4*uint64(n)
	start, cpu0 := time.Now(), processCPU()
	var chans []<-chan market.Job
	// When each job was submitted, awarded and accepted, from the start.
	type stages struct{ submitted, assigned, running time.Duration }
	timeline := make([]stages, n)
	var twg sync.WaitGroup
	for i := range n {
		spec := &pb.JobSpec{Executor: "noop", Tier: protocol.TierBatch, MaxPrice: 10000, MaxDurationMs: 10000, Resources: &pb.Resources{Gpus: 1}}
		j, err := asker.SubmitJob(ctx, spec, time.Now().Add(5*time.Minute))
		if err != nil {
			return burstFigures{}, err
		}
		ch, err := asker.WatchJob(ctx, j.ID)
		if err != nil {
			return burstFigures{}, err
		}
		// Each job's states are timed as they come, and passed on.
		timeline[i].submitted = time.Since(start)
		timed := make(chan market.Job, 16)
		twg.Add(1)
		go func() {
			defer twg.Done()
			defer close(timed)
			for s := range ch {
				if s.State == market.Assigned && timeline[i].assigned == 0 {
					timeline[i].assigned = time.Since(start)
				}
				if s.State == market.Running && timeline[i].running == 0 {
					timeline[i].running = time.Since(start)
					// A watcher can miss a passing state.
					timeline[i].assigned = cmp.Or(timeline[i].assigned, timeline[i].running)
				}
				timed <- s
			}
		}()
		chans = append(chans, timed)
	}
	posted := time.Since(start)
	var lastLease time.Duration
	succeeded := 0
	failures := map[string]int{}
	for _, ch := range chans {
		leased := false
		var last market.Job
		for s := range ch {
			if !leased && (s.State == market.Running || s.State.Terminal()) {
				leased = true
				lastLease = max(lastLease, time.Since(start))
			}
			last = s
		}
		if last.State == market.Succeeded {
			succeeded++
		} else {
			failures[string(last.State)+": "+last.Error]++
		}
	}
	for why, count := range failures {
		fmt.Fprintf(out, "burst: %d jobs ended %s\n", count, why)
	}
	twg.Wait()
	pct := func(d func(stages) time.Duration) string {
		v := make([]time.Duration, 0, n)
		for _, x := range timeline {
			if x.running != 0 { // a job that never ran has no stages
				v = append(v, d(x))
			}
		}
		if len(v) == 0 {
			return "none"
		}
		slices.Sort(v)
		return fmt.Sprintf("p50 %v p90 %v", v[len(v)/2].Round(time.Millisecond), v[len(v)*9/10].Round(time.Millisecond))
	}
	fmt.Fprintf(out, "burst stages: submit->assigned %s; assigned->running %s\n",
		pct(func(x stages) time.Duration { return x.assigned - x.submitted }), pct(func(x stages) time.Duration { return x.running - x.assigned }))
	took, cpu := time.Since(start), processCPU()-cpu0
	leaseRate, cpuPerJob := float64(n)/lastLease.Seconds(), cpu/time.Duration(n)
	fmt.Fprintf(out, "burst: %d batch jobs posted in %v; all leased after %v (%.0f leases/s), all ended after %v, %d succeeded; %.2f ms of CPU per job (all nodes, %.0f%% of %d cores)\n",
		n, posted.Round(time.Millisecond), lastLease.Round(time.Millisecond), leaseRate, took.Round(time.Millisecond), succeeded,
		ms(cpuPerJob), 100*cpu.Seconds()/took.Seconds()/float64(runtime.NumCPU()), runtime.NumCPU())
	// A burst must stay within the default per-peer limits ([limits]).
	refused := map[string]int{}
	for _, m := range tn.Nodes() {
		for what, k := range m.PeerLimited() {
			refused[what] += k
		}
	}
	fmt.Fprintf(out, "burst: refused by per-peer limits, all nodes: %v\n", refused)
	// The jobs' ledger entries (their payments last) are still reaching
	// the other nodes: a sustained rate pays for that too.
	if err := testnet.WaitFor(ctx, time.Minute, func() error { return ledgersSettled(tn, settledAt) }); err != nil {
		return burstFigures{}, fmt.Errorf("burst: ledgers did not settle: %w", err)
	}
	settled, settledCPU := time.Since(start), processCPU()-cpu0
	fmt.Fprintf(out, "burst: every ledger settled after %v; %.2f ms of CPU per job with settlement\n", settled.Round(time.Millisecond), ms(settledCPU/time.Duration(n)))
	return burstFigures{leaseRate: leaseRate, cpuPerJob: cpuPerJob, settledCPUPerJob: settledCPU / time.Duration(n)}, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func maxLedgerCount(tn *testnet.Testnet) uint64 {
	var most uint64
	for _, n := range tn.Nodes() {
		most = max(most, n.Ledger().Count())
	}
	return most
}

// ledgersSettled reports whether every node holds the same number of
// ledger entries, at least want, none of them waiting for a predecessor.
func ledgersSettled(tn *testnet.Testnet, want uint64) error {
	nodes := tn.Nodes()
	first := nodes[0].Ledger().Count()
	for _, n := range nodes {
		if got, pending := n.Ledger().Count(), n.Ledger().PendingLen(); got != first || got < want || pending > 0 {
			return fmt.Errorf("%s holds %d entries (%d pending), %s %d, want at least %d", n.ID(), got, pending, nodes[0].ID(), first, want)
		}
	}
	return nil
}

// processCPU returns the CPU time (user and system, all threads) this
// process has used so far; every testnet node runs in it.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
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
