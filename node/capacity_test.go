package node_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/node/gpu"
	"github.com/mira-market/mira/testnet"
)

// providerGPUs declares the GPUs of the testnet's providers, by member index.
var providerGPUs = map[int]gpu.Declared{
	1: {Model: "NVIDIA H100 80GB HBM3", VRAMMiB: 81559, Count: 2},
	2: {Model: "NVIDIA GeForce RTX 4090", VRAMMiB: 24564, Count: 1},
	3: {Model: "NVIDIA A100-SXM4-40GB", VRAMMiB: 40960, Count: 4},
}

func declareProviders(ttl time.Duration) func(int, *node.Config) {
	return func(i int, cfg *node.Config) {
		cfg.Provider.CapacityTTL = node.Duration(ttl)
		if g, ok := providerGPUs[i]; ok {
			cfg.GPUs = []gpu.Declared{g}
		}
	}
}

// queryUntil polls GET /v1/providers until it returns exactly want.
func queryUntil(t *testing.T, c *api.Client, q api.ProviderQuery, want []string) []api.ProviderInfo {
	t.Helper()
	slices.Sort(want)
	var last []api.ProviderInfo
	err := testnet.WaitFor(context.Background(), deadline, func() error {
		got, err := c.Providers(context.Background(), q)
		if err != nil {
			return err
		}
		last = got
		ids := []string{}
		for _, p := range got {
			ids = append(ids, p.PeerID)
		}
		slices.Sort(ids)
		if !slices.Equal(ids, want) {
			return fmt.Errorf("query %+v found %v, want %v", q, ids, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return last
}

func TestFindProvidersThroughDHT(t *testing.T) {
	tn := startTestnet(t, 8, declareProviders(time.Minute))
	ctx := context.Background()
	if err := testnet.WaitFor(ctx, deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	// Member 7 asks, and never talks to a provider directly: it must learn
	// of them from the DHT records other members hold.
	asker := tn.Node(7)
	for i := range providerGPUs {
		asker.BlockPeer(tn.Node(i).ID())
	}
	id := func(i int) string { return tn.Node(i).ID().String() }
	c, err := api.NewClientFromDataDir(tn.Dir(7))
	if err != nil {
		t.Fatal(err)
	}

	all := queryUntil(t, c, api.ProviderQuery{GPU: "any", Count: 1}, []string{id(1), id(2), id(3)})
	for _, p := range all {
		if p.FreeSlots < 1 || len(p.GPUs) != 1 || p.GPUs[0].Source != gpu.SourceDeclared || p.Prices["batch"] == 0 {
			t.Fatalf("provider entry %+v", p)
		}
	}
	queryUntil(t, c, api.ProviderQuery{GPU: "nvidia-h100", Count: 2}, []string{id(1)})
	queryUntil(t, c, api.ProviderQuery{GPU: "NVIDIA GeForce RTX 4090"}, []string{id(2)})
	queryUntil(t, c, api.ProviderQuery{GPU: "any", Count: 1, VRAMMiB: 30000}, []string{id(1), id(3)})
	queryUntil(t, c, api.ProviderQuery{GPU: "nvidia-a100", Count: 8}, []string{})
	// Every GPU here is declared: visible as such above, and none counts
	// for a requester that wants detected ones.
	queryUntil(t, c, api.ProviderQuery{GPU: "any", Count: 1, Source: gpu.SourceDetected}, []string{})

	for i := range providerGPUs {
		for _, p := range asker.ConnectedPeers() {
			if p == tn.Node(i).ID() {
				t.Fatalf("asker is directly connected to provider %d", i)
			}
		}
	}

	// GET /v1/node shows a provider's own GPUs.
	pc, err := api.NewClientFromDataDir(tn.Dir(1))
	if err != nil {
		t.Fatal(err)
	}
	info, err := pc.Node(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Provider || len(info.GPUs) != 1 || info.GPUs[0].Model != "nvidia-h100" || info.GPUs[0].Count != 2 {
		t.Fatalf("provider's /v1/node = %+v", info)
	}
}

func TestStoppedProviderExpires(t *testing.T) {
	const ttl = 3 * time.Second
	tn := startTestnet(t, 4, declareProviders(ttl))
	ctx := context.Background()
	if err := testnet.WaitFor(ctx, deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	c, err := api.NewClientFromDataDir(tn.Dir(0))
	if err != nil {
		t.Fatal(err)
	}
	id := func(i int) string { return tn.Node(i).ID().String() }
	queryUntil(t, c, api.ProviderQuery{GPU: "any"}, []string{id(1), id(2), id(3)})

	before := queryUntil(t, c, api.ProviderQuery{GPU: "any"}, []string{id(1), id(2), id(3)})
	stopped := id(2)
	if err := tn.Stop(2); err != nil {
		t.Fatal(err)
	}
	// Its last announcement, made before now, lapses by gone at the latest.
	gone := time.Now().Add(ttl)
	queryUntil(t, c, api.ProviderQuery{GPU: "any"}, []string{id(1), id(3)})

	// The live providers stay listed across their own re-announcements
	// (a later expires_at), while the stopped one stays gone.
	deadlines := map[string]time.Time{}
	for _, p := range before {
		deadlines[p.PeerID] = p.ExpiresAt
	}
	if err := testnet.WaitFor(ctx, deadline, func() error {
		asked := time.Now()
		got, err := c.Providers(ctx, api.ProviderQuery{GPU: "any"})
		if err != nil {
			return err
		}
		for _, p := range got {
			// A peer the query asked may still hold an announcement that
			// was in flight at the stop, valid until gone; nothing later.
			if p.PeerID == stopped && (p.ExpiresAt.After(gone) || asked.After(gone)) {
				t.Fatalf("the stopped provider is listed again: %+v", p)
			}
		}
		// A live provider can drop out for a moment when a loaded
		// machine delays its re-announcement past the short test TTL;
		// what must hold is that both come back and 2 stays gone.
		if len(got) != 2 {
			return fmt.Errorf("%d providers listed, want the 2 live ones", len(got))
		}
		for _, p := range got {
			if !p.ExpiresAt.After(deadlines[p.PeerID].Add(ttl)) {
				return fmt.Errorf("provider %s has not re-announced twice yet", p.PeerID)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
