package node_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/protocol/pb"
	"github.com/mira-market/mira/testnet"
)

// honestJobs returns what n's ledger shows of the jobs whose posting hold
// names no provider: the hold's entry, and the lease the winning provider
// recorded (with the requester's grant it quotes).
func honestJobs(t *testing.T, n *node.Node) (holds []ledger.Entry, leases map[ledger.Hash]ledger.LeaseBody) {
	t.Helper()
	leases = map[ledger.Hash]ledger.LeaseBody{}
	for _, e := range allEntries(t, n) {
		switch b := e.Body.(type) {
		case ledger.HoldBody:
			if b.Provider == "" {
				holds = append(holds, e)
			}
		case ledger.LeaseBody:
			leases[b.Job] = b
		}
	}
	return holds, leases
}

// fanOutChains signs, for each of accounts fresh keys (no grant, no
// credits), a lease and then a receipt of every job a posting hold in
// holds backs, each lease naming the hold's requester, with a grant it
// does not have (fanOutLease). The entries come interleaved round-robin,
// as a flood would send them.
func fanOutChains(t *testing.T, accounts int, holds []ledger.Entry, leases map[ledger.Hash]ledger.LeaseBody) (raws [][]byte, ids []peer.ID) {
	t.Helper()
	chains := make([]*ledgerChain, accounts)
	for i := range chains {
		chains[i] = newLedgerChain(t, nil)
		ids = append(ids, chains[i].id)
	}
	for _, hold := range holds {
		job := hold.Body.(ledger.HoldBody).Job
		receipt := ledger.ReceiptBody{Job: job, Receipt: sha256.Sum256(job[:]),
			Result: "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku", Usage: ledger.Usage{WallMS: 1000, GPUMS: 1000}}
		for _, lease := range []bool{true, false} {
			for i, c := range chains {
				var body ledger.Body = receipt
				if lease {
					body = fanOutLease(t, i, c.key, job, hold.Account, leases[job])
				}
				raws = append(raws, c.next(body))
			}
		}
	}
	return raws, ids
}

// fanOutLease is the lease the i-th fresh key (priv) writes of an honest
// job of requester, whose winner recorded honest: in turn, with the
// winner's grant replayed (its price and attempt), with a grant the fresh
// key signed itself, and with 64 random bytes.
func fanOutLease(t *testing.T, i int, priv crypto.PrivKey, job ledger.Hash, requester peer.ID, honest ledger.LeaseBody) ledger.Body {
	t.Helper()
	l := ledger.LeaseBody{Job: job, Requester: requester, Price: honest.Price, Attempt: honest.Attempt}
	switch i % 3 {
	case 0:
		l.Grant = honest.Grant
	case 1:
		self, _ := peer.IDFromPrivateKey(priv)
		// The very bytes the requester would sign for this lease, signed
		// with the fresh key (Sign takes only the signer's own grants).
		g, err := ledger.LeaseGrant{Job: job, Requester: self, Provider: self, Price: l.Price, Attempt: l.Attempt}.Sign("testnet", priv)
		if err != nil {
			t.Fatal(err)
		}
		l.Grant = g
	default:
		l.Grant = make([]byte, ledger.GrantSize)
		rand.Read(l.Grant)
	}
	return l
}

