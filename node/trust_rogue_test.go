package node_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/protocol/pb"
	"github.com/mira-market/mira/storage"
	"github.com/mira-market/mira/testnet"
)

// The attackers of the settlement (docs/TRUST.md), shared by the trust
// tests: a rogue requester is a peer with the swarm key and a funded
// ledger account of its own. It speaks the market protocol over the real
// streams and signs its own market messages and ledger entries, as a
// patched node would; none of the honest node's code runs for it.

// rogueRequester is such a requester.
type rogueRequester struct {
	*marketRogue
	tn     *testnet.Testnet
	ledger *ledgerChain
}

// rogueJob is a job the rogue requester awarded: its hold naming the
// provider is held by every member.
type rogueJob struct {
	id       protocol.JobID
	provider peer.ID
	price    uint64
	hold     []byte // the hold's entry
	holdSeq  uint64
	expiry   time.Time
}

// rogueHoldLife is how long after the award the rogue's holds expire: a
// provider wants the run's max_duration and half a claim window (5 min)
// at least, and the members take entries dated up to 10 min ahead, so a
// release dated after the expiry can be written at once.
const rogueHoldLife = 6 * time.Minute

// trustNet starts members members, 1..providers of them providers (with
// configure's changes, if any), and a rogue requester beside them, granted
// credits by genesis, its grant entry held by every member.
func trustNet(t *testing.T, members, providers int, configure func(int, *node.Config)) (*testnet.Testnet, *rogueRequester) {
	t.Helper()
	key, rid := rogueKey(t)
	tn, err := testnet.Start(context.Background(), testnet.Options{Nodes: members, Dir: t.TempDir(), WasmCacheDir: testWasmCache,
		Grants: []ledger.GenesisGrant{{Peer: rid, Amount: testnet.DefaultCredits}},
		Configure: func(i int, cfg *node.Config) {
			testnet.WithProviders(providers)(i, cfg)
			if configure != nil {
				configure(i, cfg)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tn.Close() })
	if err := testnet.WaitFor(context.Background(), time.Minute, tn.Formed); err != nil {
		t.Fatal(err)
	}
	r := &rogueRequester{marketRogue: &marketRogue{t: t, key: key, host: rogueHostWith(t, tn, key)}, tn: tn, ledger: newLedgerChain(t, key)}
	r.host.SetStreamHandler(libp2pproto.ID(protocol.MarketProtocol("testnet")), r.read)
	for _, n := range tn.Nodes() {
		info, _ := peer.AddrInfoFromString(n.ListenAddrs()[0])
		if err := r.host.Connect(context.Background(), *info); err != nil {
			t.Fatal(err)
		}
	}
	r.store(r.ledger.next(ledger.GrantBody{Amount: testnet.DefaultCredits}))
	return tn, r
}

// ingest hands raws to every running member's ledger, as gossip and
// reconciliation would, and returns each member's verdict.
func (r *rogueRequester) ingest(raws ...[]byte) []storage.IngestResult {
	r.t.Helper()
	var out []storage.IngestResult
	for i, n := range r.tn.Nodes() {
		res, err := n.Ledger().IngestMany(raws)
		if err != nil {
			r.t.Fatalf("node %d ingests: %v", i, err)
		}
		out = append(out, res)
	}
	return out
}

// store ingests raws and fails unless every member stored them all (or
// had them already: a member may get them from another by gossip first).
func (r *rogueRequester) store(raws ...[]byte) {
	r.t.Helper()
	for i, res := range r.ingest(raws...) {
		if len(res.Accepted)+res.Duplicates != len(raws) {
			r.t.Fatalf("node %d stored %d of the rogue's %d entries: %+v", i, len(res.Accepted), len(raws), res.Rejected)
		}
	}
}

// refused ingests raw and fails unless every member refuses it for good
// with want; it must be stored nowhere.
func (r *rogueRequester) refused(raw []byte, want error, what string) {
	r.t.Helper()
	for i, res := range r.ingest(raw) {
		if len(res.Rejected) != 1 || !errors.Is(res.Rejected[0].Err, want) {
			r.t.Fatalf("node %d: %s: %+v, want it refused: %v", i, what, res, want)
		}
	}
	notStored(r.t, r.tn, raw, what)
}

// waits ingests raw and fails unless every member keeps it waiting:
// neither stored nor refused.
func (r *rogueRequester) waits(raw []byte, what string) {
	r.t.Helper()
	for i, res := range r.ingest(raw) {
		if len(res.Accepted) != 0 || len(res.Rejected) != 0 || res.Pending == 0 {
			r.t.Fatalf("node %d: %s: %+v, want it kept waiting", i, what, res)
		}
	}
	notStored(r.t, r.tn, raw, what)
}

// notStored fails if a member's ledger holds raw.
func notStored(t *testing.T, tn *testnet.Testnet, raw []byte, what string) {
	t.Helper()
	for i, n := range tn.Nodes() {
		if ok, err := n.Ledger().Has(sha256.Sum256(raw)); err != nil || ok {
			t.Fatalf("node %d stored %s (%v)", i, what, err)
		}
	}
}

// try signs the chain's next entry dated at, of version 2 if v2, without
// advancing the chain: an entry the members are to refuse.
func (c *ledgerChain) try(at time.Time, v2 bool, body ledger.Body) []byte {
	c.t.Helper()
	e := ledger.Entry{Account: c.id, Seq: c.seq + 1, Prev: c.prev, Time: at, Body: body}
	if v2 {
		e = e.AsVersion2()
	}
	if err := e.Sign("testnet", c.key); err != nil {
		c.t.Fatal(err)
	}
	return e.Encode()
}

// offer offers a noop job of a second to each of providers directly and
// returns the job and each provider's bid price, by provider.
func (r *rogueRequester) offer(providers ...*node.Node) (protocol.JobID, map[peer.ID]uint64) {
	r.t.Helper()
	m := offerFrom(r.id(), time.Now().Add(2*time.Minute))
	m.GetOffer().Spec.Args = []string{"20ms"} // a run that costs something
	m.Round = 1
	id, err := protocol.OfferJobID(m.GetOffer())
	if err != nil {
		r.t.Fatal(err)
	}
	offer := r.sign(m)
	for _, p := range providers {
		r.stream(p.ID(), 1, func(int) []byte { return offer })
	}
	prices := map[peer.ID]uint64{}
	for _, p := range providers {
		b := r.waitFor(id, p.ID(), func(m *pb.MarketMessage) bool { return m.GetBid() != nil }, "a bid").GetBid()
		prices[p.ID()] = b.Price
	}
	return id, prices
}

// hold writes the rogue's hold of job naming provider, for the job's
// whole cost at price, expiring rogueHoldLife from now, held everywhere.
func (r *rogueRequester) hold(job protocol.JobID, provider peer.ID, price uint64) rogueJob {
	r.t.Helper()
	spec := offerFrom(r.id(), time.Now()).GetOffer().Spec
	amount, err := market.HoldAmount(price, spec)
	if err != nil {
		r.t.Fatal(err)
	}
	expiry := time.Now().Add(rogueHoldLife)
	raw := r.ledger.next(ledger.HoldBody{Job: ledger.Hash(job), Provider: provider, Amount: amount,
		Expiry: expiry.UnixNano(), Replicas: 1})
	r.store(raw)
	return rogueJob{id: job, provider: provider, price: price, hold: raw, holdSeq: r.ledger.seq, expiry: expiry}
}

// award sends provider the award of j, backed by the hold entry hold (j's
// own, or another's), with the rogue's grant naming provider.
func (r *rogueRequester) award(j rogueJob, provider peer.ID, price uint64, hold []byte) {
	r.t.Helper()
	grant, err := ledger.LeaseGrant{Job: ledger.Hash(j.id), Requester: r.id(), Provider: provider, Price: price, Attempt: 1}.Sign("testnet", r.key)
	if err != nil {
		r.t.Fatal(err)
	}
	a := r.sign(&pb.MarketMessage{Body: &pb.MarketMessage_Award{Award: &pb.Award{
		JobId: j.id[:], Provider: []byte(provider), Price: price, Attempt: 1, Hold: hold, Grant: grant,
	}}})
	r.stream(provider, 1, func(int) []byte { return a })
}

// awardJob offers a job to p, holds it for p and awards it; it returns
// the job once p has billed it.
func (r *rogueRequester) awardJob(p *node.Node) (rogueJob, *pb.Bill) {
	r.t.Helper()
	id, prices := r.offer(p)
	j := r.hold(id, p.ID(), prices[p.ID()])
	r.award(j, p.ID(), j.price, j.hold)
	return j, r.waitBill(j)
}

// waitBill waits for the provider's bill of j.
func (r *rogueRequester) waitBill(j rogueJob) *pb.Bill {
	r.t.Helper()
	b := r.waitFor(j.id, j.provider, func(m *pb.MarketMessage) bool { return m.GetBill() != nil }, "a bill").GetBill()
	if b.HoldSeq != j.holdSeq || b.ExitCode != 0 || !b.Final {
		r.t.Fatalf("bill %+v, want a final one of a run that succeeded drawing on hold %d", b, j.holdSeq)
	}
	return b
}

// waitFor waits for a message about job from p that match accepts.
func (r *rogueRequester) waitFor(job protocol.JobID, p peer.ID, match func(*pb.MarketMessage) bool, what string) *pb.MarketMessage {
	r.t.Helper()
	var got *pb.MarketMessage
	err := testnet.WaitFor(context.Background(), deadline, func() error {
		if got = r.from(job, p, match); got == nil {
			return fmt.Errorf("no %s from %s", what, p)
		}
		return nil
	})
	if err != nil {
		r.t.Fatal(err)
	}
	return got
}

// from is the first message about job from p that match accepts, or nil.
func (r *rogueRequester) from(job protocol.JobID, p peer.ID, match func(*pb.MarketMessage) bool) *pb.MarketMessage {
	for _, s := range r.received(job) {
		if s.Signer == p && match(s.Msg) {
			return s.Msg
		}
	}
	return nil
}

// accept signs the acceptance of amount of bill b of j and sends it to
// j's provider.
func (r *rogueRequester) accept(j rogueJob, b *pb.Bill, amount uint64) {
	r.t.Helper()
	sig, err := ledger.Acceptance{Job: ledger.Hash(j.id), Requester: r.id(), Provider: j.provider, HoldSeq: b.HoldSeq,
		Amount: amount, Final: b.Final, Receipt: ledger.Hash(b.Receipt)}.Sign("testnet", r.key)
	if err != nil {
		r.t.Fatal(err)
	}
	m := r.sign(&pb.MarketMessage{Body: &pb.MarketMessage_Accepted{Accepted: &pb.Accepted{
		JobId: j.id[:], Attempt: b.Attempt, Amount: amount, Final: b.Final, Acceptance: sig,
	}}})
	r.stream(j.provider, 1, func(int) []byte { return m })
}

// paidEverywhere waits until every running member's ledger holds
// provider's final claim of requester's job, and returns the amount it
// claimed (the same everywhere).
func paidEverywhere(t *testing.T, tn *testnet.Testnet, requester peer.ID, job protocol.JobID, provider peer.ID) uint64 {
	t.Helper()
	var amount uint64
	err := testnet.WaitFor(context.Background(), deadline, func() error {
		for i, n := range tn.Nodes() {
			e, ok, err := n.Ledger().FinalClaim(requester, ledger.Hash(job), provider)
			if err != nil || !ok {
				return fmt.Errorf("node %d holds no final claim of job %s by %s (%v)", i, job, provider, err)
			}
			c := e.Body.(ledger.ClaimBody)
			if i > 0 && c.Amount != amount {
				return fmt.Errorf("node %d: claim of %d, node 0's of %d", i, c.Amount, amount)
			}
			amount = c.Amount
			if _, open, err := n.Ledger().HoldOf(requester, ledger.Hash(job), provider); err != nil || open {
				return fmt.Errorf("node %d: the hold is still open after the final claim (%v)", i, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return amount
}
