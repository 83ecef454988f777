package node_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"

	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
	"github.com/mira-market/mira/storage"
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
	prev storage.Hash
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
func (c *ledgerChain) next(body storage.Body) []byte {
	c.t.Helper()
	e := storage.Entry{Account: c.id, Seq: c.seq + 1, Prev: c.prev, Time: time.Now(), Body: body}
	if err := e.Sign("testnet", c.key); err != nil {
		c.t.Fatal(err)
	}
	raw := e.Encode()
	c.seq, c.prev = e.Seq, e.Hash()
	return raw
}

// forged signs an entry at seq whose prev hash is no entry's.
func (c *ledgerChain) forged(seq uint64, body storage.Body) []byte {
	c.t.Helper()
	e := storage.Entry{Account: c.id, Seq: seq, Prev: storage.Hash{0xba, 0xd}, Time: time.Now(), Body: body}
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
		Grants: []storage.GenesisGrant{{Peer: rid, Amount: testnet.DefaultCredits}}})
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
	grant := ledger.next(storage.GrantBody{Amount: testnet.DefaultCredits})
	hold := ledger.next(storage.HoldBody{Job: storage.Hash(id), Provider: provider.ID(), Amount: 1e6})

	// award offers the job in round, takes the provider's bid, awards it
	// with the hold, and returns the provider's result of that attempt.
	award := func(round uint32, chain [][]byte) *pb.Result {
		t.Helper()
		before := len(r.received(id))
		m.Round = round
		offer := r.sign(m)
		r.stream(provider.ID(), 1, func(int) []byte { return offer })
		bid := waitReplies(t, r, id, before+1)[before].Msg.GetBid()
		if bid == nil {
			t.Fatalf("round %d: the provider did not bid", round)
		}
		a := r.sign(&pb.MarketMessage{Body: &pb.MarketMessage_Award{Award: &pb.Award{
			JobId: id[:], Provider: []byte(provider.ID()), Price: bid.Price, Attempt: round, Hold: hold, Chain: chain,
		}}})
		r.stream(provider.ID(), 1, func(int) []byte { return a })
		var res *pb.Result
		err := testnet.WaitFor(context.Background(), deadline, func() error {
			for _, s := range r.received(id) {
				if got := s.Msg.GetResult(); got != nil && got.Attempt == round {
					res = got
					return nil
				}
			}
			return fmt.Errorf("no result of attempt %d", round)
		})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	if res := award(1, [][]byte{grant}); res.ExitCode != 0 || res.Error != "" {
		t.Fatalf("the first award, which the hold backs: exit %d, %q", res.ExitCode, res.Error)
	}
	leases := func() uint64 {
		n, _, err := provider.Ledger().Leases(provider.ID(), storage.Hash(id))
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
	if res.ExitCode == 0 || !strings.Contains(res.Error, "escrow hold backs no further run") {
		t.Fatalf("award 2 on the hold that backed award 1: exit %d, error %q; want the run refused", res.ExitCode, res.Error)
	}
	if n := leases(); n != 1 {
		t.Fatalf("%d leases recorded after the refused award", n)
	}
}
