package node_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"

	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/protocol"
	protoledger "github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/protocol/pb"
	"github.com/mira-market/mira/testnet"
)

// Attacks on the ledger that the review of issue 15's hardening found:
// each test is the attacker, a peer with the swarm key and keys of its
// own, against real members.

// rogueKey makes a key for a rogue's host and ledger account, made before
// the testnet starts, so that its genesis can grant the account credits.
func rogueKey(t *testing.T) (crypto.PrivKey, peer.ID) {
	t.Helper()
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return key, id
}

// rogueHostWith is rogueHost with a given key.
func rogueHostWith(t *testing.T, tn *testnet.Testnet, key crypto.PrivKey) host.Host {
	t.Helper()
	psk, err := node.LoadSwarmKey(tn.Dir(0))
	if err != nil {
		t.Fatal(err)
	}
	h, err := libp2p.New(libp2p.Identity(key), libp2p.PrivateNetwork(psk), libp2p.DefaultPrivateTransports,
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// ledgerChain signs one account's entries in order, as a patched node
// would: the rogue's own, or a fresh throwaway key's.
type ledgerChain struct {
	t    *testing.T
	key  crypto.PrivKey
	id   peer.ID
	seq  uint64
	prev protoledger.Hash
}

func newLedgerChain(t *testing.T, key crypto.PrivKey) *ledgerChain {
	t.Helper()
	if key == nil {
		key, _ = rogueKey(t)
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return &ledgerChain{t: t, key: key, id: id}
}

// next signs the chain's next entry.
func (c *ledgerChain) next(body protoledger.Body) []byte {
	c.t.Helper()
	e := protoledger.Entry{Account: c.id, Seq: c.seq + 1, Prev: c.prev, Time: time.Now(), Body: body}
	if err := e.Sign("testnet", c.key); err != nil {
		c.t.Fatal(err)
	}
	raw := e.Encode()
	c.seq, c.prev = e.Seq, e.Hash()
	return raw
}

// forged signs an entry at seq whose prev hash is no entry's.
func (c *ledgerChain) forged(seq uint64, body protoledger.Body) []byte {
	c.t.Helper()
	e := protoledger.Entry{Account: c.id, Seq: seq, Prev: protoledger.Hash{0xba, 0xd}, Time: time.Now(), Body: body}
	if err := e.Sign("testnet", c.key); err != nil {
		c.t.Fatal(err)
	}
	return e.Encode()
}

// A rogue requester awards a provider the same job twice on one hold
// naming it. The hold backs one lease: the ledger refuses the provider's
// second lease record (ErrUnfunded), so the provider must not run the
// job again, a run that no ledger entry would record.
func TestReawardOnAUsedHoldDoesNotRun(t *testing.T) {
	key, rid := rogueKey(t)
	tn, err := testnet.Start(context.Background(), testnet.Options{Nodes: 2, Dir: t.TempDir(),
		Configure: testnet.WithProviders(1), WasmCacheDir: testWasmCache,
		Grants: []protoledger.GenesisGrant{{Peer: rid, Amount: testnet.DefaultCredits}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tn.Close() })
	if err := testnet.WaitFor(context.Background(), deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	provider := tn.Node(1)
	r := &marketRogue{t: t, key: key, host: rogueHostWith(t, tn, key)}
	r.host.SetStreamHandler(libp2pproto.ID(protocol.MarketProtocol("testnet")), r.read)
	info, _ := peer.AddrInfoFromString(provider.ListenAddrs()[0])
	if err := r.host.Connect(context.Background(), *info); err != nil {
		t.Fatal(err)
	}

	m := offerFrom(r.id(), time.Now().Add(time.Minute))
	id, err := protocol.OfferJobID(m.GetOffer())
	if err != nil {
		t.Fatal(err)
	}
	// The rogue's chain: its grant, and one hold for the job naming the
	// provider, for the job's whole cost.
	ledger := newLedgerChain(t, key)
	grant := ledger.next(protoledger.GrantBody{Amount: testnet.DefaultCredits})
	hold := ledger.next(protoledger.HoldBody{Job: protoledger.Hash(id), Provider: provider.ID(), Amount: 1e6,
		Expiry: time.Now().Add(time.Hour).UnixNano(), Replicas: 1})

	// award offers the job in round, takes the provider's bid, awards it
	// with the hold, and returns the provider's result of that attempt.
	award := func(round uint32, chain [][]byte) *pb.MarketMessage {
		t.Helper()
		before := len(r.received(id))
		m.Round = round
		offer := r.sign(m)
		r.stream(provider.ID(), 1, func(int) []byte { return offer })
		bid := waitReplies(t, r, id, before+1)[before].Msg.GetBid()
		if bid == nil {
			t.Fatalf("round %d: the provider did not bid", round)
		}
		leaseGrant, err := protoledger.LeaseGrant{Job: protoledger.Hash(id), Requester: rid, Provider: provider.ID(), Price: bid.Price, Attempt: round}.Sign("testnet", key)
		if err != nil {
			t.Fatal(err)
		}
		a := r.sign(&pb.MarketMessage{Body: &pb.MarketMessage_Award{Award: &pb.Award{
			JobId: id[:], Provider: []byte(provider.ID()), Price: bid.Price, Attempt: round, Hold: hold, Chain: chain, Grant: leaseGrant,
		}}})
		r.stream(provider.ID(), 1, func(int) []byte { return a })
		// A run ends in a bill; a run the escrow check refused, in a
		// decline with the reason.
		var res *pb.MarketMessage
		err = testnet.WaitFor(context.Background(), deadline, func() error {
			for _, s := range r.received(id) {
				if b := s.Msg.GetBill(); b != nil && b.Attempt == round {
					res = s.Msg
					return nil
				}
				if d := s.Msg.GetDecline(); d != nil && strings.HasPrefix(d.Reason, "escrow") && round > 1 {
					res = s.Msg
					return nil
				}
			}
			return fmt.Errorf("no bill or decline of attempt %d", round)
		})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	if res := award(1, [][]byte{grant}); res.GetBill() == nil || res.GetBill().ExitCode != 0 {
		t.Fatalf("the first award, which the hold backs: %v, want a bill of a run that succeeded", res)
	}
	leases := func() uint64 {
		n, _, err := provider.Ledger().Leases(provider.ID(), protoledger.Hash(id))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if err := testnet.WaitFor(context.Background(), deadline, func() error {
		if n := leases(); n != 1 {
			return fmt.Errorf("%d leases recorded", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	res := award(2, nil)
	if d := res.GetDecline(); d == nil || !strings.Contains(d.Reason, "escrow hold backs no further run") {
		t.Fatalf("award 2 on the hold that backed award 1: %v; want the run refused", res)
	}
	if n := leases(); n != 1 {
		t.Fatalf("%d leases recorded after the refused award", n)
	}
}

// ledgerRejected reads member i's count of refused ledger gossip
// (mira_ledger_rejected_total) from its API.
func ledgerRejected(t *testing.T, tn *testnet.Testnet, i int) float64 {
	t.Helper()
	for _, line := range strings.Split(metricsText(t, clientFor(t, tn, i)), "\n") {
		if v, ok := strings.CutPrefix(line, "mira_ledger_rejected_total "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("node %d has no mira_ledger_rejected_total", i)
	return 0
}

// gossipOnlyTo joins the ledger topic on a rogue host connected to member
// i alone, so that what it publishes reaches the others only if member i
// forwards it.
func gossipOnlyTo(t *testing.T, tn *testnet.Testnet, i int) *pubsub.Topic {
	t.Helper()
	_, h := rogueHost(t, tn)
	ps, err := pubsub.NewGossipSub(context.Background(), h, pubsub.WithMessageSignaturePolicy(pubsub.StrictNoSign))
	if err != nil {
		t.Fatal(err)
	}
	info, _ := peer.AddrInfoFromString(tn.Node(i).ListenAddrs()[0])
	if err := h.Connect(context.Background(), *info); err != nil {
		t.Fatal(err)
	}
	topic, err := ps.Join(protocol.LedgerTopic("testnet"))
	if err != nil {
		t.Fatal(err)
	}
	if err := testnet.WaitFor(context.Background(), deadline, func() error {
		if len(topic.ListPeers()) == 0 {
			return errors.New("member not on the rogue's ledger topic yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return topic
}

// publishBatch gossips raws as one ledger message.
func publishBatch(t *testing.T, topic *pubsub.Topic, raws ...[]byte) {
	t.Helper()
	msg := []byte{1} // a batch of entries
	for _, raw := range raws {
		msg = protocol.AppendFrame(msg, raw)
	}
	if err := topic.Publish(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
}

// relayed waits until the members relay what the rogue gossips to one of
// them: a fresh account's body (valid everywhere) gossiped, again and
// again, until every member holds one. Right after a testnet forms, its
// members' gossip meshes may not have formed yet, and a message relayed
// then reaches no one.
func relayed(t *testing.T, tn *testnet.Testnet, topic *pubsub.Topic, body func(*ledgerChain) protoledger.Body) {
	t.Helper()
	err := testnet.WaitFor(context.Background(), deadline, func() error {
		c := newLedgerChain(t, nil)
		probe := c.next(body(c))
		publishBatch(t, topic, probe)
		return testnet.WaitFor(context.Background(), 2*time.Second, func() error {
			for i, n := range tn.Nodes() {
				if ok, err := n.Ledger().Has(sha256.Sum256(probe)); err != nil || !ok {
					return fmt.Errorf("node %d lacks the probe (%v)", i, err)
				}
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// waitStored waits until n's ledger holds raw.
func waitStored(t *testing.T, n *node.Node, raw []byte, what string) {
	t.Helper()
	if err := testnet.WaitFor(context.Background(), deadline, func() error {
		if ok, err := n.Ledger().Has(sha256.Sum256(raw)); err != nil || !ok {
			return fmt.Errorf("%s not stored (%v)", what, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// A relay that forwards a batch it could judge only in part is blamed for
// the part it could not. The rogue makes victim R (member 1) hold entry 1
// of a fresh account P, taken by reconciliation so that relay C (member
// 2) lacks it: a lease of a job the rogue holds a credit for, naming P
// (as it does for every key it makes), so it costs next to nothing. Then
// it gossips to C alone a batch of a fresh valid lease and P's entry 2
// with a broken prev hash. C stores the lease and parks entry 2 for want
// of entry 1; if C forwarded the batch, R would find entry 2 breaking P's
// chain, a refusal that counts against the sender, C; four such batches
// graylist C at R, and done to each of R's peers, that eclipses R. A
// relay must forward only batches it has judged whole.
func TestRelayIsNotBlamedForEntriesItCouldNotJudge(t *testing.T) {
	key, gid := rogueKey(t)
	tn, err := testnet.Start(context.Background(), testnet.Options{Nodes: 3, Dir: t.TempDir(), WasmCacheDir: testWasmCache,
		Grants: []protoledger.GenesisGrant{{Peer: gid, Amount: testnet.DefaultCredits}},
		// Only the rogue's sessions reconcile, so that C does not take
		// P's entry 1 from R before the attack.
		Configure: func(_ int, cfg *node.Config) { cfg.ReconcileInterval = node.Duration(time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tn.Close() })
	ctx := context.Background()
	if err := testnet.WaitFor(ctx, deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	const r, c = 1, 2
	victim, relay := tn.Node(r), tn.Node(c)

	// The rogue's grant, held everywhere.
	g := newLedgerChain(t, key)
	job := protoledger.Hash{0x10, 0xb}
	store := func(raw []byte, what string) {
		for i, n := range tn.Nodes() {
			if res, err := n.Ledger().IngestMany([][]byte{raw}); err != nil || len(res.Accepted)+res.Duplicates != 1 {
				t.Fatalf("node %d takes %s: %+v, %v", i, what, res, err)
			}
		}
	}
	store(g.next(protoledger.GrantBody{Amount: testnet.DefaultCredits}), "the rogue's grant")
	// The rogue awards its job to every key it makes: its grant of the
	// lease, backed by a hold of a credit naming the key, held everywhere.
	grant := func(c *ledgerChain) protoledger.Body {
		grant, err := protoledger.LeaseGrant{Job: job, Requester: gid, Provider: c.id, Price: 1, Attempt: 1}.Sign("testnet", key)
		if err != nil {
			t.Fatal(err)
		}
		return protoledger.LeaseBody{Job: job, Requester: gid, Price: 1, Attempt: 1, Grant: grant}
	}
	lease := func(c *ledgerChain) protoledger.Body {
		store(g.next(protoledger.HoldBody{Job: job, Provider: c.id, Amount: 1,
			Expiry: time.Now().Add(time.Hour).UnixNano(), Replicas: 1}), "the rogue's hold")
		return grant(c)
	}
	p := newLedgerChain(t, nil)
	p1 := p.next(lease(p))
	_, rh := rogueHost(t, tn)
	info, _ := peer.AddrInfoFromString(victim.ListenAddrs()[0])
	if err := rh.Connect(ctx, *info); err != nil {
		t.Fatal(err)
	}
	if sent := rogueReconcile(t, rh, victim, [][]byte{p1}); sent != 1 {
		t.Fatalf("the session carried %d entries", sent)
	}
	waitStored(t, victim, p1, "P's entry 1 at R")
	if ok, _ := relay.Ledger().Has(sha256.Sum256(p1)); ok {
		t.Fatal("C holds P's entry 1: the attack needs it not to")
	}

	topic := gossipOnlyTo(t, tn, c)
	relayed(t, tn, topic, lease)
	before := ledgerRejected(t, tn, r)
	q := newLedgerChain(t, nil)
	q1 := q.next(lease(q))
	publishBatch(t, topic, q1, p.forged(2, grant(p)))
	waitStored(t, relay, q1, "the batch's valid lease at C")
	// A batch C judges whole, sent after: when R holds it, R has had
	// whatever C forwarded before it.
	m := newLedgerChain(t, nil)
	marker := m.next(lease(m))
	publishBatch(t, topic, marker)
	waitStored(t, victim, marker, "the marker at R")
	err = testnet.WaitFor(ctx, 3*time.Second, func() error {
		if got := ledgerRejected(t, tn, r); got > before {
			return nil
		}
		for _, i := range []int{0, c} {
			if s, ok := victim.GossipScore(tn.Node(i).ID()); ok && s < 0 {
				return nil
			}
		}
		return errors.New("not blamed")
	})
	if err == nil {
		// Scores are computed every second: wait for the blame to show.
		scores := func() (a, c float64) {
			a, _ = victim.GossipScore(tn.Node(0).ID())
			c, _ = victim.GossipScore(relay.ID())
			return a, c
		}
		testnet.WaitFor(ctx, 3*time.Second, func() error {
			if a, c := scores(); a >= 0 && c >= 0 {
				return errors.New("no score down yet")
			}
			return nil
		})
		a, c := scores()
		t.Fatalf("R refused what its honest peers forwarded (%v refusals counted, was %v; its scores of A %.0f, of C %.0f): "+
			"a relay forwarded an entry it could not judge", ledgerRejected(t, tn, r), before, a, c)
	}
	// What C stored of the batch goes on by reconciliation; the broken
	// entry nowhere.
	if err := victim.Reconcile(ctx, relay.ID()); err != nil {
		t.Fatal(err)
	}
	waitStored(t, victim, q1, "the batch's valid lease at R, by reconciliation")
	if h, err := victim.Ledger().Head(p.id); err != nil || h.Seq != 1 {
		t.Fatalf("P's head at R: %+v, %v", h, err)
	}
	if got := ledgerRejected(t, tn, r); got != before {
		t.Fatalf("R counted %v refusals, was %v", got, before)
	}
}

// chainServer is a rogue's answer to ledger sync requests: a chain
// request gets the entries of entries it holds after the seq asked for;
// every other request (a reconciliation, which would bring what those
// entries wait for) is cut off. served is closed once it has sent some.
type chainServer struct {
	entries [][]byte
	served  chan struct{}
	once    sync.Once
}

func (s *chainServer) handle(st network.Stream) {
	defer st.Close()
	br := bufio.NewReader(st)
	if kind, err := br.ReadByte(); err != nil || kind != protocol.SyncChain {
		st.Reset()
		return
	}
	req, err := protocol.ReadFrame(br, protocol.MaxSyncFrame)
	if err != nil || len(req) < 9 {
		st.Reset()
		return
	}
	after := binary.BigEndian.Uint64(req)
	bw := bufio.NewWriter(st)
	sent := 0
	for _, raw := range s.entries {
		if e, err := protoledger.DecodeEntry(raw); err == nil && e.Seq > after {
			bw.Write(protocol.Frame(raw))
			sent++
		}
	}
	bw.Write(protocol.Frame(nil))
	bw.Flush()
	if sent > 0 {
		s.once.Do(func() { close(s.served) })
	}
}

// A node restored from an older copy must not sign a seq that any peer
// has shown it an own entry for. The rogue serves the restored node its
// own later entries (which it signed before the restore), the first of
// them a claim of a hold the rogue withholds, so the node cannot take
// them, and it cuts off the reconciliation that would bring the hold:
// the node counts the rogue as failed. Then a peer that holds none of
// the node's later entries (a lagging peer, or a sybil) answers
// "nothing", which makes the quorum of one: the gate must stay closed,
// the status saying why, until the node holds the entries shown; once an
// honest peer has the hold, the node takes them and signs after them.
func TestHeadGateStaysShutBelowAnOwnEntryShown(t *testing.T) {
	fkey, funder := rogueKey(t)
	tn, err := testnet.Start(context.Background(), testnet.Options{Nodes: 2, Dir: t.TempDir(), WasmCacheDir: testWasmCache,
		Grants: []protoledger.GenesisGrant{{Peer: funder, Amount: testnet.DefaultCredits}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tn.Close() })
	ctx := context.Background()
	if err := testnet.WaitFor(ctx, deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	const restored = 1
	self := tn.Node(restored).ID()
	waitHead(t, tn, restored, "confirmed")
	head, err := tn.Node(restored).Ledger().Head(self)
	if err != nil || head.Seq != 1 {
		t.Fatalf("own head %+v (%v), want the grant", head, err)
	}
	for _, i := range []int{restored, 0} {
		if err := tn.Stop(i); err != nil {
			t.Fatal(err)
		}
	}
	// What the node signed after its copy was taken: its claim of a hold
	// naming it that the funder wrote, which waits for that hold, and a
	// hold above its grant that the claim funds.
	key, err := node.LoadIdentity(tn.Dir(restored))
	if err != nil {
		t.Fatal(err)
	}
	const paid = 2000
	f := newLedgerChain(t, fkey)
	funding := [][]byte{
		f.next(protoledger.GrantBody{Amount: testnet.DefaultCredits}),
		f.next(protoledger.HoldBody{Job: protoledger.Hash{2}, Provider: self, Amount: paid,
			Expiry: time.Now().Add(time.Hour).UnixNano(), Replicas: 1}),
	}
	accepted := protoledger.Acceptance{Job: protoledger.Hash{2}, Requester: funder, Provider: self, HoldSeq: f.seq,
		Amount: paid, Final: true, Receipt: protoledger.Hash{2}}
	sig, err := accepted.Sign("testnet", fkey)
	if err != nil {
		t.Fatal(err)
	}
	own := &ledgerChain{t: t, key: key, id: self, seq: head.Seq, prev: head.Hash}
	later := [][]byte{
		own.next(protoledger.ClaimBody{Job: accepted.Job, Requester: funder, HoldSeq: accepted.HoldSeq, Amount: paid,
			Final: true, Receipt: accepted.Receipt, Acceptance: sig}),
		own.next(protoledger.HoldBody{Job: protoledger.Hash{1}, Amount: testnet.DefaultCredits + paid/2}),
	}

	if err := tn.Restart(ctx, restored); err != nil {
		t.Fatal(err)
	}
	n := tn.Node(restored)
	srv := &chainServer{entries: later, served: make(chan struct{})}
	_, rh := rogueHost(t, tn)
	rh.SetStreamHandler(libp2pproto.ID(protocol.ReconcileProtocol("testnet")), srv.handle)
	info, _ := peer.AddrInfoFromString(n.ListenAddrs()[0])
	if err := rh.Connect(ctx, *info); err != nil {
		t.Fatal(err)
	}
	select {
	case <-srv.served:
	case <-time.After(deadline):
		t.Fatal("the restored node never asked the rogue for its chain")
	}
	// The peer that answers "nothing": node 0, which never had the
	// node's later entries.
	if err := tn.Restart(ctx, 0); err != nil {
		t.Fatal(err)
	}
	err = testnet.WaitFor(ctx, deadline, func() error {
		st := waitStatus(t, tn, restored)
		if st.Head == "confirmed" {
			return nil
		}
		if !strings.Contains(st.Detail, "1 of 2 peers asked answered") || !strings.Contains(st.Detail, "up to seq 3") {
			return fmt.Errorf("ledger %+v", st)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if st := waitStatus(t, tn, restored); st.Head == "confirmed" {
		t.Fatalf("the head gate opened at seq %d while a peer had shown the node its own entries up to seq 3 "+
			"(%s): its next entry would be a second seq %d", st.Seq, st.Detail, st.Seq+1)
	}
	if h, err := n.Ledger().Head(self); err != nil || h.Seq != 1 {
		t.Fatalf("own head %+v (%v) while the gate is shut", h, err)
	}

	// An honest peer gets the hold: the node takes it by
	// reconciliation, then its own entries, and signs after them.
	if res, err := tn.Node(0).Ledger().IngestMany(funding); err != nil || len(res.Accepted) != len(funding) {
		t.Fatalf("node 0 takes the funding: %+v, %v", res, err)
	}
	st := waitHead(t, tn, restored, "confirmed")
	if st.Seq < 3 || st.Learned != 2 || st.Frozen {
		t.Fatalf("confirmed: %+v, want the 2 own entries shown taken", st)
	}
}

// waitStatus reads member i's ledger status from its API.
func waitStatus(t *testing.T, tn *testnet.Testnet, i int) api.LedgerStatus {
	t.Helper()
	info, err := clientFor(t, tn, i).Node(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.Ledger
}
