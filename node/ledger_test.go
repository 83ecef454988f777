package node_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"

	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/storage"
	"github.com/mira-market/mira/testnet"
)

// ledgersAgree waits until every running node's ledger holds the same
// entries, then checks that balances add up to the genesis total.
func ledgersAgree(t *testing.T, tn *testnet.Testnet) {
	t.Helper()
	nodes := tn.Nodes()
	err := testnet.WaitFor(context.Background(), time.Minute, func() error {
		want, err := nodes[0].Ledger().Digest()
		if err != nil {
			return err
		}
		for i, n := range nodes[1:] {
			got, err := n.Ledger().Digest()
			if err != nil {
				return err
			}
			if got != want {
				return fmt.Errorf("ledger of %s (%d entries) differs from node 0's (%d entries)",
					n.ID(), n.Ledger().Count(), nodes[0].Ledger().Count())
			}
			_ = i
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	g, err := tn.Genesis()
	if err != nil {
		t.Fatal(err)
	}
	var want uint64
	for _, gr := range g.Grants {
		want += gr.Amount
	}
	for _, n := range nodes {
		total, err := n.Ledger().Total()
		if err != nil || total != want {
			t.Fatalf("balances on %s add up to %d, genesis granted %d (%v)", n.ID(), total, want, err)
		}
		if probs, err := n.Ledger().Verify(context.Background()); err != nil || len(probs) > 0 {
			t.Fatalf("ledger of %s does not verify: %v %v", n.ID(), probs, err)
		}
	}
}

// allEntries returns every entry of every member's account in n's ledger.
func allEntries(t *testing.T, n *node.Node) []ledger.Entry {
	t.Helper()
	var out []ledger.Entry
	for item, err := range n.Ledger().Items() {
		if err != nil {
			t.Fatal(err)
		}
		e, err := n.Ledger().EntryByHash(item.Hash)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	return out
}

// equivocation is a 4-member testnet whose member 3 has stopped after
// its grant; sign makes entries with member 3's key, as a cheat would.
type equivocation struct {
	tn    *testnet.Testnet
	cheat peer.ID
	head  storage.Head
	sign  func(seq uint64, prev ledger.Hash, to peer.ID) ledger.Entry
}

func startEquivocation(t *testing.T) *equivocation {
	t.Helper()
	tn := startTestnet(t, 4, nil)
	if err := testnet.WaitFor(context.Background(), deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	cheat := tn.Node(3).ID()
	key, err := node.LoadIdentity(tn.Dir(3))
	if err != nil {
		t.Fatal(err)
	}
	// Every member that stays must hold the grant the cheat's entries
	// follow: one that lacks it parks the first entry it hears and drops a
	// second one for the same place, and then no node sees both.
	var head storage.Head
	err = testnet.WaitFor(context.Background(), deadline, func() error {
		for i := range 3 {
			h, err := tn.Node(i).Ledger().Head(cheat)
			if err != nil {
				return err
			}
			if h.Seq != 1 || (i > 0 && h.Hash != head.Hash) {
				return fmt.Errorf("member 3's head on node %d is seq %d, want its grant", i, h.Seq)
			}
			head = h
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := tn.Stop(3); err != nil {
		t.Fatal(err)
	}
	sign := func(seq uint64, prev ledger.Hash, to peer.ID) ledger.Entry {
		now := time.Now()
		e := ledger.Entry{Account: cheat, Seq: seq, Prev: prev, Time: now,
			Body: ledger.HoldBody{Job: ledger.Hash{byte(seq)}, Provider: to, Amount: 1, Expiry: now.Add(time.Hour).UnixNano(), Replicas: 1}}
		if err := e.Sign("testnet", key); err != nil {
			t.Fatal(err)
		}
		return e
	}
	return &equivocation{tn: tn, cheat: cheat, head: head, sign: sign}
}

// waitFrozen waits until the members numbered in members have all frozen
// the cheat.
func (q *equivocation) waitFrozen(t *testing.T, members ...int) {
	t.Helper()
	err := testnet.WaitFor(context.Background(), deadline, func() error {
		for _, i := range members {
			if frozen, err := q.tn.Node(i).Ledger().Frozen(q.cheat); err != nil || !frozen {
				return fmt.Errorf("node %d has not frozen the equivocator (%v)", i, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// frozenEverywhere waits until the running members have all frozen the
// cheat, then checks that its next entry is refused everywhere.
func (q *equivocation) frozenEverywhere(t *testing.T, first ledger.Entry) {
	t.Helper()
	q.waitFrozen(t, 0, 1, 2)
	later := q.sign(q.head.Seq+2, first.Hash(), q.tn.Node(1).ID()).Encode()
	for i := range 3 {
		if _, err := q.tn.Node(i).Ledger().Ingest(later); !errors.Is(err, ledger.ErrFrozen) {
			t.Fatalf("node %d took a frozen account's later entry: %v", i, err)
		}
	}
}

func TestEquivocatorIsFrozenEverywhere(t *testing.T) {
	// Member 3 signs two different entries with the same seq, and each
	// half of the network hears one of them first (or node 2 hears both).
	q := startEquivocation(t)
	first := q.sign(q.head.Seq+1, q.head.Hash, q.tn.Node(1).ID())
	if err := q.tn.Node(0).IngestEntry(first.Encode()); err != nil {
		t.Fatal(err)
	}
	second := q.sign(q.head.Seq+1, q.head.Hash, q.tn.Node(2).ID())
	if err := q.tn.Node(2).IngestEntry(second.Encode()); err != nil {
		t.Logf("node 2 already had the first: %v", err)
	}
	q.frozenEverywhere(t, first)
}

func TestEquivocationFoundOffGossipIsGossiped(t *testing.T) {
	// Every member has the first entry when node 2 is handed the second
	// directly: node 2 alone sees both, and its proof must reach the rest.
	q := startEquivocation(t)
	first := q.sign(q.head.Seq+1, q.head.Hash, q.tn.Node(1).ID())
	if err := q.tn.Node(0).IngestEntry(first.Encode()); err != nil {
		t.Fatal(err)
	}
	err := testnet.WaitFor(context.Background(), deadline, func() error {
		for i := range 3 {
			if ok, err := q.tn.Node(i).Ledger().Has(first.Hash()); err != nil || !ok {
				return fmt.Errorf("node %d lacks the first entry (%v)", i, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	second := q.sign(q.head.Seq+1, q.head.Hash, q.tn.Node(2).ID())
	if err := q.tn.Node(2).IngestEntry(second.Encode()); !errors.Is(err, ledger.ErrEquivocation) {
		t.Fatalf("node 2 took the second entry: %v", err)
	}
	q.frozenEverywhere(t, first)
}

func TestFraudProofReachesANodeThatMissedIt(t *testing.T) {
	// Node 2 is cut off while the others convict the cheat, then takes
	// the cheat's first entry and one built on it. When it comes back,
	// the proof's gossip is long over: a peer that reconciles with it
	// finds the frozen account's entry and sends it the proof.
	q := startEquivocation(t)
	ctx := context.Background()
	n0, n1, n2 := q.tn.Node(0), q.tn.Node(1), q.tn.Node(2)
	for _, other := range []*node.Node{n0, n1} {
		n2.BlockPeer(other.ID())
		other.BlockPeer(n2.ID())
	}
	first := q.sign(q.head.Seq+1, q.head.Hash, n1.ID())
	if err := n0.IngestEntry(first.Encode()); err != nil {
		t.Fatal(err)
	}
	if err := testnet.WaitFor(ctx, deadline, func() error {
		if ok, err := n1.Ledger().Has(first.Hash()); err != nil || !ok {
			return fmt.Errorf("node 1 lacks the first entry (%v)", err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	second := q.sign(q.head.Seq+1, q.head.Hash, n2.ID())
	if err := n1.IngestEntry(second.Encode()); !errors.Is(err, ledger.ErrEquivocation) {
		t.Fatalf("node 1 took the second entry: %v", err)
	}
	q.waitFrozen(t, 0)
	later := q.sign(q.head.Seq+2, first.Hash(), n2.ID())
	for _, e := range []ledger.Entry{first, later} {
		if err := n2.IngestEntry(e.Encode()); err != nil {
			t.Fatal(err)
		}
	}
	if frozen, _ := n2.Ledger().Frozen(q.cheat); frozen {
		t.Fatal("node 2 heard of the fraud while cut off")
	}
	for _, other := range []*node.Node{n0, n1} {
		n2.UnblockPeer(other.ID())
		other.UnblockPeer(n2.ID())
	}
	if _, err := n0.Connect(ctx, n2.ListenAddrs()[0]); err != nil {
		t.Fatal(err)
	}
	q.waitFrozen(t, 2)
}

func TestAwardCarriesTheChainTheProviderLacks(t *testing.T) {
	// The requester (member 2) writes entries that no gossip carries, then
	// posts an interactive job: the provider (member 1) lacks them when the
	// award comes, and finds them in the award instead of fetching them.
	// No periodic reconciliation, which would carry them too; the sessions
	// that start when members connect are over after the first round.
	tn := startTestnet(t, 3, func(i int, cfg *node.Config) {
		testnet.WithProviders(1)(i, cfg)
		cfg.ReconcileInterval = node.Duration(time.Hour)
	})
	ctx := context.Background()
	if err := testnet.WaitFor(ctx, deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	// The requester claims its grant once its head is confirmed: the
	// holds written below need it.
	waitHead(t, tn, 2, "confirmed")
	requester, provider := tn.Node(2), tn.Node(1)
	key, err := node.LoadIdentity(tn.Dir(2))
	if err != nil {
		t.Fatal(err)
	}
	c := clientFor(t, tn, 2)
	var unsent []ledger.Entry
	for round := range 3 {
		var bodies []ledger.Body
		for i := range 3 {
			bodies = append(bodies, ledger.HoldBody{Job: ledger.Hash{0xc4, byte(round), byte(i)}, Amount: 1})
		}
		es, err := requester.Ledger().AppendBatch(key, bodies)
		if err != nil {
			t.Fatal(err)
		}
		unsent = append(unsent, es...)
		j, err := c.SubmitJob(ctx, noopJob("interactive", "0s", "1m"))
		if err != nil {
			t.Fatal(err)
		}
		waitJobs(t, c, []string{j.ID}, "succeeded", deadline)
	}
	for _, e := range unsent {
		if ok, err := provider.Ledger().Has(e.Hash()); err != nil || !ok {
			t.Fatalf("the provider lacks the requester's entry seq %d (%v)", e.Seq, err)
		}
	}
	if n := provider.ReconcileStats().ChainFetches; n != 0 {
		t.Fatalf("the provider fetched the requester's chain %d times", n)
	}
}

func TestPartitionedLedgersConverge(t *testing.T) {
	tn := startTestnet(t, 6, func(i int, cfg *node.Config) {
		if i == 1 || i == 4 {
			cfg.GPUs = testnet.SampleGPUs[:1]
		}
	})
	ctx := context.Background()
	if err := testnet.WaitFor(ctx, deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	sides := [][]int{{0, 1, 2}, {3, 4, 5}}
	// Cut every link between the halves, both ways.
	for _, a := range sides[0] {
		for _, b := range sides[1] {
			tn.Node(a).BlockPeer(tn.Node(b).ID())
			tn.Node(b).BlockPeer(tn.Node(a).ID())
		}
	}
	// Each half trades on its own (batch jobs go by gossip, which the cut
	// leaves whole within each half).
	var ids [2][]string
	for s, side := range sides {
		// The requester may have reached its provider only through the
		// other half so far.
		if _, err := tn.Node(side[2]).Connect(ctx, tn.Node(side[1]).ListenAddrs()[0]); err != nil {
			t.Fatal(err)
		}
		c := clientFor(t, tn, side[2])
		for range 5 {
			j, err := c.SubmitJob(ctx, noopJob("batch", "10ms", "1m"))
			if err != nil {
				t.Fatal(err)
			}
			ids[s] = append(ids[s], j.ID)
		}
		for _, j := range waitJobs(t, c, ids[s], "succeeded", time.Minute) {
			if j.Provider != tn.Node(side[1]).ID().String() || j.Payment == nil || j.Payment.State != "paid" {
				t.Fatalf("job on side %d: provider %s, payment %+v", s, j.Provider, j.Payment)
			}
		}
	}
	// While cut off, neither half has the other's claims.
	if cs, err := tn.Node(5).Ledger().FinalClaims(tn.Node(2).ID(), mustHash(t, ids[0][0])); err != nil || len(cs) != 0 {
		t.Fatalf("a claim crossed the partition (%v)", err)
	}
	// Heal: the halves reconnect and reconcile.
	for _, a := range sides[0] {
		for _, b := range sides[1] {
			tn.Node(a).UnblockPeer(tn.Node(b).ID())
			tn.Node(b).UnblockPeer(tn.Node(a).ID())
		}
	}
	if _, err := tn.Node(0).Connect(ctx, tn.Node(3).ListenAddrs()[0]); err != nil {
		t.Fatal(err)
	}
	ledgersAgree(t, tn)
	// Gossip does not repeat old entries: reconciliation moved them.
	received := 0
	for _, n := range tn.Nodes() {
		received += n.ReconcileStats().Received
	}
	if received == 0 {
		t.Fatal("ledgers converged without reconciliation moving an entry")
	}
	for s, side := range sides {
		for _, id := range ids[s] {
			for _, n := range tn.Nodes() {
				cs, err := n.Ledger().FinalClaims(tn.Node(side[2]).ID(), mustHash(t, id))
				if err != nil || len(cs) != 1 || cs[0].Account != tn.Node(side[1]).ID() {
					t.Fatalf("%s has %d final claims for job %s of side %d (%v), want its provider's", n.ID(), len(cs), id[:8], s, err)
				}
			}
		}
	}
}

func mustHash(t *testing.T, s string) ledger.Hash {
	t.Helper()
	var h ledger.Hash
	if err := h.UnmarshalText([]byte(s)); err != nil {
		t.Fatal(err)
	}
	return h
}

// Garbage on the ledger-sync and log streams costs the sender its stream,
// never the node: afterwards it still reconciles.
func TestGarbageOnLedgerAndLogStreamsIsHarmless(t *testing.T) {
	tn := startTestnet(t, 2, nil)
	ctx := context.Background()
	if err := testnet.WaitFor(ctx, deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	victim, rogue := tn.Node(0), tn.Node(1).Host()
	huge := []byte{0xff, 0xff, 0xff, 0xff, 0x0f} // a frame length of 4 GiB
	for _, tc := range []struct {
		proto string
		data  []byte
	}{
		{"/reconcile/1", append([]byte{2}, huge...)},         // reconcile, oversized frame
		{"/reconcile/1", append([]byte{2, 5}, "junk!"...)},   // reconcile, garbage frame
		{"/reconcile/1", []byte{1, 3, 1, 2, 3}},              // chain request too short
		{"/reconcile/1", append([]byte{3, 4}, "abcd"...)},    // listing answered, then a bad request
		{"/reconcile/1", []byte{99}},                         // unknown request
		{"/logs/1", huge},                                    // oversized header
		{"/logs/1", append([]byte{40}, make([]byte, 40)...)}, // a log for a job it does not hold
		{"/blob/1", append([]byte{10}, make([]byte, 10)...)}, // not a content ID
	} {
		st, err := rogue.NewStream(ctx, victim.ID(), protocolID("testnet", tc.proto))
		if err != nil {
			t.Fatal(err)
		}
		st.Write(tc.data)
		st.CloseWrite()
		st.SetReadDeadline(time.Now().Add(10 * time.Second))
		io.Copy(io.Discard, st)
		st.Close()
	}
	if err := tn.Node(1).Reconcile(ctx, victim.ID()); err != nil {
		t.Fatalf("reconcile after the garbage: %v", err)
	}
	ledgersAgree(t, tn)
}

func protocolID(network, suffix string) libp2pproto.ID {
	return libp2pproto.ID("/mira/" + network + suffix)
}

// A difference too large for the coded symbols a node keeps falls back to
// a listing of hashes, and the ledgers still converge.
func TestReconcileFallsBackToListing(t *testing.T) {
	tn := startTestnet(t, 2, func(_ int, cfg *node.Config) {
		cfg.ReconcileSymbols = 256 // decodes ~180 differences
		cfg.ReconcileInterval = node.Duration(time.Hour)
	})
	ctx := context.Background()
	if err := testnet.WaitFor(ctx, deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	// 510 entries only node 0 has: its holds naming 5 fresh accounts,
	// their claims of them, and their jobs.
	raws := selfJobChains(t, tn, 5, 100)
	if res, err := tn.Node(0).Ledger().IngestMany(raws); err != nil || len(res.Accepted)+res.Duplicates != len(raws) {
		t.Fatalf("ingest: %d of %d, %v", len(res.Accepted)+res.Duplicates, len(raws), err)
	}
	if err := tn.Node(1).Reconcile(ctx, tn.Node(0).ID()); err != nil {
		t.Fatal(err)
	}
	if st := tn.Node(1).ReconcileStats(); st.Fallbacks == 0 || st.Received < len(raws) {
		t.Fatalf("stats %+v: want a fallback that received all %d entries", st, len(raws))
	}
	ledgersAgree(t, tn)
}

// selfJobChains has node 0 fund accounts fresh accounts, and signs
// perAccount entries more for each of them: jobs of its own, each posted
// (a hold naming no provider) and withdrawn (its release). Under version
// 3 an account cannot lease a job of its own (a lease needs a hold naming
// its provider, and no hold names its own account), so posting is what
// one account does alone. It returns node 0's funding holds and then the
// accounts' chains (each opening with its claim of that hold), which any
// ledger takes: accounts × (perAccount + 2) entries.
func selfJobChains(t *testing.T, tn *testnet.Testnet, accounts, perAccount int) [][]byte {
	t.Helper()
	var holds, chains [][]byte
	for a := range accounts {
		hold, c := fundedAccount(t, tn, ledger.Hash{0xf0, byte(a)}, 1000)
		holds = append(holds, hold)
		for i := range perAccount {
			job := ledger.Hash{byte(a), byte(i / 2)}
			if i%2 == 0 {
				c.next(ledger.HoldBody{Job: job, Amount: 1})
			} else {
				c.next(ledger.ReleaseBody{Job: job})
			}
		}
		chains = append(chains, c.raws...)
	}
	return append(holds, chains...)
}

// signedChain is a fresh account's chain, signed entry by entry.
type signedChain struct {
	t    *testing.T
	key  crypto.PrivKey
	id   peer.ID
	prev ledger.Hash
	raws [][]byte
}

// next signs body as the chain's next entry and keeps it.
func (c *signedChain) next(body ledger.Body) {
	c.t.Helper()
	e := ledger.Entry{Account: c.id, Seq: uint64(len(c.raws)) + 1, Prev: c.prev, Time: time.Now(), Body: body}
	if err := e.Sign("testnet", c.key); err != nil {
		c.t.Fatal(err)
	}
	c.raws, c.prev = append(c.raws, e.Encode()), e.Hash()
}

// fundedAccount has node 0 fund a fresh account with amount for job fund,
// as the market would pay a provider: node 0 writes (to its own ledger,
// not gossiped) a hold naming the account, and the account claims all of
// it, quoting node 0's acceptance. It returns the hold's entry and the
// account's chain, its claim the one entry.
func fundedAccount(t *testing.T, tn *testnet.Testnet, fund ledger.Hash, amount uint64) ([]byte, *signedChain) {
	t.Helper()
	funder, err := node.LoadIdentity(tn.Dir(0))
	if err != nil {
		t.Fatal(err)
	}
	priv, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := peer.IDFromPrivateKey(priv)
	es, err := tn.Node(0).Ledger().AppendBatch(funder, []ledger.Body{ledger.HoldBody{Job: fund, Provider: id, Amount: amount,
		Expiry: time.Now().Add(time.Hour).UnixNano(), Replicas: 1}})
	if err != nil {
		t.Fatal(err)
	}
	acc := ledger.Acceptance{Job: fund, Requester: tn.Node(0).ID(), Provider: id, HoldSeq: es[0].Seq,
		Amount: amount, Final: true, Receipt: fund}
	sig, err := acc.Sign("testnet", funder)
	if err != nil {
		t.Fatal(err)
	}
	c := &signedChain{t: t, key: priv, id: id}
	c.next(ledger.ClaimBody{Job: fund, Requester: acc.Requester, HoldSeq: acc.HoldSeq, Amount: amount,
		Final: true, Receipt: fund, Acceptance: sig})
	return es[0].Encode(), c
}
