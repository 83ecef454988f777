package node_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"testing"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"

	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/protocol/riblt"
	"github.com/mira-market/mira/testnet"
)

// ledgerRogue holds the swarm key and the ledger topic, and signs what it
// likes: a raw libp2p host and gossipsub, none of mira's checks.
type ledgerRogue struct {
	host  host.Host
	topic *pubsub.Topic
}

func newLedgerRogue(t *testing.T, tn *testnet.Testnet) *ledgerRogue {
	t.Helper()
	_, h := rogueHost(t, tn)
	// A deep queue, so the flood leaves the rogue whole; it paces itself
	// so that the victims' validation queues do not drop it either.
	ps, err := pubsub.NewGossipSub(context.Background(), h, pubsub.WithMessageSignaturePolicy(pubsub.StrictNoSign),
		pubsub.WithPeerOutboundQueueSize(1024))
	if err != nil {
		t.Fatal(err)
	}
	for i := range tn.Len() {
		info, _ := peer.AddrInfoFromString(tn.Node(i).ListenAddrs()[0])
		if err := h.Connect(context.Background(), *info); err != nil {
			t.Fatal(err)
		}
	}
	topic, err := ps.Join(protocol.LedgerTopic("testnet"))
	if err != nil {
		t.Fatal(err)
	}
	if err := testnet.WaitFor(context.Background(), deadline, func() error {
		if n := len(topic.ListPeers()); n < tn.Len() {
			return fmt.Errorf("rogue sees %d ledger topic peers", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return &ledgerRogue{host: h, topic: topic}
}

// unfundedChains signs, for each of accounts fresh keys (no grant, no
// credits), a chain of perAccount entries that no hold backs: receipts
// alone (even accounts), or a lease then its receipt, in turn (odd
// accounts), for jobs requester (a rogue's key too, which grants each
// lease) never held. The entries come interleaved round-robin, as a flood
// would send them.
func unfundedChains(t *testing.T, accounts, perAccount int, requester crypto.PrivKey) (raws [][]byte, ids []peer.ID) {
	t.Helper()
	requesterID, _ := peer.IDFromPrivateKey(requester)
	chains := make([]*ledgerChain, accounts)
	for i := range chains {
		chains[i] = newLedgerChain(t, nil)
		ids = append(ids, chains[i].id)
	}
	for seq := uint64(1); seq <= uint64(perAccount); seq++ {
		for i, c := range chains {
			job := sha256.Sum256(fmt.Appendf(nil, "%s/%d", c.id, (seq+1)/2))
			var body ledger.Body = ledger.ReceiptBody{Job: job, Receipt: sha256.Sum256(job[:]),
				Result: "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku", Usage: ledger.Usage{WallMS: 1000, GPUMS: 1000}}
			if i%2 == 1 && seq%2 == 1 {
				g := ledger.LeaseGrant{Job: job, Requester: requesterID, Provider: c.id, Price: 1, Attempt: 1}
				grant, err := g.Sign("testnet", requester)
				if err != nil {
					t.Fatal(err)
				}
				body = ledger.LeaseBody{Job: job, Requester: requesterID, Price: 1, Attempt: 1, Grant: grant}
			}
			raws = append(raws, c.next(body))
		}
	}
	return raws, ids
}

// storedOf counts the entries of ids that n's ledger holds.
func storedOf(t *testing.T, n *node.Node, ids []peer.ID) uint64 {
	t.Helper()
	var sum uint64
	for _, id := range ids {
		h, err := n.Ledger().Head(id)
		if err != nil {
			t.Fatal(err)
		}
		sum += h.Seq
	}
	return sum
}

// TestUnfundedLedgerSpamIsRefused is the attack of finding 4 of issue 15:
// a rogue peer with the swarm key gossips 50,000 receipts and leases,
// signed by 100 fresh accounts without credits, for jobs nobody held, on
// the real ledger topic; then offers 5,000 more of the same in a
// reconciliation session. Every node must refuse them (none stored, none
// reconciled onward), and the rogue's gossip score must go down.
func TestUnfundedLedgerSpamIsRefused(t *testing.T) {
	tn := startTestnet(t, 3, nil)
	if err := testnet.WaitFor(context.Background(), deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	r := newLedgerRogue(t, tn)
	ctx := context.Background()

	requester, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	raws, ids := unfundedChains(t, 100, 500, requester)
	gossipRefused(t, tn, r, raws, ids, "unfunded entries")

	// The reconciliation half: fresh accounts, offered to node 0 directly.
	raws, ids = unfundedChains(t, 10, 500, requester)
	offered := rogueReconcile(t, r.host, tn.Node(0), raws)
	if offered != len(raws) {
		t.Fatalf("the session carried %d of the %d entries", offered, len(raws))
	}
	for i := 1; i < tn.Len(); i++ {
		if err := tn.Node(i).Reconcile(ctx, tn.Node(0).ID()); err != nil {
			t.Fatalf("node %d reconciles with node 0: %v", i, err)
		}
	}
	for i, n := range tn.Nodes() {
		if got := storedOf(t, n, ids); got > 0 {
			t.Errorf("node %d stored %d of the %d unfunded entries offered by reconciliation", i, got, len(raws))
		}
	}
}

// rogueReconcile runs a reconciliation session with victim as its
// initiator, over the victim's set (a listing would tell it) and raws'
// hashes, and sends the entries the session finds the victim lacks. It
// returns how many it sent.
func rogueReconcile(t *testing.T, h host.Host, victim *node.Node, raws [][]byte) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	st, err := h.NewStream(ctx, victim.ID(), libp2pproto.ID(protocol.ReconcileProtocol("testnet")))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(deadline))
	br, bw := bufio.NewReader(st), bufio.NewWriter(st)
	byHash := make(map[[32]byte][]byte, len(raws))
	set := riblt.NewSet(1 << 16)
	for item, err := range victim.Ledger().Items() {
		if err != nil {
			t.Fatal(err)
		}
		set.Add(item.Hash)
	}
	for _, raw := range raws {
		h := sha256.Sum256(raw)
		byHash[h] = raw
		set.Add(h)
	}
	snap := set.Snapshot()
	defer snap.Release()
	x := riblt.NewInitiator(snap, riblt.Config{})
	bw.WriteByte(2) // a reconciliation session
	writeSyncFrame(t, bw, x.Start())
	for done := false; !done; {
		if err := bw.Flush(); err != nil {
			t.Fatal(err)
		}
		frame := readSyncFrame(t, br)
		var out [][]byte
		if out, done, err = x.Step(frame); err != nil {
			t.Fatal(err)
		}
		for _, o := range out {
			writeSyncFrame(t, bw, o)
		}
	}
	sent := 0
	for _, h := range x.Extra() {
		if raw, ok := byHash[h]; ok {
			writeSyncFrame(t, bw, raw)
			sent++
		}
	}
	writeSyncFrame(t, bw, nil)
	if err := bw.Flush(); err != nil {
		t.Fatal(err)
	}
	// The victim sends what it has in turn, and ends the session once it
	// has ingested what it received.
	for len(readSyncFrame(t, br)) > 0 {
	}
	return sent
}

func writeSyncFrame(t *testing.T, w *bufio.Writer, b []byte) {
	t.Helper()
	if _, err := w.Write(append(binary.AppendUvarint(nil, uint64(len(b))), b...)); err != nil {
		t.Fatal(err)
	}
}

func readSyncFrame(t *testing.T, r *bufio.Reader) []byte {
	t.Helper()
	size, err := binary.ReadUvarint(r)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(r, b); err != nil {
		t.Fatal(err)
	}
	return b
}

// gossipRefused has the rogue gossip raws (entries of the accounts ids) in
// batches of 128, paced so that the members' validation queues keep up,
// and checks that no member stores any of them, that every member scores
// the rogue down, and that no member scores another down.
func gossipRefused(t *testing.T, tn *testnet.Testnet, r *ledgerRogue, raws [][]byte, ids []peer.ID, what string) {
	t.Helper()
	ctx := context.Background()
	pace := time.NewTicker(10 * time.Millisecond)
	defer pace.Stop()
	for i := 0; i < len(raws); i += 128 {
		<-pace.C
		msg := []byte{1} // a batch of entries
		for _, raw := range raws[i:min(i+128, len(raws))] {
			msg = protocol.AppendFrame(msg, raw)
		}
		if err := r.topic.Publish(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	err := testnet.WaitFor(ctx, deadline, func() error {
		for i, n := range tn.Nodes() {
			if s, _ := n.GossipScore(r.host.ID()); s >= 0 {
				return fmt.Errorf("node %d scores the rogue %.0f", i, s)
			}
		}
		return nil
	})
	for i, n := range tn.Nodes() {
		if got := storedOf(t, n, ids); got > 0 {
			t.Errorf("node %d stored %d of the %d gossiped %s", i, got, len(raws), what)
		}
	}
	if err != nil {
		t.Errorf("the rogue's gossip score did not go down: %v", err)
	}
	// The honest members' own ledger gossip costs them nothing.
	for i, n := range tn.Nodes() {
		for j, m := range tn.Nodes() {
			if s, ok := n.GossipScore(m.ID()); i != j && ok && s < 0 {
				t.Errorf("node %d scores honest node %d %.0f", i, j, s)
			}
		}
	}
}
