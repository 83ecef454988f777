package market

import (
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

var t0 = time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)

func capRec(id string, seq uint64, price uint64, expires time.Time, gpus ...protocol.GPU) *protocol.Capacity {
	return &protocol.Capacity{Provider: peer.ID(id), Seq: seq, PriceBatch: price, Expires: expires, GPUs: gpus}
}

func TestFits(t *testing.T) {
	h100x2 := capRec("a", 1, 1, t0, protocol.GPU{Model: "nvidia-h100", VRAMMiB: 81559, Count: 2})
	rtx := capRec("b", 1, 1, t0, protocol.GPU{Model: "nvidia-rtx-4090", VRAMMiB: 24564, Count: 1})
	none := capRec("c", 1, 1, t0)
	for _, tc := range []struct {
		name string
		c    *protocol.Capacity
		r    Requirements
		want bool
	}{
		{"any model", rtx, Requirements{GPUModel: AnyGPU, GPUs: 1}, true},
		{"empty model is any", h100x2, Requirements{GPUs: 2}, true},
		{"model matches", h100x2, Requirements{GPUModel: "nvidia-h100", GPUs: 2}, true},
		{"too few", h100x2, Requirements{GPUModel: "nvidia-h100", GPUs: 3}, false},
		{"other model", rtx, Requirements{GPUModel: "nvidia-h100", GPUs: 1}, false},
		{"vram enough", rtx, Requirements{GPUs: 1, MinVRAMMiB: 24000}, true},
		{"vram short", rtx, Requirements{GPUs: 1, MinVRAMMiB: 40000}, false},
		{"cpu job on a GPU-less provider", none, Requirements{}, true},
		{"GPU job on a GPU-less provider", none, Requirements{GPUs: 1}, false},
		{"vram asked but no GPU count", none, Requirements{MinVRAMMiB: 1}, false},
	} {
		if got := Fits(tc.c, tc.r); got != tc.want {
			t.Errorf("%s: Fits = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestProviderCache(t *testing.T) {
	pc := NewProviderCache()
	h := protocol.GPU{Model: "nvidia-h100", VRAMMiB: 80000, Count: 1}
	r := protocol.GPU{Model: "nvidia-rtx-4090", VRAMMiB: 24000, Count: 1}
	if !pc.Add(capRec("a", 2, 30, t0.Add(time.Minute), h), t0) {
		t.Fatal("fresh record not kept")
	}
	if pc.Add(capRec("a", 1, 10, t0.Add(time.Hour), h), t0) {
		t.Fatal("older seq replaced a newer record")
	}
	if pc.Add(capRec("x", 9, 10, t0, h), t0) {
		t.Fatal("expired record kept")
	}
	pc.Add(capRec("b", 1, 20, t0.Add(2*time.Minute), r), t0)
	pc.Add(capRec("c", 1, 20, t0.Add(2*time.Minute), h), t0)

	got := pc.Find(Requirements{GPUModel: AnyGPU, GPUs: 1}, t0)
	if len(got) != 3 || got[0].Provider != "b" || got[1].Provider != "c" || got[2].Provider != "a" {
		t.Fatalf("Find any = %v", ids(got))
	}
	if got := pc.Find(Requirements{GPUModel: "nvidia-h100", GPUs: 1}, t0); len(got) != 2 {
		t.Fatalf("Find h100 = %v", ids(got))
	}
	// After a's expiry it is gone, and dropped from the cache.
	if got := pc.Find(Requirements{GPUModel: "nvidia-h100", GPUs: 1}, t0.Add(90*time.Second)); len(got) != 1 || got[0].Provider != "c" {
		t.Fatalf("Find after expiry = %v", ids(got))
	}
	if pc.Len() != 2 {
		t.Fatalf("cache holds %d records after expiry, want 2", pc.Len())
	}
	if _, ok := pc.Get("a", t0.Add(90*time.Second)); ok {
		t.Fatal("Get returned an expired record")
	}
}

func ids(cs []*protocol.Capacity) []peer.ID {
	var out []peer.ID
	for _, c := range cs {
		out = append(out, c.Provider)
	}
	return out
}

func TestRankCandidates(t *testing.T) {
	rec := func(id string, price uint64, executors ...string) *protocol.Capacity {
		return &protocol.Capacity{Provider: peer.ID(id), PriceInteractive: price, Executors: executors}
	}
	rtt := map[peer.ID]time.Duration{"near": time.Millisecond, "far": 50 * time.Millisecond}
	spec := &pb.JobSpec{Executor: "wasm", MaxPrice: 20}
	for _, tc := range []struct {
		name string
		recs []*protocol.Capacity
		want []peer.ID
	}{
		{"none found", nil, []peer.ID{}},
		{"cheapest first", []*protocol.Capacity{rec("b", 15, "wasm"), rec("a", 5, "wasm")}, []peer.ID{"a", "b"}},
		{"on a tie, the nearest", []*protocol.Capacity{rec("far", 5, "wasm"), rec("near", 5, "wasm")}, []peer.ID{"near", "far"}},
		{"on a tie of both, the lookup's order", []*protocol.Capacity{rec("y", 5, "wasm"), rec("x", 5, "wasm")}, []peer.ID{"y", "x"}},
		{"not over the max price", []*protocol.Capacity{rec("dear", 21, "wasm"), rec("ok", 20, "wasm")}, []peer.ID{"ok"}},
		{"only the spec's executor", []*protocol.Capacity{rec("docker", 1, "docker"), rec("both", 2, "docker", "wasm")}, []peer.ID{"both"}},
		{"never itself", []*protocol.Capacity{rec("self", 1, "wasm"), rec("other", 2, "wasm")}, []peer.ID{"other"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := RankCandidates("self", spec, tc.recs, func(p peer.ID) time.Duration { return rtt[p] })
			if !slices.Equal(got, tc.want) {
				t.Fatalf("ranked %v, want %v", got, tc.want)
			}
		})
	}
}
