package blob

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/storage"
)

// clock is a test clock that moves only when told.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// openDB opens a real Badger in dir, closed at the end of the test.
func openDB(t *testing.T, dir string) *storage.DB {
	t.Helper()
	db, err := storage.Open(dir, storage.Options{Network: testNet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// gcStore is a store with a budget of budget bytes, its records in a real
// Badger, on a test clock.
type gcStore struct {
	*Store
	fills      map[cid.Cid]byte // what each put blob is made of
	dir, dbDir string
	clock      *clock
	db         *storage.DB
}

func newGCStore(t *testing.T, budget int64) *gcStore {
	t.Helper()
	g := &gcStore{fills: map[cid.Cid]byte{}, dir: t.TempDir(), dbDir: t.TempDir(), clock: newClock()}
	g.db = openDB(t, g.dbDir)
	g.reopen(t, budget)
	return g
}

// reopen opens the store again on the same dir and database: a restart.
func (g *gcStore) reopen(t *testing.T, budget int64) {
	t.Helper()
	s, err := NewStore(g.dir, Options{MaxSize: 1 << 20, Budget: budget, HeldFor: time.Hour, PartialTTL: time.Hour, Index: g.db, Now: g.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	g.Store = s
}

// put stores size bytes of fill as a blob of kind, a minute after the
// previous put, so that last-use order is put order.
func (g *gcStore) put(t *testing.T, fill byte, size int, kind Kind) cid.Cid {
	t.Helper()
	g.clock.advance(time.Minute)
	id, err := g.PutBytes(bytes.Repeat([]byte{fill}, size), kind)
	if err != nil {
		t.Fatalf("put %c (%v): %v", fill, kind, err)
	}
	g.fills[id] = fill
	return id
}

// held says which of ids the store holds, by their fill bytes ('-' for
// one it does not), without counting them as used.
func (g *gcStore) held(ids ...cid.Cid) string {
	var s []byte
	for _, id := range ids {
		if g.Has(id) {
			s = append(s, g.fills[id])
		} else {
			s = append(s, '-')
		}
	}
	return string(s)
}

func (g *gcStore) stored() int64 {
	var n int64
	for _, b := range g.Usage().Bytes {
		n += b
	}
	return n
}

func TestCollectorKeepsTheBudget(t *testing.T) {
	g := newGCStore(t, 1000)
	var ids []cid.Cid
	for i := range 20 {
		ids = append(ids, g.put(t, 'a'+byte(i), 300, Cached))
		if n := g.stored(); n > 1000 {
			t.Fatalf("after put %d the store holds %d bytes, budget 1000", i, n)
		}
	}
	// The three most recent stay; everything older went, counted.
	if got := g.held(ids...); got != "-----------------rst" {
		t.Fatalf("held %q, want the last three", got)
	}
	if u := g.Usage(); u.Evictions != 17 || u.EvictedBytes != 17*300 {
		t.Fatalf("evictions %d (%d bytes), want 17 (5100)", u.Evictions, u.EvictedBytes)
	}
	// The files went with the records.
	names, _ := filepath.Glob(filepath.Join(g.dir, "*"))
	if len(names) != 3 {
		t.Fatalf("%d files in the store's dir, want 3: %v", len(names), names)
	}
}

func TestCollectorEvictsLeastRecentlyUsedFirst(t *testing.T) {
	for _, tc := range []struct {
		name string
		use  func(g *gcStore, ids []cid.Cid) // between the puts of a, b, c and of d
		want string                          // a b c d after d
	}{
		{"put order", func(*gcStore, []cid.Cid) {}, "-bcd"},
		{"a read since", func(g *gcStore, ids []cid.Cid) { g.ReadAll(ids[0]) }, "a-cd"},
		{"a staged since", func(g *gcStore, ids []cid.Cid) { g.Mark(ids[0], Cached, "p") }, "a-cd"},
		{"a and b read since", func(g *gcStore, ids []cid.Cid) {
			g.ReadAll(ids[1])
			g.clock.advance(time.Second)
			g.ReadAll(ids[0])
		}, "ab-d"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newGCStore(t, 1000)
			ids := []cid.Cid{g.put(t, 'a', 300, Cached), g.put(t, 'b', 300, Cached), g.put(t, 'c', 300, Cached)}
			g.clock.advance(time.Minute)
			tc.use(g, ids)
			ids = append(ids, g.put(t, 'd', 300, Cached))
			if got := g.held(ids...); got != tc.want {
				t.Fatalf("held %q, want %q", got, tc.want)
			}
		})
	}
}

func TestCollectorNeverEvictsPinnedBlobs(t *testing.T) {
	g := newGCStore(t, 1000)
	op := g.put(t, 'o', 300, Operator)
	own := g.put(t, 'w', 300, Own)
	held := g.put(t, 'h', 300, Held)
	// The oldest blobs are pinned or held: a cached blob finds no room.
	if _, err := g.PutBytes(bytes.Repeat([]byte{'c'}, 200), Cached); !errors.Is(err, ErrFull) {
		t.Fatalf("a put past the budget with only pinned blobs: %v, want ErrFull", err)
	}
	if got := g.held(op, own, held); got != "owh" {
		t.Fatalf("held %q after a refused put, want all three", got)
	}
	if u := g.Usage(); u.Refused != 1 || u.Evictions != 0 || u.Bytes[Operator] != 300 || u.Bytes[Own] != 300 || u.Bytes[Held] != 300 {
		t.Fatalf("usage %+v", u)
	}
	// A cached blob that fits evicts nothing.
	small := g.put(t, 's', 100, Cached)
	// Past its retention a held blob is evicted like a cached one, in
	// last-use order: it was used before s.
	g.clock.advance(time.Hour)
	if u := g.Usage(); u.Bytes[Held] != 0 || u.Bytes[Cached] != 400 {
		t.Fatalf("usage past retention %+v, want the held blob counted as cached", u)
	}
	c := g.put(t, 'c', 300, Cached)
	if got := g.held(op, own, held, small, c); got != "ow-sc" {
		t.Fatalf("held %q, want the expired held blob gone", got)
	}
	// A blob both pinned and cached (the operator's upload fetched as an
	// input too) stays pinned.
	if _, ok := g.Mark(op, Cached, "p"); !ok {
		t.Fatal("mark of a held blob failed")
	}
	g.put(t, 'x', 300, Cached)
	if !g.Has(op) || !g.Has(own) {
		t.Fatal("a pinned blob was evicted")
	}
}

func TestCollectorNeverEvictsABlobInUse(t *testing.T) {
	g := newGCStore(t, 1000)
	a, b, c := g.put(t, 'a', 300, Cached), g.put(t, 'b', 300, Cached), g.put(t, 'c', 300, Cached)
	// a is staged (from before it is fetched until it is copied), b is
	// being served: the put of d evicts c, though both are older.
	staging := g.Use(a)
	f, _, err := g.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	d := g.put(t, 'd', 300, Cached)
	if got := g.held(a, b, c, d); got != "ab-d" {
		t.Fatalf("held %q, want the blobs in use kept", got)
	}
	// With every other blob in use, nothing can go.
	release := g.Use(d)
	if _, err := g.PutBytes(bytes.Repeat([]byte{'e'}, 300), Cached); !errors.Is(err, ErrFull) {
		t.Fatalf("put with every blob in use: %v, want ErrFull", err)
	}
	// The operator's delete waits too.
	if gone, err := g.Delete(a); err != nil || gone {
		t.Fatalf("delete of a blob in use: gone %v, %v", gone, err)
	}
	// Once released, they are evictable again.
	staging()
	release()
	if b, err := io.ReadAll(f); err != nil || len(b) != 300 {
		t.Fatalf("read of the blob being served: %d bytes, %v", len(b), err)
	}
	f.Close()
	g.put(t, 'e', 300, Cached)
	if got := g.held(a, b, d); got != "-bd" {
		t.Fatalf("held %q after release, want a gone", got)
	}
}

// Staging and serving race the collector: every reader that took its
// blob before the collector got to it reads it whole.
func TestCollectorRacesReaders(t *testing.T) {
	g := newGCStore(t, 4*300)
	var ids []cid.Cid
	for i := range 4 {
		ids = append(ids, g.put(t, 'a'+byte(i), 300, Cached))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for r := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				id := ids[(r+i)%len(ids)]
				release := g.Use(id)
				if g.Has(id) {
					b, err := g.ReadAll(id)
					if err != nil || len(b) != 300 {
						errs <- fmt.Errorf("blob %s held but not readable: %d bytes, %v", id, len(b), err)
					}
				}
				release()
			}
		}()
	}
	for i := range 200 {
		if _, err := g.PutBytes(bytes.Repeat([]byte{byte(i)}, 300), Cached); err != nil && !errors.Is(err, ErrFull) {
			t.Fatal(err)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := g.stored(); n > 4*300 {
		t.Fatalf("store holds %d bytes, budget %d", n, 4*300)
	}
}

func TestRestartKeepsKindsHoldersAndOrder(t *testing.T) {
	g := newGCStore(t, 1000)
	op := g.put(t, 'o', 200, Operator)
	own := g.put(t, 'w', 200, Own)
	held := g.put(t, 'h', 200, Held)
	a := g.put(t, 'a', 150, Cached)
	b := g.put(t, 'b', 150, Cached)
	if _, ok := g.Mark(a, Cached, "requester-v"); !ok {
		t.Fatal("mark failed")
	}
	// a is used after b, later than the persisted time's precision.
	g.clock.advance(2 * touchPersist)
	g.ReadAll(a)
	g.Collect()
	if err := g.db.Close(); err != nil {
		t.Fatal(err)
	}
	g.db = openDB(t, g.dbDir)
	g.reopen(t, 1000)

	for id, want := range map[cid.Cid]Kind{op: Operator, own: Own, held: Held, a: Cached, b: Cached} {
		if got, ok := g.KindOf(id); !ok || got != want {
			t.Errorf("after restart %s is %v (held: %v), want %v", id, got, ok, want)
		}
	}
	if !g.HeldBy(a, "requester-v") || g.HeldBy(b, "requester-v") || g.HeldBy(a, "requester-r") {
		t.Error("holders not kept across the restart")
	}
	// Least recently used first, as before the restart: b goes, a stays.
	c := g.put(t, 'c', 150, Cached)
	if got := g.held(op, own, held, a, b, c); got != "owha-c" {
		t.Fatalf("held %q after restart and a put, want b evicted", got)
	}
}

func TestLoadReconcilesFilesAndRecords(t *testing.T) {
	g := newGCStore(t, 0)
	kept := g.put(t, 'k', 100, Cached)
	gone := g.put(t, 'g', 100, Cached)
	// A blob removed by hand leaves a record; a file from before records
	// were kept has none.
	p, _ := g.path(gone)
	os.Remove(p)
	legacy := bytes.Repeat([]byte{'l'}, 100)
	legacyID := idOf(legacy)
	lp, _ := g.path(legacyID)
	if err := os.WriteFile(lp, legacy, 0o600); err != nil {
		t.Fatal(err)
	}
	g.reopen(t, 0)
	if g.Has(gone) {
		t.Error("a record without its file survived the restart")
	}
	if k, ok := g.KindOf(kept); !ok || k != Cached {
		t.Errorf("kept blob is %v (%v)", k, ok)
	}
	if k, ok := g.KindOf(legacyID); !ok || k != Operator {
		t.Errorf("a blob without a record is %v (%v), want the operator's", k, ok)
	}
	n := 0
	g.db.BlobRecords(func(string, []byte) error { n++; return nil })
	if n != 2 {
		t.Errorf("%d records after the restart, want 2", n)
	}
}

func TestDeleteUnpinsAndRemoves(t *testing.T) {
	g := newGCStore(t, 0)
	op := g.put(t, 'o', 100, Operator)
	held := g.put(t, 'h', 100, Held|Operator)
	missing := idOf([]byte("missing"))
	for _, tc := range []struct {
		name     string
		id       cid.Cid
		gone     bool
		err      error
		wantKind Kind
	}{
		{"the operator's blob", op, true, nil, 0},
		{"held for a requester", held, false, nil, Held},
		{"not here", missing, false, ErrNotFound, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gone, err := g.Delete(tc.id)
			if gone != tc.gone || !errors.Is(err, tc.err) {
				t.Fatalf("Delete = %v, %v; want %v, %v", gone, err, tc.gone, tc.err)
			}
			k, _ := g.KindOf(tc.id)
			if k != tc.wantKind {
				t.Fatalf("kind after delete %v, want %v", k, tc.wantKind)
			}
		})
	}
	// Once its retention ends, the unpinned held blob is evictable.
	g.clock.advance(2 * time.Hour)
	if gone, err := g.Delete(held); err != nil || !gone {
		t.Fatalf("delete past retention: %v, %v", gone, err)
	}
}

func TestCollectRemovesAbandonedPartials(t *testing.T) {
	g := newGCStore(t, 0)
	old := filepath.Join(g.dir, "put-old.part")
	fresh := filepath.Join(g.dir, "put-fresh.part")
	for _, p := range []string{old, fresh} {
		if err := os.WriteFile(p, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A download being written, untouched for long (a stalled peer).
	id := idOf([]byte("downloading"))
	pf, err := g.openPartial(id, ownerTag("requester"))
	if err != nil {
		t.Fatal(err)
	}
	defer pf.close()
	f := pf.f
	longAgo := time.Now().Add(-3 * time.Hour)
	for _, p := range []string{old, f.Name()} {
		os.Chtimes(p, longAgo, longAgo)
	}
	g.clock.now = time.Now()
	g.Collect()
	for p, want := range map[string]bool{old: false, fresh: true, f.Name(): true} {
		if _, err := os.Stat(p); (err == nil) != want {
			t.Errorf("%s exists: %v, want %v", filepath.Base(p), err == nil, want)
		}
	}
	if n := g.Usage().PartialsRemoved; n != 1 {
		t.Errorf("partials removed %d, want 1", n)
	}
}

// A download that cannot fit the budget is refused before its bytes are
// written.
func TestFetchRefusedWhenTheBudgetIsPinned(t *testing.T) {
	server := newService(t, 1<<20)
	g := newGCStore(t, 1000)
	client := NewService(newHost(t), testNet, g.Store, server.log)
	t.Cleanup(client.Close)
	connect(t, client.host, server.host)
	g.put(t, 'o', 800, Operator)
	id, _ := server.store.PutBytes(bytes.Repeat([]byte{'x'}, 500), Operator)
	if _, err := client.Fetch(context.Background(), id, Cached, server.host.ID()); !errors.Is(err, ErrFull) {
		t.Fatalf("fetch past a pinned budget: %v, want ErrFull", err)
	}
	if p, _ := g.path(id); fileSize(p+".part") > 0 || g.Usage().PartialBytes != 0 {
		t.Fatalf("the refused download wrote %d bytes (%d counted)", fileSize(p+".part"), g.Usage().PartialBytes)
	}
}

func idOf(b []byte) cid.Cid {
	sum := sha256.Sum256(b)
	id, _ := protocol.BlobID(sum[:])
	return id
}

func fileSize(p string) int64 {
	info, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return info.Size()
}

// FetchFor: a requester's job may use a blob the provider holds only if
// that requester delivered its bytes; it proves it by sending them.
func TestFetchForNeedsTheRequestersBytes(t *testing.T) {
	victim, rogue, liarHost := newService(t, 1<<20), newService(t, 1<<20), newHost(t)
	provider := newService(t, 1<<20)
	connect(t, provider.host, victim.host)
	connect(t, provider.host, rogue.host)
	connect(t, provider.host, liarHost)
	secret := randomBytes(t, 50_000)
	id, _ := victim.store.PutBytes(secret, Operator)
	ctx := context.Background()

	// The victim delivers it: stored, the victim recorded as its holder.
	if err := provider.FetchFor(ctx, id, victim.host.ID()); err != nil {
		t.Fatal(err)
	}
	if !provider.store.HeldBy(id, victim.host.ID()) || victim.Stats.Served.Load() != 1 {
		t.Fatalf("victim not recorded (%v), or served %d times", provider.store.HeldBy(id, victim.host.ID()), victim.Stats.Served.Load())
	}
	// Its next job uses the copy: nothing is sent again.
	if err := provider.FetchFor(ctx, id, victim.host.ID()); err != nil || victim.Stats.Served.Load() != 1 {
		t.Fatalf("second use: %v, served %d times, want once", err, victim.Stats.Served.Load())
	}

	// A requester that does not hold the blob cannot use the copy.
	if err := provider.FetchFor(ctx, id, rogue.host.ID()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a requester without the blob: %v, want ErrNotFound", err)
	}
	// Nor can one that sends other bytes of the same size (claims are
	// not proof).
	serveFake(liarHost, uint64(len(secret)), randomBytes(t, len(secret)), nil)
	if err := provider.FetchFor(ctx, id, liarHost.ID()); !errors.Is(err, ErrMismatch) {
		t.Fatalf("a requester sending other bytes: %v, want ErrMismatch", err)
	}
	if provider.store.HeldBy(id, rogue.host.ID()) || provider.store.HeldBy(id, liarHost.ID()) || provider.Stats.Unproven.Load() != 2 {
		t.Fatalf("refused requesters recorded, or not counted (%d)", provider.Stats.Unproven.Load())
	}
	// A second requester that does hold it proves so by sending it, and
	// is recorded; the stored copy is untouched.
	if _, err := rogue.store.PutBytes(secret, Operator); err != nil {
		t.Fatal(err)
	}
	if err := provider.FetchFor(ctx, id, rogue.host.ID()); err != nil {
		t.Fatal(err)
	}
	if !provider.store.HeldBy(id, rogue.host.ID()) || provider.Stats.Proved.Load() != 1 || rogue.Stats.Served.Load() != 1 {
		t.Fatalf("holder recorded %v, proved %d, served %d", provider.store.HeldBy(id, rogue.host.ID()), provider.Stats.Proved.Load(), rogue.Stats.Served.Load())
	}
	if got, _ := provider.store.ReadAll(id); !bytes.Equal(got, secret) {
		t.Fatal("the stored copy changed")
	}
}

// A held result is kept for its requester for the retention period, or
// until it has fetched it: a requester that collects its results does not
// leave them filling the budget for a day. Another peer's fetch ends
// nothing, and a result held for two requesters waits for both.
func TestHeldResultGoesOnceItsRequesterFetchedIt(t *testing.T) {
	g := newGCStore(t, 0)
	server := NewService(newHost(t), testNet, g.Store, slog.New(slog.DiscardHandler))
	t.Cleanup(server.Close)
	requester, other, second := newService(t, 1<<20), newService(t, 1<<20), newService(t, 1<<20)
	for _, c := range []*Service{requester, other, second} {
		connect(t, c.host, server.host)
	}
	result := bytes.Repeat([]byte{'r'}, 1000)
	id, _, err := g.PutFor(bytes.NewReader(result), Held, requester.host.ID())
	if err != nil {
		t.Fatal(err)
	}
	// Kept for the requester, not delivered by it: it may not stage the
	// bytes as its own (HeldBy) before it paid for them.
	if g.HeldBy(id, requester.host.ID()) {
		t.Fatal("a result held for its requester counts as delivered by it")
	}
	fetch := func(c *Service) {
		t.Helper()
		if _, err := c.Fetch(context.Background(), id, Own, server.host.ID()); err != nil {
			t.Fatal(err)
		}
	}
	fetch(other)
	waitServed(t, server, 1)
	if k, _ := g.KindOf(id); g.Usage().Bytes[Held] != 1000 || k != Held {
		t.Fatalf("after another peer's fetch: %+v, want the result still held", g.Usage().Bytes)
	}
	// The same bytes are the result of a second requester's job too.
	if _, _, err := g.PutFor(bytes.NewReader(result), Held, second.host.ID()); err != nil {
		t.Fatal(err)
	}
	fetch(requester)
	waitServed(t, server, 2)
	if g.Usage().Bytes[Held] != 1000 {
		t.Fatalf("after one of its two requesters fetched it: %+v, want it still held", g.Usage().Bytes)
	}
	fetch(second)
	waitServed(t, server, 3)
	if u := g.Usage(); u.Bytes[Held] != 0 || u.Bytes[Cached] != 1000 {
		t.Fatalf("after both requesters fetched it: %+v, want it evictable", u.Bytes)
	}
	// Across a restart too.
	g.reopen(t, 0)
	if u := g.Usage(); u.Bytes[Held] != 0 || u.Bytes[Cached] != 1000 {
		t.Fatalf("after a restart: %+v, want it evictable", u.Bytes)
	}
}

// waitServed waits until s has served n blobs (it counts one once its
// last bytes are sent, which may be just after the peer has them).
func waitServed(t *testing.T, s *Service, n uint64) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); s.Stats.Served.Load() < n; {
		if time.Now().After(deadline) {
			t.Fatalf("served %d blobs, want %d", s.Stats.Served.Load(), n)
		}
		time.Sleep(time.Millisecond)
	}
}
