package node_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"

	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/testnet"
)

// limitedNet is rogueNet with the members' [limits] set by limit.
func limitedNet(t *testing.T, limit func(*node.LimitsConfig)) (*testnet.Testnet, *rogue) {
	t.Helper()
	providers := testnet.WithProviders(1)
	tn := startTestnet(t, 3, func(i int, cfg *node.Config) {
		providers(i, cfg)
		limit(&cfg.Limits)
	})
	if err := testnet.WaitFor(context.Background(), deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	return tn, newRogue(t, tn)
}

// A peer that sends market messages faster than its rate has the excess
// dropped before any is verified, directly and on gossip, and counted.
func TestMarketFloodIsRateLimited(t *testing.T) {
	const (
		burst = 100
		sent  = 3000
	)
	tn, g := limitedNet(t, func(l *node.LimitsConfig) {
		l.MarketMessagesPerSecond, l.MarketMessageBurst = 1, burst
		l.GossipMessagesPerSecond, l.GossipMessageBurst = 1, protocol.MaxGossipMarketMessages
	})
	provider := tn.Node(1)
	ctx := context.Background()
	start := time.Now()

	// Direct: offers over the market stream.
	r := newMarketRogue(t, tn)
	r.stream(provider.ID(), sent, func(int) []byte { return r.sign(offerFrom(r.id(), time.Now().Add(time.Minute))) })
	// Gossip: ten gossip messages of 128 offers each on the batch topic.
	gossiped := 0
	for range 10 {
		var packed []byte
		for range protocol.MaxGossipMarketMessages {
			m, err := protocol.SealMarket(g.key, "testnet", time.Now().Add(time.Minute), offerFrom(g.host.ID(), time.Now().Add(time.Minute)))
			if err != nil {
				t.Fatal(err)
			}
			packed = protocol.AppendFrame(packed, m)
			gossiped++
		}
		if err := g.topic.Publish(ctx, packed); err != nil {
			t.Fatal(err)
		}
	}
	if err := testnet.WaitFor(ctx, deadline, func() error {
		stepped, _ := provider.MarketStats()
		limited := provider.PeerLimited()
		if n := stepped["offer"] + limited["market"] + limited["gossip"]; n < sent+gossiped {
			return fmt.Errorf("%d of %d offers handled (stepped %v, limited %v)", n, sent+gossiped, stepped, limited)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// What got through is at most the direct burst, a gossip burst from
	// each member (each lets one of the rogue's gossip messages through
	// and relays it to the provider) and a token a second.
	stepped, _ := provider.MarketStats()
	allowed := burst + tn.Len()*protocol.MaxGossipMarketMessages + 2*int(time.Since(start).Seconds()+1)
	t.Logf("stepped %d offers, limited %v", stepped["offer"], provider.PeerLimited())
	if stepped["offer"] > allowed || provider.PeerLimited()["market"] < sent-burst-int(time.Since(start).Seconds()+1) {
		t.Fatalf("%d offers reached the engine, at most %d allowed; limited %v", stepped["offer"], allowed, provider.PeerLimited())
	}
	// Another peer is not held back by the flooder: a member's job runs.
	c := clientFor(t, tn, 2)
	j, err := c.SubmitJob(ctx, noopJob("batch", "0s", "1m"))
	if err != nil {
		t.Fatal(err)
	}
	waitJobs(t, c, []string{j.ID}, "succeeded", deadline)
}

// A peer may hold only so many blob, log or sync streams open on a node at
// once; one more is reset and counted.
func TestStreamsPerPeerAreLimited(t *testing.T) {
	const open = 3
	tn, _ := limitedNet(t, func(l *node.LimitsConfig) {
		l.BlobStreamsPerPeer, l.LogStreamsPerPeer, l.SyncStreamsPerPeer = open, open, open
	})
	target := tn.Node(0)
	r := newMarketRogue(t, tn)
	// Each stream starts a request and stops halfway, so its handler
	// waits for the rest and holds the stream open.
	frameStart := binary.AppendUvarint(nil, 40)
	for _, tc := range []struct {
		what  string
		proto string
		start []byte
	}{
		{"blob", protocol.BlobProtocol("testnet"), frameStart},
		{"logs", protocol.LogsProtocol("testnet"), frameStart},
		{"sync", protocol.Prefix("testnet") + "/reconcile/1", []byte{1}}, // a chain request, without its account
	} {
		t.Run(tc.what, func(t *testing.T) {
			for i := range open + 2 {
				st, err := r.host.NewStream(context.Background(), target.ID(), libp2pproto.ID(tc.proto))
				if err != nil {
					t.Fatal(err)
				}
				defer st.Reset()
				if _, err := st.Write(tc.start); err != nil {
					t.Fatalf("stream %d: %v", i, err)
				}
			}
			if err := testnet.WaitFor(context.Background(), deadline, func() error {
				if n := target.PeerLimited()[tc.what]; n != 2 {
					return fmt.Errorf("%d %s streams refused, want 2", n, tc.what)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		})
	}
}