// TestPostingHoldFanOutIsRefused is the attack left open by the first fix
// of finding 4 of issue 15: a job's posting hold names no provider, so a
// rogue with the swarm key reads honest jobs' posting holds from the
// ledger and, with 200 fresh keys without credits, signs a lease and a
// receipt of each of those jobs per key, gossips them on the ledger topic,
// and offers more of the same by reconciliation. Every node must refuse
// them (none stored, none reconciled onward), and the rogue's gossip
// score must go down.
func TestPostingHoldFanOutIsRefused(t *testing.T) {
	tn := startTestnet(t, 3, testnet.WithProviders(1))
	ctx := context.Background()
	if err := testnet.WaitFor(ctx, deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	// Honest jobs: each writes a posting hold naming no provider.
	c := clientFor(t, tn, 2)
	var jobs []string
	for range 5 {
		j, err := c.SubmitJob(ctx, noopJob("batch", "0s", "1m"))
		if err != nil {
			t.Fatal(err)
		}
		jobs = append(jobs, j.ID)
	}
	waitJobs(t, c, jobs, "succeeded", deadline)
	ledgersAgree(t, tn)
	holds, leases := honestJobs(t, tn.Node(0))
	if len(holds) < len(jobs) || len(leases) < len(jobs) {
		t.Fatalf("node 0 holds %d posting holds and %d leases of %d jobs", len(holds), len(leases), len(jobs))
	}

	r := newLedgerRogue(t, tn)
	raws, ids := fanOutChains(t, 200, holds, leases)
	gossipRefused(t, tn, r, raws, ids, "leases and receipts of honest jobs")

	// The reconciliation half: fresh keys, offered to node 0 directly.
	raws, ids = fanOutChains(t, 20, holds, leases)
	if offered := rogueReconcile(t, r.host, tn.Node(0), raws); offered != len(raws) {
		t.Fatalf("the session carried %d of the %d entries", offered, len(raws))
	}
	for i := 1; i < tn.Len(); i++ {
		if err := tn.Node(i).Reconcile(ctx, tn.Node(0).ID()); err != nil {
			t.Fatalf("node %d reconciles with node 0: %v", i, err)
		}
	}
	for i, n := range tn.Nodes() {
		if got := storedOf(t, n, ids); got > 0 {
			t.Errorf("node %d stored %d of the %d leases and receipts offered by reconciliation", i, got, len(raws))
		}
	}
}

// TestAwardWithoutValidGrantIsDeclined is a rogue requester that offers a
// job to the provider, takes its bid, and awards the job with a grant that
// is not its own signature of that award: forged bytes, its grant of the
// award to another provider, or of the award at another price. The
// provider declines each with a reason the requester sees, counts it,
// starts nothing and writes no lease.
func TestAwardWithoutValidGrantIsDeclined(t *testing.T) {
	tn, _ := rogueNet(t)
	provider := tn.Node(1)
	r := newMarketRogue(t, tn)
	for i, tc := range []struct {
		name  string
		grant func(job protocol.JobID, price uint64) []byte
	}{
		{"forged", func(protocol.JobID, uint64) []byte {
			b := make([]byte, protocol.AwardGrantSize)
			rand.Read(b)
			return b
		}},
		{"to another provider", func(job protocol.JobID, price uint64) []byte {
			return rogueGrant(t, r, job, tn.Node(2).ID(), price)
		}},
		{"at another price", func(job protocol.JobID, price uint64) []byte {
			return rogueGrant(t, r, job, provider.ID(), price+1)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := offerFrom(r.id(), time.Now().Add(time.Minute))
			m.Round = 1
			id, err := protocol.OfferJobID(m.GetOffer())
			if err != nil {
				t.Fatal(err)
			}
			offer := r.sign(m)
			r.stream(provider.ID(), 1, func(int) []byte { return offer })
			bid := waitReplies(t, r, id, 1)[0].Msg.GetBid()
			if bid == nil {
				t.Fatal("the provider did not bid")
			}
			award := r.sign(&pb.MarketMessage{Body: &pb.MarketMessage_Award{Award: &pb.Award{
				JobId: id[:], Provider: []byte(provider.ID()), Price: bid.Price, Attempt: 1, Hold: []byte("a hold"),
				Grant: tc.grant(id, bid.Price),
			}}})
			r.stream(provider.ID(), 1, func(int) []byte { return award })
			reply := waitReplies(t, r, id, 2)[1]
			if d := reply.Msg.GetDecline(); d == nil || d.Reason != market.ReasonGrant {
				t.Fatalf("provider answered %s (%v), want a decline: %q", kindName(reply), reply.Msg.Body, market.ReasonGrant)
			}
			if _, rejected := provider.MarketStats(); rejected["bad grant"] != i+1 {
				t.Fatalf("%d awards counted with a bad grant, want %d", rejected["bad grant"], i+1)
			}
			if leases, _, err := provider.Ledger().Leases(provider.ID(), ledger.Hash(id)); err != nil || leases != 0 {
				t.Fatalf("the provider recorded %d leases of the job (%v)", leases, err)
			}
		})
	}
}

// rogueGrant is the rogue requester's own grant of job to provider at
// price: a valid signature, of another award than the one it sends.
func rogueGrant(t *testing.T, r *marketRogue, job protocol.JobID, provider peer.ID, price uint64) []byte {
	t.Helper()
	g, err := ledger.LeaseGrant{Job: ledger.Hash(job), Requester: r.id(), Provider: provider, Price: price, Attempt: 1}.Sign("testnet", r.key)
	if err != nil {
		t.Fatal(err)
	}
	return g
}
