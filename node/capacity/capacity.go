// Package capacity is the node's part in provider discovery: as a
// provider it announces its capacity record in the DHT (at half its TTL
// and when its free slots change); as a requester it finds providers
// through the DHT and keeps a cache of their announcements.
package capacity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/go-cid"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/routing"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node/clock"
	"github.com/mira-market/mira/node/gpu"
	"github.com/mira-market/mira/protocol"
)

// cacheRefreshEvery spaces background lookups: each one queries the DHT
// for every provider's record, which costs the whole network CPU, while
// records change only when providers re-announce.
const cacheRefreshEvery = 5 * time.Second

// announceGap is the least time between announcements prompted by a
// change of free slots: each one is a DHT put that every receiving peer
// validates.
const announceGap = 2 * time.Second

var errNotStarted = errors.New("capacity: the DHT is not up yet")

// MicroCredits converts a price in credits to the wire's integer unit.
func MicroCredits(credits float64) uint64 { return uint64(math.Round(credits * 1e6)) }

// Routing is what the service asks of the DHT.
type Routing interface {
	PutValue(ctx context.Context, key string, value []byte, opts ...routing.Option) error
	GetValue(ctx context.Context, key string, opts ...routing.Option) ([]byte, error)
	Provide(ctx context.Context, key cid.Cid, announce bool) error
	FindProvidersAsync(ctx context.Context, key cid.Cid, count int) <-chan peer.AddrInfo
}

// Config is what the service needs.
type Config struct {
	Priv             crypto.PrivKey // signs the node's records
	Network          string
	GPUs             []gpu.Device // detected and declared
	Slots            int          // leases at once; 0: not a provider
	Executors        []string
	PriceInteractive float64 // credits per GPU-second
	PriceBatch       float64
	TTL              time.Duration // a capacity record's lifetime
	MemoryMiB        int64         // the machine's memory; 0 when unknown
	Log              *slog.Logger
	Clock            clock.Clock // the system clock if nil
}

// Service announces the node's capacity and finds others'.
type Service struct {
	cfg   Config
	self  peer.ID
	clock clock.Clock
	log   *slog.Logger

	// Set by Start.
	ctx     context.Context
	routing Routing
	wg      sync.WaitGroup

	mu        sync.Mutex
	freeSlots int
	seq       uint64
	own       *protocol.Capacity // last announced
	cache     *market.ProviderCache
	changed   chan struct{}
	// refreshing is set while a background lookup runs (see Candidates);
	// lastRefresh is when the last one started, in Unix nanoseconds.
	refreshing  atomic.Bool
	lastRefresh atomic.Int64
}

// New returns the service, with all slots free; it announces and looks
// up once Start gives it the DHT.
func New(cfg Config) (*Service, error) {
	self, err := peer.IDFromPrivateKey(cfg.Priv)
	if err != nil {
		return nil, err
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.System
	}
	return &Service{
		cfg: cfg, self: self, clock: cfg.Clock, log: cfg.Log,
		freeSlots: cfg.Slots, cache: market.NewProviderCache(), changed: make(chan struct{}, 1),
	}, nil
}

// Start hands the service the DHT, and a provider starts announcing. ctx
// is the service's lifetime; Close waits for its goroutines.
func (s *Service) Start(ctx context.Context, r Routing) {
	s.ctx, s.routing = ctx, r
	if s.IsProvider() {
		s.wg.Go(func() { s.announceLoop(ctx) })
	}
}

// Close waits for the service's goroutines, which end with Start's
// context.
func (s *Service) Close() { s.wg.Wait() }

// IsProvider reports whether the node sells capacity: it has GPUs and slots.
func (s *Service) IsProvider() bool { return s.cfg.Slots > 0 && len(s.cfg.GPUs) > 0 }

// GPUs are the node's detected and declared GPUs.
func (s *Service) GPUs() []gpu.Device { return s.cfg.GPUs }

