package node_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"io/fs"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-msgio"

	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
	"github.com/mira-market/mira/storage"
	"github.com/mira-market/mira/testnet"
)

// marketRogue is a peer with the swarm key that speaks the market stream
// protocol directly: it signs what it likes with its own key, and keeps
// every message the members send it.
type marketRogue struct {
	t    *testing.T
	key  crypto.PrivKey
	host host.Host
	mu   sync.Mutex
	got  []*protocol.Signed
}

func newMarketRogue(t *testing.T, tn *testnet.Testnet) *marketRogue {
	t.Helper()
	key, h := rogueHost(t, tn)
	r := &marketRogue{t: t, key: key, host: h}
	h.SetStreamHandler(libp2pproto.ID(protocol.MarketProtocol("testnet")), r.read)
	for _, n := range tn.Nodes() {
		info, _ := peer.AddrInfoFromString(n.ListenAddrs()[0])
		if err := h.Connect(context.Background(), *info); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func (r *marketRogue) id() peer.ID { return r.host.ID() }

// read keeps what a member sends the rogue.
func (r *marketRogue) read(st network.Stream) {
	defer st.Close()
	rd := msgio.NewVarintReaderSize(st, protocol.MaxMarketMessageSize)
	for {
		data, err := rd.ReadMsg()
		if err != nil {
			return
		}
		if s, err := protocol.OpenMarket(data, "testnet", time.Now()); err == nil {
			r.mu.Lock()
			r.got = append(r.got, s)
			r.mu.Unlock()
		}
	}
}

// received returns the messages about job a member sent the rogue.
func (r *marketRogue) received(job protocol.JobID) []*protocol.Signed {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*protocol.Signed
	for _, s := range r.got {
		if s.Job == job {
			out = append(out, s)
		}
	}
	return out
}

// sign seals m with the rogue's key, valid for a minute (an offer: until
// its deadline).
func (r *marketRogue) sign(m *pb.MarketMessage) []byte {
	r.t.Helper()
	expires := time.Now().Add(time.Minute)
	if o := m.GetOffer(); o != nil {
		expires = time.UnixMilli(o.DeadlineUnixMs)
	}
	raw, err := protocol.SealMarket(r.key, "testnet", expires, m)
	if err != nil {
		r.t.Fatal(err)
	}
	return raw
}

// stream sends to member p n messages that next(i) makes, over one market
// stream, framed as the outbox frames them, 256 KiB per write.
func (r *marketRogue) stream(p peer.ID, n int, next func(i int) []byte) {
	r.t.Helper()
	st, err := r.host.NewStream(context.Background(), p, libp2pproto.ID(protocol.MarketProtocol("testnet")))
	if err != nil {
		r.t.Fatal(err)
	}
	defer st.Close()
	var buf []byte
	for i := range n {
		buf = protocol.AppendFrame(buf, next(i))
		if len(buf) >= 256<<10 || i == n-1 {
			if _, err := st.Write(buf); err != nil {
				r.t.Fatal(err)
			}
			buf = buf[:0]
		}
	}
}

// allocated is the disk space the files under dir take (blocks, not
// apparent sizes: Badger's files are sparse until written).
func allocated(t *testing.T, dir string) int64 {
	t.Helper()
	var total int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			total += st.Blocks * 512
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return total
}

// Declines from a rogue (ten identities with the swarm key, varying the
// reason, 20,000 signed declines over the market stream protocol) for a
// job they were never asked about leave the job's record and the
// requester's database small, and its engine free to lease the next job.
func TestDeclineFloodLeavesJobRecordBounded(t *testing.T) {
	const (
		identities  = 10
		perRogue    = 2000
		maxRecord   = 32 << 10 // bytes of the job's stored JSON
		maxDeclines = 32
		maxGrowth   = 8 << 20 // bytes the database may grow by
	)
	tn, _ := rogueNet(t)
	requester := tn.Node(2)
	c := clientFor(t, tn, 2)
	ctx := context.Background()
	queryUntil(t, c, api.ProviderQuery{GPU: "any"}, []string{tn.Node(1).ID().String()})
	// A job nobody can serve (eight GPUs): it stays open for bids. Its ID
	// is public: every node sees its offer on gossip.
	req := noopJob("batch", "0s", "2m")
	req.Resources.GPUs = 8
	victim, err := c.SubmitJob(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := protocol.ParseJobID(victim.ID)
	dbDir := filepath.Join(tn.Dir(2), "db")
	before := allocated(t, dbDir)
	stepped0, _ := requester.MarketStats()

	var wg sync.WaitGroup
	for range identities {
		r := newMarketRogue(t, tn)
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.stream(requester.ID(), perRogue, func(i int) []byte {
				return r.sign(&pb.MarketMessage{Body: &pb.MarketMessage_Decline{Decline: &pb.Decline{
					JobId: id[:], Provider: []byte(r.id()), Reason: fmt.Sprintf("reason %d %s", i, strings.Repeat("x", 200)),
				}}})
			})
		}()
	}
	wg.Wait()
	// Every decline reached the engine (or was dropped by the rate limit
	// before it).
	if err := testnet.WaitFor(ctx, time.Minute, func() error {
		stepped, _ := requester.MarketStats()
		if n := stepped["decline"] - stepped0["decline"] + dropped(requester, "market"); n < identities*perRogue {
			return fmt.Errorf("%d of %d declines handled", n, identities*perRogue)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// The engine is free: a job that can run is leased and done at once.
	next, err := c.SubmitJob(ctx, noopJob("batch", "0s", "1m"))
	if err != nil {
		t.Fatal(err)
	}
	waitJobs(t, c, []string{next.ID}, "succeeded", 20*time.Second)

	j, err := c.Job(ctx, victim.ID)
	if err != nil {
		t.Fatal(err)
	}
	if j.State != "bidding" {
		t.Fatalf("the attacked job is %s", j.State)
	}
	// A gossiped offer asks every provider: each may say why not, once,
	// and only so many are kept.
	by := map[string]int{}
	for _, d := range j.Declines {
		by[d.Provider]++
	}
	if len(j.Declines) > maxDeclines || by[tn.Node(1).ID().String()] != 1 {
		t.Errorf("%d declines kept (limit %d), %d from the provider", len(j.Declines), maxDeclines, by[tn.Node(1).ID().String()])
	}
	for p, n := range by {
		if n > 1 {
			t.Errorf("%d declines of %s kept", n, p)
		}
	}
	growth := allocated(t, dbDir) - before
	if err := tn.Stop(2); err != nil {
		t.Fatal(err)
	}
	db, err := storage.Open(dbDir, storage.Options{Network: "testnet"})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	record := 0
	db.Jobs(func(key string, rec []byte) error {
		if key == victim.ID {
			record = len(rec)
		}
		return nil
	})
	t.Logf("job record %d bytes, database grew by %d bytes", record, growth)
	if record == 0 || record > maxRecord || growth > maxGrowth {
		t.Fatalf("job record %d bytes (limit %d), database grew by %d bytes (limit %d)", record, maxRecord, growth, maxGrowth)
	}
}

// heapInUse is the live heap after a full collection.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// 20,000 offers a rogue requester sends a provider directly, each 8 KiB and
// with a deadline almost a day away (the longest allowed), leave the
// provider's heap within a bound: it remembers offers within a budget per
// requester, evicting the least recently answered.
func TestOfferFloodLeavesHeapBounded(t *testing.T) {
	const (
		offers = 20000
		// Bytes of live heap the whole in-process testnet may grow by: the
		// provider's budget for one requester's offers (16 MiB) and its
		// cache of verified messages (8 MiB as received, about as much
		// decoded), and room for what the three nodes allocate anyway
		// (a new Badger memtable arena is 8 MiB).
		maxGrowth = 64 << 20
	)
	tn, _ := rogueNet(t)
	provider := tn.Node(1)
	r := newMarketRogue(t, tn)
	ctx := context.Background()
	base := heapInUse()
	stepped0, _ := provider.MarketStats()
	pad := strings.Repeat("a", 4000)
	r.stream(provider.ID(), offers, func(i int) []byte {
		now := time.Now()
		m := offerFrom(r.id(), now.Add(23*time.Hour))
		m.GetOffer().Spec.Args = []string{pad, pad}
		return r.sign(m)
	})
	if err := testnet.WaitFor(ctx, time.Minute, func() error {
		stepped, _ := provider.MarketStats()
		if n := stepped["offer"] - stepped0["offer"] + dropped(provider, "market"); n < offers {
			return fmt.Errorf("%d of %d offers handled", n, offers)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	r.got = nil // the provider's 20,000 bids, kept by the rogue in this process
	r.mu.Unlock()
	growth := int64(heapInUse()) - int64(base)
	kept, bytes, err := provider.OfferMemory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	budget := provider.Config().Limits.OfferMemoryPerRequester
	t.Logf("heap grew by %d MiB; the provider remembers %d offers in %d KiB (budget %d KiB)", growth>>20, kept, bytes>>10, budget>>10)
	if growth > maxGrowth || bytes > budget || kept == 0 {
		t.Fatalf("heap grew by %d MiB after %d offers (limit %d MiB); %d offers remembered in %d bytes (budget %d)",
			growth>>20, offers, maxGrowth>>20, kept, bytes, budget)
	}
}

// Offers gossiped under thousands of throwaway identities, each its own
// requester, leave the provider's heap within a bound: it answers each,
// but what it queues for a peer costs what is queued (not a queue's
// capacity), a peer it cannot reach is given up at once, and it keeps
// queues for a bounded number of peers.
func TestOffersFromManyIdentitiesLeaveHeapBounded(t *testing.T) {
	const (
		identities = 5000
		handled    = 2000 // the rogue's gossip drops some of its own
		// Bytes of live heap the whole testnet may grow by: three nodes'
		// gossip caches and verified messages, and what they allocate
		// anyway (a new Badger memtable arena is 8 MiB). Before the
		// outbox held what it queued instead of a preallocated queue per
		// peer, 3,000 identities took 340 MiB.
		maxGrowth = 64 << 20
	)
	tn, g := rogueNet(t)
	provider := tn.Node(1)
	ctx := context.Background()
	base := heapInUse()
	stepped0, _ := provider.MarketStats()
	for i := range identities {
		key, _, _ := crypto.GenerateEd25519Key(rand.Reader)
		id, _ := peer.IDFromPrivateKey(key)
		m, err := protocol.SealMarket(key, "testnet", time.Now().Add(time.Minute), offerFrom(id, time.Now().Add(time.Minute)))
		if err != nil {
			t.Fatal(err)
		}
		// One signer per gossip message: a message of two is rejected.
		if err := g.topic.Publish(ctx, protocol.AppendFrame(nil, m)); err != nil {
			t.Fatal(err)
		}
		if i%16 == 0 {
			time.Sleep(time.Millisecond) // let the rogue's own queue drain
		}
	}
	if err := testnet.WaitFor(ctx, deadline, func() error {
		stepped, _ := provider.MarketStats()
		if n := stepped["offer"] - stepped0["offer"]; n < handled {
			return fmt.Errorf("%d offers handled, want %d", n, handled)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	stepped, _ := provider.MarketStats()
	growth := int64(heapInUse()) - int64(base)
	t.Logf("%d offers of distinct requesters handled; heap grew by %d MiB", stepped["offer"]-stepped0["offer"], growth>>20)
	if growth > maxGrowth {
		t.Fatalf("heap grew by %d MiB, limit %d MiB", growth>>20, maxGrowth>>20)
	}
}

// An award for an offer the provider declined (an executor it does not
// allow, more GPUs than it has) does not start a lease: the provider keeps
// no spec to lease for an offer it declined, so it declines the award as
// of a job it does not know.
func TestAwardOfDeclinedOfferIsDeclined(t *testing.T) {
	tn, _ := rogueNet(t)
	provider := tn.Node(1)
	r := newMarketRogue(t, tn)
	for _, tc := range []struct {
		name   string
		spec   func(*pb.JobSpec)
		reason string
	}{
		{"executor not allowed", func(s *pb.JobSpec) { s.Executor = "process"; s.Command = []string{"/bin/true"} }, "executor not allowed"},
		{"more GPUs than it has", func(s *pb.JobSpec) { s.Resources.Gpus = 8 }, "no fitting GPU"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := offerFrom(r.id(), time.Now().Add(time.Minute))
			tc.spec(m.GetOffer().Spec)
			m.Round = 1
			id, err := protocol.OfferJobID(m.GetOffer())
			if err != nil {
				t.Fatal(err)
			}
			offer := r.sign(m)
			r.stream(provider.ID(), 1, func(int) []byte { return offer })
			waitReplies(t, r, id, 1)
			award := r.sign(&pb.MarketMessage{Body: &pb.MarketMessage_Award{Award: &pb.Award{
				JobId: id[:], Provider: []byte(provider.ID()), Price: 1e6, Attempt: 1, Hold: []byte("a hold"),
				Grant: make([]byte, protocol.AwardGrantSize),
			}}})
			r.stream(provider.ID(), 1, func(int) []byte { return award })
			replies := waitReplies(t, r, id, 2)
			for i, want := range []string{tc.reason, "unknown job"} {
				if d := replies[i].Msg.GetDecline(); d == nil || d.Reason != want {
					t.Fatalf("provider answered %s (%v), want a decline: %q", kindName(replies[i]), replies[i].Msg.Body, want)
				}
			}
		})
	}
}

// waitReplies waits until the rogue holds at least n messages about job.
func waitReplies(t *testing.T, r *marketRogue, job protocol.JobID, n int) []*protocol.Signed {
	t.Helper()
	var got []*protocol.Signed
	if err := testnet.WaitFor(context.Background(), deadline, func() error {
		if got = r.received(job); len(got) < n {
			return fmt.Errorf("%d replies, want %d", len(got), n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

func kindName(s *protocol.Signed) string {
	switch {
	case s.Msg.GetAccept() != nil:
		return "accept"
	case s.Msg.GetDecline() != nil:
		return "decline"
	case s.Msg.GetBid() != nil:
		return "bid"
	case s.Msg.GetResult() != nil:
		return "result"
	}
	return "other"
}

// dropped is how many messages of a kind a node's per-peer limits dropped.
func dropped(n *node.Node, what string) int { return n.PeerLimited()[what] }

// rejectedTotal is how many market messages n refused before its engine.
func rejectedTotal(n *node.Node) int {
	_, rejected := n.MarketStats()
	total := 0
	for _, c := range rejected {
		total += c
	}
	return total
}

// An honest relay passes on an offer whose deadline sits just under the
// 25 h limit by its own clock; a receiver whose clock is a little behind
// finds it just past the limit. That is a clock difference, not the
// relay's fault: the receiver ignores the offer and does not score the
// relay down, where rejecting it four times used to graylist the relay,
// so that its valid messages were dropped.
func TestOfferJustPastTheLimitDoesNotPenaliseItsRelay(t *testing.T) {
	tn, relay := rogueNet(t)
	provider := tn.Node(1)
	ctx := context.Background()
	// The requester's clock runs an hour and a few seconds ahead of the
	// provider's (MaxClockSkew is an hour): its offers' deadlines, a day
	// after their creation, are 25 h and a few seconds ahead here.
	requester, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	requesterID, _ := peer.IDFromPrivateKey(requester)
	aheadOffer := func() []byte {
		created := time.Now().Add(protocol.MaxClockSkew + 5*time.Second)
		m := offerFrom(requesterID, created.Add(protocol.MaxJobLifetime))
		m.GetOffer().CreatedUnixMs = created.UnixMilli()
		raw, err := protocol.SealMarket(requester, "testnet", created.Add(protocol.MaxJobLifetime), m)
		if err != nil {
			t.Fatal(err)
		}
		return protocol.AppendFrame(nil, raw)
	}
	before := rejectedTotal(provider)
	for range 4 {
		if err := relay.topic.Publish(ctx, aheadOffer()); err != nil {
			t.Fatal(err)
		}
	}
	if err := testnet.WaitFor(ctx, deadline, func() error {
		if n := rejectedTotal(provider) - before; n < 4 {
			return fmt.Errorf("provider refused %d of the 4 offers", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, rejected := provider.MarketStats(); rejected["too far ahead"] < 4 {
		t.Errorf("refusals counted %v, want 4 as too far ahead", rejected)
	}
	// The relay still relays: its next, valid offer reaches the engine.
	stepped0, _ := provider.MarketStats()
	valid, err := protocol.SealMarket(requester, "testnet", time.Now().Add(time.Minute), offerFrom(requesterID, time.Now().Add(time.Minute)))
	if err != nil {
		t.Fatal(err)
	}
	if err := relay.topic.Publish(ctx, protocol.AppendFrame(nil, valid)); err != nil {
		t.Fatal(err)
	}
	if err := testnet.WaitFor(ctx, deadline, func() error {
		stepped, _ := provider.MarketStats()
		if stepped["offer"] <= stepped0["offer"] {
			score, _ := provider.GossipScore(relay.host.ID())
			return fmt.Errorf("the relay's valid offer has not reached the provider (the relay's score %.0f)", score)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if score, ok := provider.GossipScore(relay.host.ID()); ok && score < 0 {
		t.Fatalf("the relay's score is %.0f", score)
	}
}

// Throwaway identities that each send a provider one offer it declines
// keep the provider's outbox table full: a queue lives a minute after its
// last message, and with every place taken the provider's bid to a new,
// honest requester used to be dropped. The provider now gives the place
// of the least recently used idle queue to the new peer. (The outbox
// keeps queues for 1,024 peers; the test lowers that to eight, so that
// eight real hosts fill it.)
func TestIdleOutboxQueuesDoNotCrowdOutNewPeers(t *testing.T) {
	const places = 8
	tn, _ := rogueNet(t)
	provider := tn.Node(1)
	provider.SetOutboxPeers(places)
	c := clientFor(t, tn, 2)
	ctx := context.Background()
	queryUntil(t, c, api.ProviderQuery{GPU: "any"}, []string{provider.ID().String()})
	for range places {
		r := newMarketRogue(t, tn)
		m := offerFrom(r.id(), time.Now().Add(time.Hour))
		m.GetOffer().Spec.Resources.Gpus = 8 // declined: the provider has one
		id, err := protocol.OfferJobID(m.GetOffer())
		if err != nil {
			t.Fatal(err)
		}
		offer := r.sign(m)
		r.stream(provider.ID(), 1, func(int) []byte { return offer })
		waitReplies(t, r, id, 1) // the provider now holds a queue for r
	}
	j, err := c.SubmitJob(ctx, noopJob("batch", "0s", "1m"))
	if err != nil {
		t.Fatal(err)
	}
	waitJobs(t, c, []string{j.ID}, "succeeded", 20*time.Second)
	if n := provider.OutboxDropped()["peers"]; n != 0 {
		t.Fatalf("the provider dropped %d messages for want of a place", n)
	}
}
