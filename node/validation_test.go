package node_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-msgio"

	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
	"github.com/mira-market/mira/testnet"
)

// rogueHost is a libp2p host that holds the testnet's swarm key and none
// of mira's checks: what every attacker in these tests starts from.
func rogueHost(t *testing.T, tn *testnet.Testnet) (crypto.PrivKey, host.Host) {
	t.Helper()
	psk, err := node.LoadSwarmKey(tn.Dir(0))
	if err != nil {
		t.Fatal(err)
	}
	key, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	h, err := libp2p.New(libp2p.Identity(key), libp2p.PrivateNetwork(psk), libp2p.DefaultPrivateTransports,
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return key, h
}

// rogue is a peer that holds the swarm key but speaks garbage: a raw
// libp2p host and gossipsub, none of mira's checks.
type rogue struct {
	key   crypto.PrivKey
	host  host.Host
	topic *pubsub.Topic
}

func newRogue(t *testing.T, tn *testnet.Testnet) *rogue {
	t.Helper()
	key, h := rogueHost(t, tn)
	ps, err := pubsub.NewGossipSub(context.Background(), h, pubsub.WithMessageSignaturePolicy(pubsub.StrictNoSign))
	if err != nil {
		t.Fatal(err)
	}
	for i := range tn.Len() {
		info, _ := peer.AddrInfoFromString(tn.Node(i).ListenAddrs()[0])
		if err := h.Connect(context.Background(), *info); err != nil {
			t.Fatal(err)
		}
	}
	topic, err := ps.Join(protocol.JobsTopic("testnet", protocol.TierBatch))
	if err != nil {
		t.Fatal(err)
	}
	if err := testnet.WaitFor(context.Background(), deadline, func() error {
		if n := len(topic.ListPeers()); n < tn.Len() {
			return fmt.Errorf("rogue sees %d topic peers", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return &rogue{key: key, host: h, topic: topic}
}

func offerFrom(requester peer.ID, deadline time.Time) *pb.MarketMessage {
	nonce := make([]byte, 16)
	rand.Read(nonce)
	return &pb.MarketMessage{Body: &pb.MarketMessage_Offer{Offer: &pb.Offer{
		Requester: []byte(requester), Network: "testnet", Nonce: nonce,
		CreatedUnixMs: time.Now().UnixMilli(), DeadlineUnixMs: deadline.UnixMilli(),
		Spec: &pb.JobSpec{Executor: "noop", Tier: protocol.TierBatch, MaxPrice: 1e6, MaxDurationMs: 1000, Resources: &pb.Resources{Gpus: 1}},
	}}}
}

// rogueNet starts three members (member 1 a provider) and a rogue peer
// beside them.
func rogueNet(t *testing.T) (*testnet.Testnet, *rogue) {
	t.Helper()
	tn := startTestnet(t, 3, testnet.WithProviders(1))
	if err := testnet.WaitFor(context.Background(), deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	return tn, newRogue(t, tn)
}

func TestBadMessagesNeverReachTheEngine(t *testing.T) {
	tn, r := rogueNet(t)
	provider := tn.Node(1)
	ctx := context.Background()
	future := time.Now().Add(time.Minute)

	// A forged offer: made by the rogue, naming node 2 as its requester.
	// The rogue key signs, so the envelope is sound but the author lies.
	forged, err := protocol.SealMarket(r.key, "testnet", future, offerFrom(tn.Node(2).ID(), future))
	if err != nil {
		t.Fatal(err)
	}
	// An offer with a broken signature.
	valid, _ := protocol.SealMarket(r.key, "testnet", future, offerFrom(r.host.ID(), future))
	broken := bytes.Clone(valid)
	broken[len(broken)-1] ^= 1
	// An expired offer, an oversized message and garbage.
	past := time.Now().Add(-time.Second)
	expired, _ := protocol.SealMarket(r.key, "testnet", past, offerFrom(r.host.ID(), past))
	oversized := append(bytes.Clone(valid), make([]byte, protocol.MaxMarketMessageSize)...)
	// A member's bid, which the rogue replays: on gossip, where bids never
	// go, and directly, from the wrong sender.
	memberKey, err := node.LoadIdentity(tn.Dir(2))
	if err != nil {
		t.Fatal(err)
	}
	stolen, _ := protocol.SealMarket(memberKey, "testnet", future, &pb.MarketMessage{Body: &pb.MarketMessage_Bid{Bid: &pb.Bid{
		JobId: make([]byte, 32), Provider: []byte(tn.Node(2).ID()), Price: 1,
	}}})
	// Gossip messages carry framed signed messages, several at a time. A
	// gossip message with one bad signed message is rejected whole, so the
	// valid offer beside the bid never reaches the engine either.
	frame := func(msgs ...[]byte) []byte {
		var b []byte
		for _, m := range msgs {
			b = protocol.AppendFrame(b, m)
		}
		return b
	}
	tooMany := bytes.Repeat(frame(valid), protocol.MaxGossipMarketSize/len(valid)+1)
	// A member's offer beside the rogue's: one gossip message, two signers.
	memberOffer, _ := protocol.SealMarket(memberKey, "testnet", future, offerFrom(tn.Node(2).ID(), future))
	// Each rejection costs the sender score, and past the graylist line a
	// peer's later messages are dropped before validation; so the gossip
	// comes from two rogues, neither rejected more than three times.
	second := newRogue(t, tn)
	for i, b := range [][]byte{frame(forged), frame(broken), frame(expired), tooMany, []byte("garbage"), frame(valid, stolen), frame(valid, memberOffer)} {
		from := r
		if i >= 4 {
			from = second
		}
		if err := from.topic.Publish(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	// The same bad messages straight to the provider, and the replayed bid.
	for _, b := range [][]byte{forged, broken, expired, oversized, []byte("garbage"), stolen} {
		// One stream each: an oversized frame ends its stream.
		st, err := r.host.NewStream(ctx, provider.ID(), libp2pproto.ID(protocol.MarketProtocol("testnet")))
		if err != nil {
			t.Fatal(err)
		}
		msgio.NewVarintWriter(st).WriteMsg(b)
		st.Close()
	}

	want := map[string]int{"wrong signer": 4, "bad signature": 2, "expired": 2, "oversized": 2, "malformed": 2, "not for gossip": 1}
	if err := testnet.WaitFor(ctx, deadline, func() error {
		_, rejected := provider.MarketStats()
		for reason, n := range want {
			if rejected[reason] < n {
				return fmt.Errorf("provider rejected %v, want at least %v", rejected, want)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	stepped, _ := provider.MarketStats()
	if len(stepped) != 0 {
		t.Fatalf("bad messages reached the provider's engine: %v", stepped)
	}
	// The members still work: a real job goes through.
	c := clientFor(t, tn, 2)
	j, err := c.SubmitJob(ctx, noopJob("batch", "0s", "1m"))
	if err != nil {
		t.Fatal(err)
	}
	waitJobs(t, c, []string{j.ID}, "succeeded", deadline)
}

// Signed offers already seen on gossip, packed again into a new gossip
// message, are ignored: a peer cannot make the network carry them twice.
func TestRepackedGossipIsIgnored(t *testing.T) {
	tn, r := rogueNet(t)
	provider := tn.Node(1)
	ctx := context.Background()
	future := time.Now().Add(time.Minute)
	offer, err := protocol.SealMarket(r.key, "testnet", future, offerFrom(r.host.ID(), future))
	if err != nil {
		t.Fatal(err)
	}
	once := protocol.AppendFrame(nil, offer)
	if err := r.topic.Publish(ctx, once); err != nil {
		t.Fatal(err)
	}
	offers := func() int { stepped, _ := provider.MarketStats(); return stepped["offer"] }
	if err := testnet.WaitFor(ctx, deadline, func() error {
		if n := offers(); n != 1 {
			return fmt.Errorf("provider stepped %d offers", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := r.topic.Publish(ctx, protocol.AppendFrame(once, offer)); err != nil {
		t.Fatal(err)
	}
	if err := testnet.WaitFor(ctx, deadline, func() error {
		if _, rejected := provider.MarketStats(); rejected["repacked"] < 1 {
			return fmt.Errorf("provider rejected %v", rejected)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n := offers(); n != 1 {
		t.Fatalf("the repacked offer reached the engine: %d offers stepped", n)
	}
}