// SetFreeSlots changes the free capacity the node announces and
// re-announces at once.
func (s *Service) SetFreeSlots(free int) {
	s.mu.Lock()
	s.freeSlots = free
	s.mu.Unlock()
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// record builds the next announcement. Seq is the wall clock in
// nanoseconds (or one more than the last), so it keeps growing across
// restarts without being stored.
func (s *Service) record(now time.Time) *protocol.Capacity {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq = max(s.seq+1, uint64(now.UnixNano()))
	rec := &protocol.Capacity{
		Provider:         s.self,
		Network:          s.cfg.Network,
		CPUCores:         runtime.NumCPU(),
		MemoryMiB:        s.cfg.MemoryMiB,
		FreeSlots:        s.freeSlots,
		Executors:        s.cfg.Executors,
		PriceInteractive: MicroCredits(s.cfg.PriceInteractive),
		PriceBatch:       MicroCredits(s.cfg.PriceBatch),
		Seq:              s.seq,
		Expires:          now.Add(s.cfg.TTL),
	}
	for _, g := range s.cfg.GPUs {
		rec.GPUs = append(rec.GPUs, protocol.GPU{Model: g.Model, VRAMMiB: g.VRAMMiB, Count: g.Count, UUID: g.UUID, Detected: g.Source == gpu.SourceDetected})
	}
	return rec
}

// announceLoop publishes the capacity record into the DHT, and the
// provider records that point to it, at half the TTL and whenever free
// capacity changes; failures (such as an empty routing table right after
// start) are retried with backoff.
func (s *Service) announceLoop(ctx context.Context) {
	ttl := s.cfg.TTL
	retry := 100 * time.Millisecond
	for {
		wait := ttl / 2
		last := s.clock.Now()
		if err := s.announce(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log.Debug("capacity announcement failed; retrying", "err", err, "in", retry)
			wait = min(retry, ttl/4)
			retry = min(retry*2, 10*time.Second)
		} else {
			retry = 100 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-clock.After(s.clock, wait):
		case <-s.changed:
			// Slot counts change with every lease; announce them at most
			// every announceGap (they are hints: a full provider declines).
			select {
			case <-ctx.Done():
				return
			case <-clock.After(s.clock, announceGap-s.clock.Now().Sub(last)):
			}
		}
	}
}

func (s *Service) announce(ctx context.Context) error {
	rec := s.record(s.clock.Now())
	b, err := protocol.SignCapacity(s.cfg.Priv, rec)
	if err != nil {
		return err
	}
	if err := s.routing.PutValue(ctx, protocol.CapacityKey(rec.Provider), b); err != nil {
		return fmt.Errorf("put capacity record: %w", err)
	}
	s.mu.Lock()
	s.own = rec
	s.mu.Unlock()
	for _, k := range rec.ContentKeys() {
		if err := s.routing.Provide(ctx, protocol.ContentKeyCID(s.cfg.Network, k), true); err != nil {
			return fmt.Errorf("provide %s: %w", k, err)
		}
	}
	s.log.Debug("capacity announced", "seq", rec.Seq, "free_slots", rec.FreeSlots, "expires", rec.Expires)
	return nil
}

// FindProviders looks up the providers that fit r: provider records in the
// DHT name the candidates, their capacity records are fetched and checked
// (signature, expiry) and merged into the local cache, and the cache answers
// with every unexpired fitting record. A candidate whose record cannot be
// fetched still counts if the cache holds a valid one.
func (s *Service) FindProviders(ctx context.Context, r market.Requirements) ([]*protocol.Capacity, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	if s.routing == nil {
		return nil, errNotStarted
	}
	key := protocol.ContentKeyCID(s.cfg.Network, r.ContentKey())
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	seen := map[peer.ID]bool{}
	for info := range s.routing.FindProvidersAsync(ctx, key, 0) {
		if seen[info.ID] {
			continue
		}
		seen[info.ID] = true
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			s.fetch(ctx, info.ID)
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cache.Find(r, s.clock.Now()), nil
}

// Candidates answers from the cache of announcements when it holds fitting
// providers, so an interactive submit does not wait for a DHT lookup, and
// refreshes the cache in the background (at most every cacheRefreshEvery);
// with nothing cached it looks up the DHT at once. Stale free-slot counts
// cost little: a full provider declines, and the offer is gossiped to
// everyone as well.
func (s *Service) Candidates(ctx context.Context, r market.Requirements) ([]*protocol.Capacity, error) {
	s.mu.Lock()
	cached := s.cache.Find(r, s.clock.Now())
	s.mu.Unlock()
	if len(cached) == 0 {
		return s.FindProviders(ctx, r)
	}
	now := s.clock.Now()
	if s.ctx != nil && s.ctx.Err() == nil && now.UnixNano()-s.lastRefresh.Load() >= int64(cacheRefreshEvery) && s.refreshing.CompareAndSwap(false, true) {
		s.lastRefresh.Store(now.UnixNano())
		s.wg.Go(func() {
			defer s.refreshing.Store(false)
			rctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
			defer cancel()
			s.FindProviders(rctx, market.Requirements{GPUModel: market.AnyGPU})
		})
	}
	return cached, nil
}

// fetch adds p's capacity record, fetched from the DHT and checked, to
// the cache.
func (s *Service) fetch(ctx context.Context, p peer.ID) {
	b, err := s.routing.GetValue(ctx, protocol.CapacityKey(p), dht.Quorum(2))
	if err != nil {
		s.log.Debug("no capacity record", "peer", p, "err", err)
		return
	}
	v := protocol.CapacityValidator{Network: s.cfg.Network}
	if err := v.Validate(protocol.CapacityKey(p), b); err != nil {
		s.log.Debug("invalid capacity record", "peer", p, "err", err)
		return
	}
	rec, err := protocol.OpenCapacity(b)
	if err != nil {
		return
	}
	s.mu.Lock()
	s.cache.Add(rec, s.clock.Now())
	s.mu.Unlock()
}
