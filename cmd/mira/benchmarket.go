package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/testnet"
)

// marketBench is what `mira bench market` was asked to run.
type marketBench struct {
	nodes, providers, jobs, burst, bursts, slots, replicas int
	executor, cpuProfile                                   string
}

const benchMarketLong = `Start an in-process testnet whose last node is the requester, and post
every job through that node's HTTP API (POST /v1/jobs, the client 'mira job
submit' uses), reading the jobs' states through the API too
(GET /v1/jobs/{id}/events).

One at a time, per tier, each job is timed from the start of its POST: to
the POST's response, to its lease as the requester saw it (the job record's
lease time: when the provider's acceptance reached the requester), and to
the succeeded state read on the events stream; the stages between come
from the requester's record (created → assigned → leased).

A burst posts --burst batch jobs one after another, then reads each one's
record once it has ended: leases/s is the jobs leased over the time from
the burst's first POST to the last job's lease (each job's own lease time,
from its record); all ended is when the last job's end was read over the
API; every ledger settled is when every node holds the burst's ledger
entries. CPU per job is the whole process's CPU (every node, and the HTTP
client and server) over the burst, divided by its jobs.`

func newBenchMarketCmd(g *globals) *cobra.Command {
	var b marketBench
	cmd := &cobra.Command{
		Use:   "market",
		Short: "Time jobs posted with HTTP POST /v1/jobs on an in-process testnet: to their lease, to their end, and a burst's leases/s",
		Long:  benchMarketLong,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := g.benchLogger(cmd)
			if err != nil {
				return err
			}
			return b.run(cmd.Context(), cmd.OutOrStdout(), log)
		},
	}
	cmd.Flags().IntVar(&b.nodes, "nodes", 10, "number of nodes")
	cmd.Flags().IntVar(&b.providers, "providers", 3, "number of providers among them")
	cmd.Flags().IntVar(&b.jobs, "jobs", 100, "jobs per tier, one at a time")
	cmd.Flags().IntVar(&b.burst, "burst", 1000, "batch jobs posted one after another without waiting, for leases/s (0: skip)")
	cmd.Flags().IntVar(&b.bursts, "bursts", 1, "how many bursts, one after another (a VM's speed drifts: their median is steadier)")
	cmd.Flags().IntVar(&b.slots, "slots", 1024, "slots per provider")
	cmd.Flags().IntVar(&b.replicas, "replicas", 1, "verify.replicas of every job: run by this many providers, the majority's result taken (1..5)")
	cmd.Flags().StringVar(&b.executor, "executor", "noop", "noop, or wasm (the shipped sample module, echo hi)")
	cmd.Flags().StringVar(&b.cpuProfile, "cpuprofile", "", "write a CPU profile of the timed part to this file")
	return cmd
}

