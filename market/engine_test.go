package market

import (
	"crypto/rand"
	"crypto/sha256"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// A batch job's bids reach watchers as they come, and are written with
// the job when its window ends, not one write per bid.
func TestBatchBidsAreWrittenWhenTheWindowEnds(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	for _, floor := range []uint64{30, 10, 20} {
		s.add(provider(floor))
	}
	j := s.submit(req, protocol.TierBatch, 50, time.Minute, 1)
	if got := s.writes[req]; !slices.Equal(got, []string{"bidding 0"}) {
		t.Fatalf("writes while bidding: %v", got)
	}
	if got := s.changes[req]; len(got) == 0 || got[len(got)-1] != "bidding 3" {
		t.Fatalf("changes while bidding: %v, want the last with 3 bids", got)
	}
	s.advance(simTiming.BatchWindow)
	wantState(t, j, Running)
	if got := s.writes[req]; len(got) < 2 || got[1] != "assigned 3" {
		t.Fatalf("writes: %v, want the award written with its 3 bids", got)
	}
}

func TestBatchGoesToLowestBid(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	s.add(provider(30))
	cheap := s.add(provider(10))
	s.add(provider(20))
	j := s.submit(req, protocol.TierBatch, 50, time.Minute, 1)
	wantState(t, j, Bidding)
	if len(j.Bids) != 3 {
		t.Fatalf("bids = %v", j.Bids)
	}
	s.advance(simTiming.BatchWindow)
	wantState(t, j, Running) // awarded, accepted, taken
	if j.Provider != cheap || j.Price != 10 {
		t.Fatalf("awarded to %s at %d, want the cheapest", j.Provider, j.Price)
	}
	s.finish(cheap, j.ID)
	wantState(t, j, Succeeded)
	if j.Leases != 1 || string(j.Output) != "ok" || string(j.Log) != "ok" {
		t.Fatalf("leases %d, output %q, log %q", j.Leases, j.Output, j.Log)
	}
	for _, id := range s.order {
		if id != cheap && len(s.runs[id]) != 0 {
			t.Fatalf("job ran on %s too", id)
		}
	}
}

func TestInteractiveFirstAcceptableBidWins(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	pricey := s.add(provider(90))
	ok := s.add(provider(40))
	j := s.submit(req, protocol.TierInteractive, 50, time.Minute, 1, pricey, ok)
	wantState(t, j, Running)
	if j.Provider != ok {
		t.Fatalf("interactive job went to %s, want the first acceptable bidder", j.Provider)
	}
	s.finish(ok, j.ID)
	wantState(t, j, Succeeded)
}

func TestAcceptTimeoutReassigns(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	first := s.add(provider(10))
	second := s.add(provider(20))
	j := s.submit(req, protocol.TierBatch, 50, time.Minute, 1)
	s.cut[first] = true // first bid, then went silent
	s.advance(simTiming.BatchWindow)
	wantState(t, j, Assigned)
	if j.Provider != first {
		t.Fatalf("awarded to %s", j.Provider)
	}
	s.advance(simTiming.AcceptTimeout) // no acceptance: back to the market
	wantState(t, j, Bidding)
	s.advance(simTiming.BatchWindow)
	wantState(t, j, Running)
	if j.Provider != second || j.Attempt != 2 {
		t.Fatalf("reassigned to %s attempt %d", j.Provider, j.Attempt)
	}
}

// A provider whose lease was revoked for silence (its heartbeats lost) but
// that ran the job is still paid for the run: the requester accepts its
// bill, capped by what it observed, and takes its result without letting
// it change the job that another provider finished.
func TestHeartbeatLossReassignsAndPaysTheSilentRun(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	first := s.add(provider(10))
	second := s.add(provider(20))
	j := s.submit(req, protocol.TierBatch, 50, time.Minute, 1)
	s.advance(simTiming.BatchWindow)
	wantState(t, j, Running)
	s.advance(simTiming.HeartbeatInterval) // heartbeats keep it alive
	s.advance(simTiming.HeartbeatInterval)
	s.advance(simTiming.HeartbeatInterval)
	s.advance(simTiming.HeartbeatInterval)
	wantState(t, j, Running)

	s.cut[first] = true
	s.advance(simTiming.HeartbeatTimeout)
	wantState(t, j, Bidding)
	s.advance(simTiming.BatchWindow)
	wantState(t, j, Running)
	if j.Provider != second {
		t.Fatalf("reassigned to %s", j.Provider)
	}
	s.finish(second, j.ID)
	wantState(t, j, Succeeded)

	// The first provider comes back with its late result: billed, paid,
	// delivered and acknowledged, and the job stays the second's.
	s.cut[first] = false
	s.finish(first, j.ID)
	if len(s.claims[first]) != 1 || len(s.claims[second]) != 1 || j.Provider != second || j.Leases != 2 {
		t.Fatalf("claims %d and %d, provider %s, leases %d", len(s.claims[first]), len(s.claims[second]), j.Provider, j.Leases)
	}
	if a := j.award(1, first); a == nil || !a.Delivered || !a.Final {
		t.Fatalf("first award %+v, want its result delivered and its bill accepted", a)
	}
	if s.engines[first].Bills() != 0 {
		t.Fatal("the first provider still bills")
	}
	wantState(t, j, Succeeded)
}

func TestUnservableJobExpiresWithDeclines(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	s.add(provider(10, protocol.GPU{Model: "nvidia-rtx-4090", VRAMMiB: 24000, Count: 1}))
	s.add(provider(99))
	j := s.submit(req, protocol.TierBatch, 50, 5*time.Second, 2)
	for range 6 {
		s.advance(time.Second)
	}
	wantState(t, j, Expired)
	reasons := map[string]bool{}
	for _, d := range j.Declines {
		reasons[d.Reason] = true
	}
	if !reasons[ReasonNoGPU] || len(j.Declines) < 2 {
		t.Fatalf("declines = %v", j.Declines)
	}
}

func TestCancelStopsRunningJob(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	p := s.add(provider(10))
	j := s.submit(req, protocol.TierInteractive, 50, time.Minute, 1, p)
	wantState(t, j, Running)
	if !s.engines[req].Cancel(s.now, j.ID, "user") {
		t.Fatal("cancel refused")
	}
	s.flush()
	wantState(t, j, Cancelled)
	if len(s.stops[p]) != 1 || s.engines[p].ActiveLeases() != 0 {
		t.Fatalf("provider stops %v, leases %d", s.stops[p], s.engines[p].ActiveLeases())
	}
	// Cancelling while bidding needs no provider.
	j2 := s.submit(req, protocol.TierBatch, 50, time.Minute, 1)
	s.engines[req].Cancel(s.now, j2.ID, "user")
	s.flush()
	wantState(t, j2, Cancelled)
	s.advance(simTiming.BatchWindow)
	wantState(t, j2, Cancelled)
}

func TestBusyProviderDeclinesAndDuplicateOfferIsIgnored(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	p := s.add(provider(10))
	j1 := s.submit(req, protocol.TierInteractive, 50, time.Minute, 1, p)
	wantState(t, j1, Running)
	j2 := s.submit(req, protocol.TierInteractive, 50, time.Minute, 1, p)
	// The offer reached p directly and by gossip; p answered once.
	if len(j2.Declines) != 1 || j2.Declines[0].Reason != ReasonNoSlot {
		t.Fatalf("declines = %v", j2.Declines)
	}
	s.finish(p, j1.ID)
	s.advance(simTiming.InteractiveWindow) // the window ends without a bid
	wantState(t, j2, Bidding)
	s.advance(simTiming.InteractiveWindow) // offered again: now p has a slot
	wantState(t, j2, Running)
	if j2.Round != 2 {
		t.Fatalf("round %d, want 2", j2.Round)
	}
}

// A batch window that ends without a bid leaves the job waiting: a bid
// that comes late wins at once, with no new round. With none, the job is
// offered again after a pause that doubles with each empty round.
func TestEmptyWindowWaitsThenOffersAgainLessOften(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	p := s.add(provider(10))
	s.cut[p] = true // p misses the offer, so no bid comes in the window
	j := s.submit(req, protocol.TierBatch, 50, time.Hour, 1)
	s.advance(simTiming.BatchWindow)
	wantState(t, j, Bidding)
	if !j.WindowEnds.IsZero() || !j.ReofferAt.Equal(s.now.Add(simTiming.BatchWindow)) {
		t.Fatalf("window ends %v, offered again at %v; want a wait of one window", j.WindowEnds, j.ReofferAt)
	}
	// The offer reaches p late; its bid wins at once.
	s.cut[p] = false
	s.engines[p].Step(s.now, s.sign(req, &pb.MarketMessage{Round: 1, Body: &pb.MarketMessage_Offer{Offer: j.offer}}))
	s.flush()
	wantState(t, j, Running)
	if j.Round != 1 || j.Provider != p || !j.ReofferAt.IsZero() {
		t.Fatalf("round %d, provider %s, reoffer at %v", j.Round, j.Provider, j.ReofferAt)
	}

	// Nobody bids: rounds start at 0, 2, 5, 10 and 19 windows (each
	// window, then a pause of 1, 2, 4, 8 windows), not at every window.
	s = newSim(t)
	req = s.add(nil)
	j = s.submit(req, protocol.TierBatch, 50, time.Hour, 1)
	for range 20 {
		s.advance(simTiming.BatchWindow)
	}
	wantState(t, j, Bidding)
	if j.Round != 5 {
		t.Fatalf("%d rounds in 20 windows, want 5: %v", j.Round, s.log[req])
	}
	if j.EmptyRounds != 5 { // the fifth window closed at 20
		t.Fatalf("%d empty rounds, want 5", j.EmptyRounds)
	}
	e := s.engines[req]
	if d := e.reofferDelay(&Job{Tier: protocol.TierBatch, EmptyRounds: 40}); d != maxReofferDelay {
		t.Fatalf("batch pause after 40 empty rounds %v, want the cap %v", d, maxReofferDelay)
	}
	if d, want := e.reofferDelay(&Job{Tier: protocol.TierInteractive, EmptyRounds: 40}), maxInteractivePause*simTiming.InteractiveWindow; d != want {
		t.Fatalf("interactive pause after 40 empty rounds %v, want %v", d, want)
	}
	// Rounds that ended in an award do not lengthen the pause.
	if d := e.reofferDelay(&Job{Tier: protocol.TierBatch, Round: 9, EmptyRounds: 1}); d != simTiming.BatchWindow {
		t.Fatalf("pause after one empty round (the ninth) %v, want one window", d)
	}
}

func TestInteractiveWorkPreemptsBatchLease(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	p := s.add(provider(10)) // one slot
	batch := s.submit(req, protocol.TierBatch, 50, time.Minute, 1)
	s.advance(simTiming.BatchWindow)
	wantState(t, batch, Running)

	inter := s.submit(req, protocol.TierInteractive, 50, time.Minute, 1, p)
	wantState(t, inter, Running)
	if inter.Provider != p {
		t.Fatalf("interactive job on %s", inter.Provider)
	}
	// The batch lease was stopped and its job went back to the market,
	// without holding the preemption against the provider.
	if len(s.stops[p]) != 1 || s.stops[p][0] != batch.ID {
		t.Fatalf("provider stopped %v", s.stops[p])
	}
	wantState(t, batch, Bidding)
	if len(batch.Excluded) != 0 {
		t.Fatalf("preempting provider excluded: %v", batch.Excluded)
	}
	// A batch offer does not preempt anything: it waits for the slot.
	s.advance(simTiming.BatchWindow)
	wantState(t, batch, Bidding)
	s.finish(p, inter.ID)
	wantState(t, inter, Succeeded)
	// Its first empty round since the lease: offered again one window
	// later, leased at that round's end.
	s.advance(simTiming.BatchWindow)
	wantState(t, batch, Bidding)
	s.advance(simTiming.BatchWindow)
	wantState(t, batch, Running)
	s.finish(p, batch.ID)
	wantState(t, batch, Succeeded)
	if batch.Leases != 2 || batch.Preemptions != 1 {
		t.Fatalf("batch leases = %d, want 2 (preempted once)", batch.Leases)
	}
}

// okID is the content ID of the output "ok" that simulated providers return.
var okID = func() string {
	sum := sha256.Sum256([]byte("ok"))
	id, _ := protocol.BlobID(sum[:])
	return id.String()
}()

func TestResultWithForgedInlineOutputFails(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	prov := s.add(provider(10))
	j := s.submit(req, protocol.TierInteractive, 50, time.Minute, 1, prov)
	wantState(t, j, Running)
	// Of the right length, and with a failure of its own: the bytes are
	// still checked, and not kept.
	s.engines[prov].Finished(s.now, j.ID, Outcome{Attempt: j.Attempt, Output: []byte("no"), Error: "exit 1", ExitCode: 1, ResultID: okID, ResultSize: 2, HoldSeq: 1})
	s.flush()
	if j.State != Failed || j.Error == "" || j.Output != nil {
		t.Fatalf("state %s error %q output %q, want failed with a reason and no output", j.State, j.Error, j.Output)
	}
}

// A run's outcome reaches the requester with the outputs it names, and
// whatever bytes its error holds: a job picks its file names, and a
// protobuf string that is not UTF-8 cannot be signed.
func TestResultCarriesOutputsAndAnyError(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	prov := s.add(provider(10))
	j := s.submit(req, protocol.TierInteractive, 50, time.Minute, 1, prov)
	wantState(t, j, Running)
	// Invalid UTF-8, and long enough to be cut inside a rune.
	reason := "outputs: out/\xffx: " + strings.Repeat("é", 600)
	s.engines[prov].Finished(s.now, j.ID, Outcome{Attempt: j.Attempt, ExitCode: -1, Error: reason,
		ResultID: okID, ResultSize: 2, OutputsID: okID, OutputsSize: 2, HoldSeq: 1})
	s.flush()
	if j.State != Failed || !utf8.ValidString(j.Error) || !strings.HasPrefix(j.Error, "outputs: out/?x: é") || len(j.Error) > 1024 {
		t.Fatalf("state %s, error of %d bytes %.20q; want failed with the reason, as UTF-8", j.State, len(j.Error), j.Error)
	}
	if j.OutputsID != okID || j.OutputsSize != 2 {
		t.Fatalf("outputs %q (%d bytes), want %q", j.OutputsID, j.OutputsSize, okID)
	}
}

func TestOutcomeOfAnEarlierLeaseIsDropped(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	prov := s.add(provider(10))
	j := s.submit(req, protocol.TierInteractive, 50, time.Minute, 1, prov)
	wantState(t, j, Running)
	s.engines[prov].Finished(s.now, j.ID, Outcome{Attempt: j.Attempt - 1, Output: []byte("ok"), ResultID: okID, ResultSize: 2, HoldSeq: 1})
	s.flush()
	wantState(t, j, Running)
	s.finish(prov, j.ID)
	wantState(t, j, Succeeded)
}

// An interactive job's first round goes only to its candidates; its
// gossip copy follows when the job is leased, just before the taken
// notice. When the direct round finds no provider, the copy goes out as
// its window ends, and a late bid from the rest of the market wins.
func TestInteractiveOfferIsGossipedAtItsLease(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	cand := s.add(provider(10))
	other := s.add(provider(10)) // not a candidate: sees the job only by gossip
	j := s.submit(req, protocol.TierInteractive, 50, time.Minute, 1, cand)
	wantState(t, j, Running)
	want := []string{"send Offer 1", "send Award 0", "publish Offer 1", "publish Taken 0"}
	if !slices.Equal(s.log[req], want) || j.Provider != cand || j.Leases != 1 {
		t.Fatalf("requester sent %v (want %v); provider %s, leases %d", s.log[req], want, j.Provider, j.Leases)
	}

	s = newSim(t)
	req = s.add(nil)
	cand = s.add(provider(10))
	other = s.add(provider(10))
	s.cut[cand] = true
	j = s.submit(req, protocol.TierInteractive, 50, time.Minute, 1, cand)
	wantState(t, j, Bidding)
	s.advance(simTiming.InteractiveWindow)
	wantState(t, j, Running)
	want = []string{"send Offer 1", "publish Offer 1", "send Award 0", "publish Taken 0"}
	if !slices.Equal(s.log[req], want) || j.Provider != other {
		t.Fatalf("requester sent %v (want %v); provider %s", s.log[req], want, j.Provider)
	}

	// A candidate that declines (no room) lets the rest of the market see
	// the job at once.
	s = newSim(t)
	req = s.add(nil)
	cand = s.add(provider(10, protocol.GPU{Model: "nvidia-rtx-4090", VRAMMiB: 24000, Count: 1}))
	other = s.add(provider(10, protocol.GPU{Model: "nvidia-h100", VRAMMiB: 80000, Count: 2}))
	j = s.submit(req, protocol.TierInteractive, 50, time.Minute, 2, cand)
	wantState(t, j, Running)
	want = []string{"send Offer 1", "publish Offer 1", "send Award 0", "publish Taken 0"}
	if !slices.Equal(s.log[req], want) || j.Provider != other {
		t.Fatalf("requester sent %v (want %v); provider %s", s.log[req], want, j.Provider)
	}
}

// A paused provider (its disk is low) declines new work with the reason
// and keeps its lease; unpaused, it bids again.
func TestPausedProviderDeclinesAndResumes(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	p := s.add(provider(10))
	s.engines[p].cfg.Provider.Slots = 2
	j1 := s.submit(req, protocol.TierInteractive, 50, time.Minute, 1, p)
	wantState(t, j1, Running)
	s.engines[p].Pause(ReasonLowDisk)
	j2 := s.submit(req, protocol.TierInteractive, 50, time.Minute, 1, p)
	if len(j2.Declines) != 1 || j2.Declines[0].Reason != ReasonLowDisk {
		t.Fatalf("declines = %v", j2.Declines)
	}
	if s.engines[p].ActiveLeases() != 1 {
		t.Fatalf("a pause dropped the running lease: %d leases", s.engines[p].ActiveLeases())
	}
	s.engines[p].Pause("")
	for range 3 { // the window ends, and the job is offered again
		s.advance(simTiming.InteractiveWindow)
	}
	wantState(t, j2, Running)
}

// submitSpec makes a signed offer of spec from requester and submits it
// to the given candidates.
func (s *sim) submitSpec(requester peer.ID, spec *pb.JobSpec, deadline time.Duration, candidates ...peer.ID) *Job {
	s.t.Helper()
	nonce := make([]byte, 16)
	rand.Read(nonce)
	offer := s.sign(requester, &pb.MarketMessage{Body: &pb.MarketMessage_Offer{Offer: &pb.Offer{
		Requester: []byte(requester), Network: simNet, Nonce: nonce, Spec: spec,
		CreatedUnixMs: s.now.UnixMilli(), DeadlineUnixMs: s.now.Add(deadline).UnixMilli(),
	}}})
	j := s.engines[requester].Submit(s.now, offer, records(candidates))
	s.flush()
	return j
}

// A job that asks more memory or CPU than a provider allows a job, or a
// docker image the provider does not serve, is declined with a reason the
// requester sees, whatever it offers to pay.
func TestProviderDeclinesJobsOverItsLimits(t *testing.T) {
	policy := func() *ProviderPolicy {
		p := provider(10)
		p.Executors = []string{"wasm", "docker"}
		p.MaxMemoryMiB, p.MaxCPUMillis = 4096, 2000
		p.DockerImages = []string{"mira-job", "ubuntu:22.04"}
		return p
	}
	spec := func(executor, image string, memMiB, cpuMillis uint32) *pb.JobSpec {
		return &pb.JobSpec{Executor: executor, Image: image, Tier: protocol.TierInteractive, MaxPrice: 1000, MaxDurationMs: 1000,
			Resources: &pb.Resources{Gpus: 1, MemoryMib: memMiB, CpuMillis: cpuMillis}}
	}
	cases := []struct {
		name string
		spec *pb.JobSpec
		want string // decline reason; "" for a bid that wins
	}{
		{"docker asking 1 TiB of memory", spec("docker", "mira-job", 1<<20, 0), ReasonMemory},
		{"wasm asking more memory than allowed", spec("wasm", "", 4097, 0), ReasonMemory},
		{"more CPU than allowed", spec("docker", "mira-job:v2", 0, 2001), ReasonCPU},
		{"an image not on the allowlist", spec("docker", "evil/miner", 0, 0), ReasonImage},
		{"another tag of an allowed tag", spec("docker", "ubuntu:24.04", 0, 0), ReasonImage},
		{"an image ID", spec("docker", "sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945", 0, 0), ReasonImage},
		{"within the limits", spec("docker", "mira-job:v2", 4096, 2000), ""},
		{"asking nothing", spec("wasm", "", 0, 0), ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newSim(t)
			req := s.add(nil)
			p := s.add(policy())
			j := s.submitSpec(req, c.spec, time.Minute, p)
			if c.want == "" {
				wantState(t, j, Running)
				return
			}
			wantState(t, j, Bidding)
			if len(j.Declines) != 1 || j.Declines[0].Reason != c.want {
				t.Fatalf("declines %+v, want one with reason %q", j.Declines, c.want)
			}
			if len(s.runs[p]) > 0 {
				t.Fatal("the provider runs the job")
			}
		})
	}
	// With no allowlist, no docker job at all.
	s := newSim(t)
	req := s.add(nil)
	pol := policy()
	pol.DockerImages = nil
	p := s.add(pol)
	j := s.submitSpec(req, spec("docker", "mira-job", 0, 0), time.Minute, p)
	if len(j.Declines) != 1 || j.Declines[0].Reason != ReasonImage {
		t.Fatalf("declines %+v, want %q", j.Declines, ReasonImage)
	}
}
