package node

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node/gpu"
	"github.com/mira-market/mira/protocol"
)

// capacity is the node's provider side (its own announcement) and
// requester side (a cache of others' announcements).
type capacity struct {
	mu        sync.Mutex
	gpus      []gpu.Device
	freeSlots int
	seq       uint64
	own       *protocol.Capacity // last announced
	cache     *market.ProviderCache
	changed   chan struct{}
	// refreshing is set while a background lookup runs (see candidates);
	// lastRefresh is when the last one started, in Unix nanoseconds.
	refreshing  atomic.Bool
	lastRefresh atomic.Int64
}

// cacheRefreshEvery spaces background lookups: each one queries the DHT
// for every provider's record, which costs the whole network CPU, while
// records change only when providers re-announce.
const cacheRefreshEvery = 5 * time.Second

// microCredits converts a price in credits to the wire's integer unit.
func microCredits(credits float64) uint64 { return uint64(math.Round(credits * 1e6)) }

// IsProvider reports whether the node sells capacity: it has GPUs and slots.
func (n *Node) IsProvider() bool {
	return n.cfg.Provider.Slots > 0 && len(n.capacity.gpus) > 0
}

// GPUs are the node's detected and declared GPUs.
func (n *Node) GPUs() []gpu.Device { return n.capacity.gpus }

// SetFreeSlots changes the free capacity the node announces and re-announces
// at once.
func (n *Node) SetFreeSlots(free int) {
	c := &n.capacity
	c.mu.Lock()
	c.freeSlots = free
	c.mu.Unlock()
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

// capacityRecord builds the next announcement. Seq is the wall clock in
// nanoseconds (or one more than the last), so it keeps growing across
// restarts without being stored.
func (n *Node) capacityRecord(now time.Time) *protocol.Capacity {
	c := &n.capacity
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq = max(c.seq+1, uint64(now.UnixNano()))
	rec := &protocol.Capacity{
		Provider:         n.host.ID(),
		Network:          n.cfg.Network,
		CPUCores:         runtime.NumCPU(),
		MemoryMiB:        totalMemoryMiB(),
		FreeSlots:        c.freeSlots,
		Executors:        n.cfg.Provider.Executors,
		PriceInteractive: microCredits(n.cfg.Provider.PriceInteractive),
		PriceBatch:       microCredits(n.cfg.Provider.PriceBatch),
		Seq:              c.seq,
		Expires:          now.Add(time.Duration(n.cfg.Provider.CapacityTTL)),
	}
	for _, g := range c.gpus {
		rec.GPUs = append(rec.GPUs, protocol.GPU{Model: g.Model, VRAMMiB: g.VRAMMiB, Count: g.Count, UUID: g.UUID, Detected: g.Source == gpu.SourceDetected})
	}
	return rec
}

// announceLoop publishes the capacity record into the DHT, and the
// provider records that point to it, at half the TTL and whenever free
// capacity changes; failures (such as an empty routing table right after
// start) are retried with backoff.
func (n *Node) announceLoop(ctx context.Context) {
	defer n.wg.Done()
	ttl := time.Duration(n.cfg.Provider.CapacityTTL)
	retry := 100 * time.Millisecond
	for {
		wait := ttl / 2
		last := time.Now()
		if err := n.announce(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			n.log.Debug("capacity announcement failed; retrying", "err", err, "in", retry)
			wait = min(retry, ttl/4)
			retry = min(retry*2, 10*time.Second)
		} else {
			retry = 100 * time.Millisecond
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-n.capacity.changed:
			t.Stop()
			// Slot counts change with every lease; announce them at most
			// every announceGap (they are hints: a full provider declines).
			select {
			case <-ctx.Done():
				return
			case <-time.After(announceGap - time.Since(last)):
			}
		}
	}
}

// announceGap is the least time between announcements prompted by a
// change of free slots: each one is a DHT put that every receiving peer
// validates.
const announceGap = 2 * time.Second

func (n *Node) announce(ctx context.Context) error {
	rec := n.capacityRecord(time.Now())
	b, err := protocol.SignCapacity(n.priv, rec)
	if err != nil {
		return err
	}
	if err := n.dht.PutValue(ctx, protocol.CapacityKey(rec.Provider), b); err != nil {
		return fmt.Errorf("put capacity record: %w", err)
	}
	n.capacity.mu.Lock()
	n.capacity.own = rec
	n.capacity.mu.Unlock()
	for _, k := range rec.ContentKeys() {
		if err := n.dht.Provide(ctx, protocol.ContentKeyCID(n.cfg.Network, k), true); err != nil {
			return fmt.Errorf("provide %s: %w", k, err)
		}
	}
	n.log.Debug("capacity announced", "seq", rec.Seq, "free_slots", rec.FreeSlots, "expires", rec.Expires)
	return nil
}

// FindProviders looks up the providers that fit r: provider records in the
// DHT name the candidates, their capacity records are fetched and checked
// (signature, expiry) and merged into the local cache, and the cache answers
// with every unexpired fitting record. A candidate whose record cannot be
// fetched still counts if the cache holds a valid one.
func (n *Node) FindProviders(ctx context.Context, r market.Requirements) ([]*protocol.Capacity, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	key := protocol.ContentKeyCID(n.cfg.Network, r.ContentKey())
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	seen := map[peer.ID]bool{}
	for info := range n.dht.FindProvidersAsync(ctx, key, 0) {
		if seen[info.ID] {
			continue
		}
		seen[info.ID] = true
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			n.fetchCapacity(ctx, info.ID)
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c := &n.capacity
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cache.Find(r, time.Now()), nil
}

// candidates answers from the cache of announcements when it holds fitting
// providers, so an interactive submit does not wait for a DHT lookup, and
// refreshes the cache in the background (at most every cacheRefreshEvery);
// with nothing cached it looks up the DHT at once. Stale free-slot counts
// cost little: a full provider declines, and the offer is gossiped to
// everyone as well.
func (n *Node) candidates(ctx context.Context, r market.Requirements) ([]*protocol.Capacity, error) {
	c := &n.capacity
	c.mu.Lock()
	cached := c.cache.Find(r, time.Now())
	c.mu.Unlock()
	if len(cached) == 0 {
		return n.FindProviders(ctx, r)
	}
	now := time.Now()
	if n.runCtx.Err() == nil && now.UnixNano()-c.lastRefresh.Load() >= int64(cacheRefreshEvery) && c.refreshing.CompareAndSwap(false, true) {
		c.lastRefresh.Store(now.UnixNano())
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			defer c.refreshing.Store(false)
			rctx, cancel := context.WithTimeout(n.runCtx, 10*time.Second)
			defer cancel()
			n.FindProviders(rctx, market.Requirements{GPUModel: market.AnyGPU})
		}()
	}
	return cached, nil
}

func (n *Node) fetchCapacity(ctx context.Context, p peer.ID) {
	b, err := n.dht.GetValue(ctx, protocol.CapacityKey(p), dht.Quorum(2))
	if err != nil {
		n.log.Debug("no capacity record", "peer", p, "err", err)
		return
	}
	v := protocol.CapacityValidator{Network: n.cfg.Network}
	if err := v.Validate(protocol.CapacityKey(p), b); err != nil {
		n.log.Debug("invalid capacity record", "peer", p, "err", err)
		return
	}
	rec, err := protocol.OpenCapacity(b)
	if err != nil {
		return
	}
	n.capacity.mu.Lock()
	n.capacity.cache.Add(rec, time.Now())
	n.capacity.mu.Unlock()
}
