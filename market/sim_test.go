package market

import (
	"crypto/rand"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/protocol/pb"
)

const simNet = "sim"

// sim is a deterministic network of engines: messages are really signed
// and verified, delivered in order, and links can be cut.
type sim struct {
	t       *testing.T
	now     time.Time
	keys    map[peer.ID]crypto.PrivKey
	engines map[peer.ID]*Engine
	order   []peer.ID
	cut     map[peer.ID]bool // messages from or to these peers are lost
	runs    map[peer.ID][]protocol.JobID
	stops   map[peer.ID][]protocol.JobID
	log     map[peer.ID][]string // "send|publish <kind> <round>", in order
	writes  map[peer.ID][]string // "<state> <bids>" of each job written, in order
	changes map[peer.ID][]string // the same, of each change not written
	// scripted are rogue peers without an engine: each message delivered
	// to one (directly or by gossip) is answered with what its script
	// returns, signed with its key and delivered back to the sender.
	scripted []peer.ID
	scripts  map[peer.ID]func(m *pb.MarketMessage) []*pb.MarketMessage
	// holds are the hold requests of each requester not answered yet:
	// the sim answers them with a hold at once, unless heldBack is set,
	// when the test answers them (writeHolds).
	holds    map[peer.ID][]HoldRequest
	heldBack bool
	// claims are the claims each provider wrote; claimErr, when set,
	// refuses them. waives are the waives each provider wrote.
	claims   map[peer.ID][]ClaimRequest
	claimErr error
	waives   map[peer.ID][]WaiveRequest
	// bills are each provider's persisted bill records (Ready.Bills),
	// JSON as the node stores them; claimsHeld keeps claims unanswered,
	// in heldClaims, as a claim write cut short by a restart.
	bills      map[peer.ID]map[string]BillRecord
	claimsHeld bool
	heldClaims map[peer.ID][]ClaimRequest
	// onPause, when set, hears each provider's pause and resume requests.
	onPause func(provider peer.ID, p PauseRequest)
	// withhold, when set, keeps requesters from signing acceptances: they
	// stay online and stop countersigning.
	withhold bool
	// ledger decides verdicts among replicas (replicas_test.go).
	ledger simVotes
}

// settleBills answers a Ready's settlement requests as the node's caller
// does: acceptances signed with the requester's key (ledger.Acceptance),
// claims and waives written, pauses heard.
func (s *sim) settleBills(from peer.ID, r Ready) {
	e := s.engines[from]
	for _, a := range r.NeedAcceptances {
		if s.withhold {
			e.AcceptanceSigned(s.now, a, nil, errBadTest)
			continue
		}
		sig, err := ledger.Acceptance{Job: ledger.Hash(a.Job), Requester: from, Provider: a.Provider, HoldSeq: a.HoldSeq,
			Amount: a.Amount, Final: a.Final, Receipt: a.Receipt}.Sign(simNet, s.keys[from])
		if err != nil {
			s.t.Fatal(err)
		}
		e.AcceptanceSigned(s.now, a, sig, nil)
	}
	for _, p := range r.Pauses {
		if s.onPause != nil {
			s.onPause(from, p)
		}
	}
	for _, c := range r.Claims {
		if s.claimsHeld {
			s.heldClaims[from] = append(s.heldClaims[from], c)
			continue
		}
		if s.claimErr == nil {
			s.claims[from] = append(s.claims[from], c)
		}
		e.ClaimWritten(s.now, c, s.claimErr)
	}
	for _, w := range r.Waives {
		s.waives[from] = append(s.waives[from], w)
		e.Waived(w, []byte("waive"))
	}
}

