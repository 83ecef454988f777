package market

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// AnyGPU in Requirements.GPUModel accepts every model.
const AnyGPU = "any"

// Requirements describe the resources a job needs from one provider.
type Requirements struct {
	// GPUModel is a normalised model key ("nvidia-h100") or AnyGPU.
	GPUModel string
	// GPUs is how many GPUs of that model the job needs; 0 means none.
	GPUs int
	// MinVRAMMiB is the least memory each of those GPUs must have.
	MinVRAMMiB int
	// DetectedOnly counts only GPUs the provider's node detected, not
	// those its operator declared (the job's gpu_source "detected").
	DetectedOnly bool
}

// SpecRequirements are what a job of spec s needs of one provider.
func SpecRequirements(s *pb.JobSpec) Requirements {
	var r Requirements
	if res := s.GetResources(); res != nil {
		r = Requirements{GPUModel: res.GpuModel, GPUs: int(res.Gpus), MinVRAMMiB: int(res.VramMib)}
	}
	r.DetectedOnly = s.GetGpuSource() == protocol.GPUSourceDetected
	return r
}

// Validate reports requirements that cannot make sense.
func (r Requirements) Validate() error {
	if r.GPUs < 0 || r.GPUs > 64 {
		return fmt.Errorf("gpus: %d out of range 0..64", r.GPUs)
	}
	if r.MinVRAMMiB < 0 {
		return fmt.Errorf("vram_mib: %d is negative", r.MinVRAMMiB)
	}
	return nil
}

// ContentKey is the DHT content key whose providers are the candidates.
func (r Requirements) ContentKey() string {
	if r.GPUModel == "" || r.GPUModel == AnyGPU {
		return "gpu/" + AnyGPU
	}
	return "gpu/" + r.GPUModel
}

// Fits reports whether a provider's capacity meets the requirements: it has
// at least r.GPUs GPUs of the model, each with at least r.MinVRAMMiB, and
// detected where r.DetectedOnly.
func Fits(c *protocol.Capacity, r Requirements) bool {
	n := 0
	for _, g := range c.GPUs {
		if r.GPUModel != "" && r.GPUModel != AnyGPU && g.Model != r.GPUModel {
			continue
		}
		if g.VRAMMiB < r.MinVRAMMiB || r.DetectedOnly && !g.Detected {
			continue
		}
		n += g.Count
	}
	if r.GPUs == 0 {
		return n > 0 || r.MinVRAMMiB == 0
	}
	return n >= r.GPUs
}

// ProviderCache holds the newest valid capacity record of each provider
// seen, so lookups can merge what the DHT returns now with what it returned
// before. It is not safe for concurrent use.
type ProviderCache struct {
	records map[peer.ID]*protocol.Capacity
}

// NewProviderCache returns an empty cache.
func NewProviderCache() *ProviderCache {
	return &ProviderCache{records: map[peer.ID]*protocol.Capacity{}}
}

// Add keeps c if it is newer (higher seq) than the cached record of its
// provider and not expired at now. It reports whether c was kept.
func (pc *ProviderCache) Add(c *protocol.Capacity, now time.Time) bool {
	if !c.Expires.After(now) {
		return false
	}
	if old, ok := pc.records[c.Provider]; ok && old.Seq >= c.Seq {
		return false
	}
	pc.records[c.Provider] = c
	return true
}

// Get returns the cached record of p if it has not expired at now.
func (pc *ProviderCache) Get(p peer.ID, now time.Time) (*protocol.Capacity, bool) {
	c, ok := pc.records[p]
	if !ok || !c.Expires.After(now) {
		return nil, false
	}
	return c, true
}

// Find returns the unexpired records that fit r, cheapest first for the
// batch tier (then by provider ID, so the order is stable). It drops expired
// records from the cache.
func (pc *ProviderCache) Find(r Requirements, now time.Time) []*protocol.Capacity {
	var out []*protocol.Capacity
	for p, c := range pc.records {
		if !c.Expires.After(now) {
			delete(pc.records, p)
			continue
		}
		if Fits(c, r) {
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b *protocol.Capacity) int {
		return cmp.Or(cmp.Compare(a.PriceBatch, b.PriceBatch), cmp.Compare(a.Provider, b.Provider))
	})
	return out
}

// Len is the number of cached records, expired ones included until the
// next Find.
func (pc *ProviderCache) Len() int { return len(pc.records) }

// RankCandidates picks, from the capacity records a lookup found, the
// providers an interactive offer of spec goes to directly, best first:
// not self, asking at most the spec's max price for interactive work, and
// allowing its executor; the cheapest first, then the nearest by rtt (the
// measured round-trip time), then in the lookup's order.
func RankCandidates(self peer.ID, spec *pb.JobSpec, recs []*protocol.Capacity, rtt func(peer.ID) time.Duration) []peer.ID {
	recs = slices.DeleteFunc(slices.Clone(recs), func(c *protocol.Capacity) bool {
		return c.Provider == self || c.PriceInteractive > spec.GetMaxPrice() || !slices.Contains(c.Executors, spec.GetExecutor())
	})
	slices.SortStableFunc(recs, func(a, b *protocol.Capacity) int {
		return cmp.Or(cmp.Compare(a.PriceInteractive, b.PriceInteractive), cmp.Compare(rtt(a.Provider), rtt(b.Provider)))
	})
	out := make([]peer.ID, 0, len(recs))
	for _, c := range recs {
		out = append(out, c.Provider)
	}
	return out
}