func (b marketBench) run(ctx context.Context, out io.Writer, log *slog.Logger) error {
	tn, _, cleanup, err := startProviderNet(ctx, log, b.nodes, b.providers, func(c *node.Config) {
		c.Provider.Slots = b.slots
		// The node's own background intervals, not the testnet's
		// test-speed ones: a reconciliation every second fetches the
		// entries that gossip is still delivering.
		d := node.DefaultConfig(c.DataDir)
		c.ReconcileInterval, c.PingInterval, c.RedialInterval = d.ReconcileInterval, d.PingInterval, d.RedialInterval
	})
	if err != nil {
		return err
	}
	defer cleanup()
	// The requester (startProviderNet's asker), as `mira job` reaches it.
	c, err := api.NewClientFromDataDir(tn.Dir(b.nodes - 1))
	if err != nil {
		return err
	}
	if b.cpuProfile != "" {
		f, err := os.Create(b.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	for _, tier := range []string{protocol.TierInteractive, protocol.TierBatch} {
		if err := b.benchTier(ctx, out, c, tier); err != nil {
			return err
		}
	}
	if b.burst == 0 || b.bursts < 1 {
		return tn.Close()
	}
	var figs []burstFigures
	for range b.bursts {
		f, err := benchBurst(ctx, out, tn, c, b.jobRequest(protocol.TierBatch, "noop", "5m"), b.burst)
		if err != nil {
			return err
		}
		figs = append(figs, f)
	}
	// The cap is measured right after, with the testnet stopped so that
	// its background work does not slow the measurement.
	pprof.StopCPUProfile() // a --cpuprofile is of the market, not of the cap's measurement
	if err := tn.Close(); err != nil {
		return err
	}
	sc, err := measureCap("bench", b.nodes, b.providers)
	if err != nil {
		return fmt.Errorf("measure the signature cap: %w", err)
	}
	printAgainstCap(out, figs, sc)
	return nil
}

// jobRequest is the body of a bench job's POST /v1/jobs: one GPU, a price
// every provider takes, deadline from now.
func (b marketBench) jobRequest(tier, executor, deadline string) api.JobRequest {
	req := api.JobRequest{Executor: executor, Tier: tier, MaxPrice: 0.01, MaxDuration: "10s", Deadline: deadline, Resources: api.Resources{GPUs: 1}}
	if executor == "wasm" {
		req.Module, req.Args = "sample", []string{"echo", "hi"}
	}
	if b.replicas > 1 {
		req.Verify = &api.Verify{Replicas: b.replicas}
	}
	return req
}

// tierTimes are a tier's jobs, posted one at a time: the first three are
// from the start of each job's HTTP POST /v1/jobs, the stages are from the
// requester's job record.
type tierTimes struct {
	// answered: the POST's response; leased: the record's lease time (the
	// acceptance reached the requester); ended: the succeeded state read
	// on GET /v1/jobs/{id}/events; paid: GET /v1/jobs/{id} first showing
	// the payment paid (the provider's final claim, applied in the
	// requester's ledger).
	answered, leased, ended, paid []time.Duration
	// created → assigned (the award) and assigned → leased, where the
	// events stream showed the assigned state.
	toAssigned, toLeased []time.Duration
}

func (b marketBench) benchTier(ctx context.Context, out io.Writer, c *api.Client, tier string) error {
	var t tierTimes
	for range b.jobs {
		if err := t.timeJob(ctx, c, b.jobRequest(tier, b.executor, "1m")); err != nil {
			return err
		}
	}
	t.print(out, tier, b.executor)
	return nil
}

// timeJob posts one job and follows it until it ends.
func (t *tierTimes) timeJob(ctx context.Context, c *api.Client, req api.JobRequest) error {
	start := time.Now()
	j, err := c.SubmitJob(ctx, req)
	if err != nil {
		return err
	}
	answered := time.Since(start)
	// The award's time in the requester's clock; the stream can miss
	// the state when the acceptance follows at once.
	var assignedAt time.Time
	last, err := readJobEvents(ctx, c, j.ID, func(s api.JobInfo) {
		if s.State == string(market.Assigned) && assignedAt.IsZero() {
			assignedAt = s.Updated
		}
	})
	ended := time.Since(start)
	if err != nil {
		return err
	}
	if last.State != string(market.Succeeded) {
		return fmt.Errorf("job %s ended %s: %s", j.ID, last.State, last.Error)
	}
	paid, err := waitPaid(ctx, c, j.ID)
	if err != nil {
		return err
	}
	t.answered, t.ended, t.paid = append(t.answered, answered), append(t.ended, ended), append(t.paid, paid.Sub(start))
	// The record's times are wall-clock (they came as JSON), as is start's
	// wall reading: one clock, one process.
	t.leased = append(t.leased, last.Leased.Sub(start))
	if !assignedAt.IsZero() {
		t.toAssigned = append(t.toAssigned, assignedAt.Sub(last.Created))
		t.toLeased = append(t.toLeased, last.Leased.Sub(assignedAt))
	}
	return nil
}

func (t *tierTimes) print(out io.Writer, tier, executor string) {
	for _, d := range [][]time.Duration{t.answered, t.leased, t.ended, t.paid, t.toAssigned, t.toLeased} {
		slices.Sort(d)
	}
	n := len(t.leased)
	fmt.Fprintf(out, "%-11s %d %s jobs one at a time, from the start of each HTTP POST /v1/jobs:\n", tier, n, executor)
	fmt.Fprintf(out, "%-11s   → %-51s p50 %v  p99 %v\n", tier, "POST /v1/jobs answered (201)", pct(t.answered, 50), pct(t.answered, 99))
	fmt.Fprintf(out, "%-11s   → %-51s p50 %v  p99 %v  max %v\n", tier, "lease seen by requester (its record's lease time)",
		pct(t.leased, 50), pct(t.leased, 99), t.leased[n-1].Round(10*time.Microsecond))
	fmt.Fprintf(out, "%-11s   → %-51s p50 %v  p99 %v\n", tier, "succeeded read on GET /v1/jobs/{id}/events", pct(t.ended, 50), pct(t.ended, 99))
	fmt.Fprintf(out, "%-11s   → %-51s p50 %v  p99 %v\n", tier, "paid on GET /v1/jobs/{id} (polled every 2 ms)", pct(t.paid, 50), pct(t.paid, 99))
	if len(t.toAssigned) > 0 {
		// Assigned is the engine's award (the bid's arrival); the award
		// leaves once the posting hold is on disk, so the second stage
		// holds that wait and the provider's acceptance.
		fmt.Fprintf(out, "%-11s stages of %d in the requester's record: created→assigned p50 %v  p99 %v;  assigned→leased p50 %v  p99 %v\n",
			tier, len(t.toAssigned), pct(t.toAssigned, 50), pct(t.toAssigned, 99), pct(t.toLeased, 50), pct(t.toLeased, 99))
	}
}

// waitPaid polls GET /v1/jobs/{id} every 2 ms until it shows the job
// paid, and returns when it first did.
func waitPaid(ctx context.Context, c *api.Client, id string) (time.Time, error) {
	deadline := time.Now().Add(time.Minute)
	for {
		j, err := c.Job(ctx, id)
		if err != nil {
			return time.Time{}, err
		}
		if p := j.Payment; p != nil && p.State == "paid" {
			return time.Now(), nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("job %s not paid after a minute: %+v", id, j.Payment)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// printAgainstCap compares each burst with the signature cap measured just
// now.
func printAgainstCap(out io.Writer, figs []burstFigures, c signatureCap) {
	fmt.Fprintf(out, "signature cap (measured just now): %v\n", c)
	var rates, cpus, settled []float64
	for _, b := range figs {
		rates = append(rates, b.leaseRate/(c.JobsPerSecond()/2))
		cpus = append(cpus, b.cpuPerJob.Seconds()/c.PerJob().Seconds())
		settled = append(settled, b.settledCPUPerJob.Seconds()/c.PerJob().Seconds())
		fmt.Fprintf(out, "burst against the cap: %.0f leases/s (first POST → last job's lease) = %.2f × cap/2 (the goal: ≥ 1); CPU per job to all ended %.2f × the cap's, to every ledger settled %.2f × (the goal: ≤ 2)\n",
			b.leaseRate, rates[len(rates)-1], cpus[len(cpus)-1], settled[len(settled)-1])
	}
	if len(figs) > 1 {
		fmt.Fprintf(out, "median of %d bursts: %.2f × cap/2; CPU per job to all ended %.2f × the cap's, to every ledger settled %.2f ×\n",
			len(figs), median(rates), median(cpus), median(settled))
	}
}

// burstFigures are what a burst measured.
type burstFigures struct {
	leaseRate                   float64 // jobs leased per second, from the first POST to the last job's lease
	cpuPerJob, settledCPUPerJob time.Duration
}

// burstJob is one job of a burst: when its POST started, and its record
// once it had ended.
type burstJob struct {
	posted time.Time
	id     string
	final  api.JobInfo
}

// benchBurst posts n jobs like req through the API, one after another
// without waiting for any, reads each one's record once it has ended, and
// then waits until every node's ledger has settled them.
func benchBurst(ctx context.Context, out io.Writer, tn *testnet.Testnet, c *api.Client, req api.JobRequest, n int) (burstFigures, error) {
	// Each job adds at least 4k entries to every ledger, k its replicas:
	// for each replica a hold naming its provider, a lease, a receipt,
	// and a claim (or a release); and a posting hold, when the requester
	// has the credits for it as it posts. The count is read before the
	// first job goes out.
	before := maxLedgerCount(tn)
	settledAt := before + uint64(4*replicasOf(req))*uint64(n)
	start, cpu0 := time.Now(), processCPU()
	jobs := make([]burstJob, n)
	for i := range jobs {
		jobs[i].posted = time.Now()
		j, err := c.SubmitJob(ctx, req)
		if err != nil {
			return burstFigures{}, err
		}
		jobs[i].id = j.ID
	}
	posted := time.Since(start)
	// Waiting on the jobs in order costs no figure: each one's lease time
	// is its record's, not when this loop got to it.
	for i := range jobs {
		final, err := readJobEvents(ctx, c, jobs[i].id, nil)
		if err != nil {
			return burstFigures{}, err
		}
		jobs[i].final = final
	}
	ended, cpu := time.Since(start), processCPU()-cpu0
	leases, succeeded := burstLeases(start, jobs), burstOutcomes(out, jobs)
	fmt.Fprintf(out, "burst: %d %s %s jobs sent by HTTP POST /v1/jobs one after another in %v\n", n, req.Tier, req.Executor, posted.Round(time.Millisecond))
	fmt.Fprintf(out, "burst: %d leased (each job's lease time in the requester's record; %d of them leased again), the last %v after the first POST: %.0f leases/s; POST start → lease per job %s\n",
		leases.count, leases.again, leases.last.Round(time.Millisecond), leases.rate(), leases.spread())
	fmt.Fprintf(out, "burst: all ended (the last end read on GET /v1/jobs/{id}/events) after %v, %d succeeded; %.2f ms of CPU per job to then (the whole process: all nodes, the HTTP client and server; %.0f%% of %d cores)\n",
		ended.Round(time.Millisecond), succeeded, ms(cpu/time.Duration(n)), 100*cpu.Seconds()/ended.Seconds()/float64(runtime.NumCPU()), runtime.NumCPU())
	printPeerLimited(out, tn)
	// The jobs' ledger entries (their payments last) are still reaching
	// the other nodes: a sustained rate pays for that too.
	if err := testnet.WaitFor(ctx, time.Minute, func() error { return ledgersSettled(tn, settledAt) }); err != nil {
		return burstFigures{}, fmt.Errorf("burst: ledgers did not settle: %w (the first node holds %s)", err, entryKinds(tn))
	}
	settled, settledCPU := time.Since(start), processCPU()-cpu0
	fmt.Fprintf(out, "burst: every ledger settled after %v; %.2f ms of CPU per job to then (the whole process); %.2f ledger entries per job (every node holds each)\n",
		settled.Round(time.Millisecond), ms(settledCPU/time.Duration(n)), float64(maxLedgerCount(tn)-before)/float64(n))
	return burstFigures{leaseRate: leases.rate(), cpuPerJob: cpu / time.Duration(n), settledCPUPerJob: settledCPU / time.Duration(n)}, nil
}

// leaseTimes are a burst's leases, from the records of its ended jobs.
type leaseTimes struct {
	count, again int
	last         time.Duration   // the last job's lease, from the burst's start
	perJob       []time.Duration // each job's lease from the start of its POST, sorted
}

// burstLeases reads each job's lease time from its record. A job leased
// more than once shows its last lease: its first came earlier, so the rate
// errs low, never high.
func burstLeases(start time.Time, jobs []burstJob) leaseTimes {
	var l leaseTimes
	for _, j := range jobs {
		if j.final.Leased.IsZero() {
			continue
		}
		l.count++
		if j.final.Leases > 1 {
			l.again++
		}
		l.last = max(l.last, j.final.Leased.Sub(start))
		l.perJob = append(l.perJob, j.final.Leased.Sub(j.posted))
	}
	slices.Sort(l.perJob)
	return l
}

func (l leaseTimes) rate() float64 {
	if l.last <= 0 {
		return 0
	}
	return float64(l.count) / l.last.Seconds()
}

func (l leaseTimes) spread() string {
	if len(l.perJob) == 0 {
		return "none"
	}
	v := l.perJob
	return fmt.Sprintf("p50 %v p90 %v max %v", v[len(v)/2].Round(time.Millisecond), v[len(v)*9/10].Round(time.Millisecond), v[len(v)-1].Round(time.Millisecond))
}

// burstOutcomes prints how the jobs that did not succeed ended, and
// returns how many succeeded.
func burstOutcomes(out io.Writer, jobs []burstJob) int {
	succeeded := 0
	failures := map[string]int{}
	for _, j := range jobs {
		if j.final.State == string(market.Succeeded) {
			succeeded++
		} else {
			failures[j.final.State+": "+j.final.Error]++
		}
	}
	for why, count := range failures {
		fmt.Fprintf(out, "burst: %d jobs ended %s\n", count, why)
	}
	return succeeded
}

// printPeerLimited prints what the per-peer limits refused on all nodes: a
// burst must stay within the default limits ([limits]).
func printPeerLimited(out io.Writer, tn *testnet.Testnet) {
	refused := map[string]int{}
	for _, m := range tn.Nodes() {
		for what, k := range m.PeerLimited() {
			refused[what] += k
		}
	}
	fmt.Fprintf(out, "burst: refused by per-peer limits, all nodes: %v\n", refused)
}

// replicasOf is how many providers run each job of req.
func replicasOf(req api.JobRequest) int {
	if req.Verify != nil {
		return req.Verify.Replicas
	}
	return 1
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

// entryKinds counts the entries of the members' own chains that the
// first member holds, by kind: what a burst that does not settle lacks.
func entryKinds(tn *testnet.Testnet) string {
	counts := map[ledger.Kind]int{}
	l := tn.Nodes()[0].Ledger()
	for _, n := range tn.Nodes() {
		for after := uint64(0); ; {
			es, err := l.Entries(n.ID(), after, 1024)
			if err != nil || len(es) == 0 {
				break
			}
			for _, e := range es {
				counts[e.Kind()]++
			}
			after = es[len(es)-1].Seq
		}
	}
	return fmt.Sprint(counts)
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