func newSim(t *testing.T) *sim {
	return &sim{t: t, now: t0, keys: map[peer.ID]crypto.PrivKey{}, engines: map[peer.ID]*Engine{},
		cut: map[peer.ID]bool{}, runs: map[peer.ID][]protocol.JobID{}, stops: map[peer.ID][]protocol.JobID{},
		log: map[peer.ID][]string{}, writes: map[peer.ID][]string{}, changes: map[peer.ID][]string{},
		scripts: map[peer.ID]func(*pb.MarketMessage) []*pb.MarketMessage{}, holds: map[peer.ID][]HoldRequest{},
		claims: map[peer.ID][]ClaimRequest{}, waives: map[peer.ID][]WaiveRequest{},
		bills: map[peer.ID]map[string]BillRecord{}, heldClaims: map[peer.ID][]ClaimRequest{}}
}

// take returns an engine's Ready, carried out.
func take(e *Engine) Ready {
	r := e.Ready()
	e.Advance()
	return r
}

// writeHolds answers the requester's hold requests: with a hold (and a
// grant; the engines here check none, Config.CheckGrant nil, so any 64
// bytes do), or with err.
func (s *sim) writeHolds(requester peer.ID, err error) {
	for _, h := range s.holds[requester] {
		res := HoldResult{Err: err}
		if err == nil {
			res = HoldResult{Hold: []byte("hold"), Seq: 1, Grant: make([]byte, protocol.AwardGrantSize)}
		}
		s.engines[requester].HoldWritten(s.now, h.Job, h.Attempt, res)
	}
	s.holds[requester] = nil
}

var simTiming = Config{
	InteractiveWindow: 200 * time.Millisecond, BatchWindow: time.Second,
	AcceptTimeout: time.Second, HeartbeatTimeout: 3 * time.Second, HeartbeatInterval: time.Second,
	MaxCandidates: 3,
}

func (s *sim) add(policy *ProviderPolicy) peer.ID {
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		s.t.Fatal(err)
	}
	id, _ := peer.IDFromPrivateKey(k)
	cfg := simTiming
	cfg.Self, cfg.Provider = id, policy
	s.keys[id], s.engines[id] = k, NewEngine(cfg)
	s.order = append(s.order, id)
	return id
}

func provider(floor uint64, gpus ...protocol.GPU) *ProviderPolicy {
	if len(gpus) == 0 {
		gpus = []protocol.GPU{{Model: "nvidia-h100", VRAMMiB: 80000, Count: 1}}
	}
	return &ProviderPolicy{GPUs: gpus, Slots: 1, Executors: []string{"noop"}, FloorInteractive: floor, FloorBatch: floor}
}

// sign seals and re-opens a message, as the wire does.
func (s *sim) sign(from peer.ID, m *pb.MarketMessage) *protocol.Signed {
	s.t.Helper()
	expires := s.now.Add(time.Hour)
	if o := m.GetOffer(); o != nil {
		expires = time.UnixMilli(o.DeadlineUnixMs)
	}
	if a := m.GetAward(); a != nil && a.Grant == nil {
		// A test's own award, not the engine's: the engines here check no
		// grant (Config.CheckGrant nil), so any 64 bytes do.
		a.Grant = make([]byte, protocol.AwardGrantSize)
	}
	raw, err := protocol.SealMarket(s.keys[from], simNet, expires, m)
	if err != nil {
		s.t.Fatal(err)
	}
	signed, err := protocol.OpenMarket(raw, simNet, s.now)
	if err != nil {
		s.t.Fatal(err)
	}
	return signed
}

// submit makes a signed offer from requester and submits it.
func (s *sim) submit(requester peer.ID, tier string, maxPrice uint64, deadline time.Duration, gpus uint32, candidates ...peer.ID) *Job {
	s.t.Helper()
	nonce := make([]byte, 16)
	rand.Read(nonce)
	offer := s.sign(requester, &pb.MarketMessage{Body: &pb.MarketMessage_Offer{Offer: &pb.Offer{
		Requester: []byte(requester), Network: simNet, Nonce: nonce,
		CreatedUnixMs: s.now.UnixMilli(), DeadlineUnixMs: s.now.Add(deadline).UnixMilli(),
		Spec: &pb.JobSpec{Executor: "noop", Tier: tier, MaxPrice: maxPrice, MaxDurationMs: 1000,
			Resources: &pb.Resources{Gpus: gpus}},
	}}})
	j := s.engines[requester].Submit(s.now, offer, records(candidates))
	s.flush()
	return j
}

// flush delivers messages until every engine is quiet.
func (s *sim) flush() {
	if !s.settle(100) {
		s.t.Fatal("engines did not settle")
	}
}

// settle delivers messages for at most rounds rounds and reports whether
// every engine fell quiet.
func (s *sim) settle(rounds int) bool {
	for range rounds {
		quiet := true
		for _, from := range s.order {
			r := take(s.engines[from])
			if r.Empty() {
				continue
			}
			quiet = false
			for _, j := range r.Save {
				s.writes[from] = append(s.writes[from], fmt.Sprintf("%s %d", j.State, len(j.Bids)))
			}
			for _, j := range r.Changed {
				s.changes[from] = append(s.changes[from], fmt.Sprintf("%s %d", j.State, len(j.Bids)))
			}
			s.checkDeliveries(from, r)
			s.runs[from] = append(s.runs[from], leaseIDs(r.Run)...)
			s.stops[from] = append(s.stops[from], r.Stop...)
			for _, o := range r.Send {
				s.record(from, "send", o.Msg)
				s.deliver(from, o.To, o)
			}
			for _, o := range r.Publish {
				s.record(from, "publish", o.Msg)
				for _, to := range append(slices.Clip(s.order), s.scripted...) {
					if to != from {
						s.deliver(from, to, o)
					}
				}
			}
			s.storeBills(from, r.Bills)
			s.settleBills(from, r)
			s.settleVerdicts(from, r)
			// The holds are written after the Ready is carried out, as
			// the node's ledger writer does.
			s.holds[from] = append(s.holds[from], r.NeedHolds...)
			if !s.heldBack {
				s.writeHolds(from, nil)
			}
		}
		if quiet {
			return true
		}
	}
	return false
}

func (s *sim) record(from peer.ID, how string, m *pb.MarketMessage) {
	kind := kindName(m)
	s.log[from] = append(s.log[from], fmt.Sprintf("%s %s %d", how, kind, m.Round))
}

// records are capacity records of candidates for an interactive offer,
// all at the same price and RTT: they are offered in this order.
func records(candidates []peer.ID) []*protocol.Capacity {
	var out []*protocol.Capacity
	for _, c := range candidates {
		out = append(out, &protocol.Capacity{Provider: c, Executors: []string{"noop", "wasm", "docker"}})
	}
	return out
}

func leaseIDs(ls []*Lease) []protocol.JobID {
	var out []protocol.JobID
	for _, l := range ls {
		out = append(out, l.Job)
	}
	return out
}

func (s *sim) deliver(from, to peer.ID, o Outbound) {
	if s.cut[from] || s.cut[to] {
		return
	}
	if script := s.scripts[to]; script != nil {
		// The rogue sees the message as signed and answers at once.
		in := s.sign(from, o.Msg)
		for _, reply := range script(in.Msg) {
			s.engines[from].Step(s.now, s.sign(to, reply))
		}
		return
	}
	if s.engines[to] == nil {
		return // for a peer that runs no engine (a rogue's key)
	}
	s.engines[to].Step(s.now, s.sign(from, o.Msg))
}

func (s *sim) advance(d time.Duration) {
	s.now = s.now.Add(d)
	for _, id := range s.order {
		s.engines[id].Tick(s.now)
	}
	s.flush()
}

func (s *sim) finish(p peer.ID, id protocol.JobID) {
	var attempt uint32
	if l, ok := s.engines[p].leases[id]; ok {
		attempt = l.Attempt
	}
	s.engines[p].Finished(s.now, id, Outcome{Attempt: attempt, Output: []byte("ok"), ResultID: okID, ResultSize: 2, Log: []byte("ok"), HoldSeq: 1})
	s.flush()
}

func wantState(t *testing.T, j *Job, want State) {
	t.Helper()
	if j.State != want {
		t.Fatalf("job state %s, want %s (error %q, declines %v)", j.State, want, j.Error, j.Declines)
	}
}
