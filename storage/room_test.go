package storage

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/mira-market/mira/protocol/ledger"
)

// roomGuard is a Room hook that can be told to refuse, and that checks
// every commit was asked for: each time it is asked it notes Badger's
// highest committed version, and a commit made without asking first
// shows as two versions between two asks (or one before the first).
type roomGuard struct {
	mu      sync.Mutex
	db      *badger.DB
	full    bool
	asked   int
	last    uint64 // the version when last asked
	unasked int    // commits seen that no ask came before
}

func (g *roomGuard) room() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.asked++
	g.note()
	if g.full {
		return errors.New("test disk full")
	}
	return nil
}

// note counts the commits since the last ask beyond the one it allowed.
func (g *roomGuard) note() {
	if g.db == nil {
		return
	}
	v := g.db.MaxVersion()
	if v > g.last+1 {
		g.unasked += int(v - g.last - 1)
	}
	g.last = v
}

// watch starts checking db's commits from its current version on.
func (g *roomGuard) watch(db *DB) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.db, g.last, g.unasked, g.asked = db.bdb, db.bdb.MaxVersion(), 0, 0
}

func (g *roomGuard) setFull(full bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.full = full
}

// unaskedCommits is how many commits since watch no ask came before; the
// last ask may cover one more.
func (g *roomGuard) unaskedCommits() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := g.unasked
	if v := g.db.MaxVersion(); v > g.last+1 {
		n += int(v - g.last - 1)
	}
	return n
}

// openGuarded opens dir's database with g as its Room hook.
func openGuarded(t *testing.T, dir string, g *roomGuard) *DB {
	t.Helper()
	g.mu.Lock()
	g.db = nil // not the last database's, closed
	g.mu.Unlock()
	db, err := Open(dir, Options{Network: testNet, Room: g.room})
	if err != nil {
		t.Fatal(err)
	}
	g.watch(db)
	return db
}

// Every write asks the disk guard first, so a guard that refuses (the disk
// is full) turns each into ErrNoRoom instead of a write Badger may die of:
// the orphan hold records, a new ledger's genesis mark, and the upgrade
// of an old ledger's format at open (which then changes nothing, and runs
// once there is room).
func TestWritesAskTheDiskGuard(t *testing.T) {
	env := newLedgerEnv(t)
	dir := t.TempDir()
	g := &roomGuard{}
	db := openGuarded(t, dir, g)
	defer func() { db.Close() }()

	g.setFull(true)
	err := db.SetOrphanHolds(map[ledger.Hash]time.Time{job("1"): time.Unix(1, 0)}, nil)
	if !errors.Is(err, ErrNoRoom) {
		t.Fatalf("SetOrphanHolds on a full disk: %v, want ErrNoRoom", err)
	}
	if holds, err := db.OrphanHolds(); err != nil || len(holds) != 0 {
		t.Fatalf("orphan holds after the refused write: %v, %v", holds, err)
	}
	if _, err := OpenLedger(db, testNet, env.g, env.clock.Now); !errors.Is(err, ErrNoRoom) {
		t.Fatalf("a new ledger opened on a full disk: %v, want ErrNoRoom", err)
	}

	g.setFull(false)
	l, err := OpenLedger(db, testNet, env.g, env.clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	for _, raw := range [][]byte{
		env.a.next(t, ledger.GrantBody{Amount: 1000}),
		env.a.next(t, ledger.HoldBody{Job: job("1"), Provider: env.p.id, Amount: 100}),
		env.p.next(t, env.a.leaseFor(t, env.p.id, job("1"), 1)),
	} {
		if _, err := l.Ingest(raw); err != nil {
			t.Fatal(err)
		}
	}
	if unasked := g.unaskedCommits(); unasked > 0 {
		t.Fatalf("%d commits did not ask the guard", unasked)
	}
	downgradeToFormat2(t, db.bdb)
	db.Close()

	// Reopened full: the upgrade refuses and leaves format 2.
	db = openGuarded(t, dir, g)
	g.setFull(true)
	if _, err := OpenLedger(db, testNet, env.g, env.clock.Now); !errors.Is(err, ErrNoRoom) {
		t.Fatalf("upgrade on a full disk: %v, want ErrNoRoom", err)
	}
	if f := formatOf(t, db); f != 2 {
		t.Fatalf("format %d after the refused upgrade, want 2 unchanged", f)
	}
	if unasked := g.unaskedCommits(); unasked > 0 {
		t.Fatalf("the refused upgrade committed %d times without asking", unasked)
	}
	// With room it runs, every commit asked for.
	g.setFull(false)
	l, err = OpenLedger(db, testNet, env.g, env.clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	if f := formatOf(t, db); f != ledgerFormat {
		t.Fatalf("format %d after the upgrade", f)
	}
	if unasked := g.unaskedCommits(); unasked > 0 {
		t.Fatalf("the upgrade committed %d times without asking the guard", unasked)
	}
	if n, _, err := l.Leases(env.p.id, job("1")); err != nil || n != 1 {
		t.Fatalf("leases after the upgrade: %d, %v", n, err)
	}
}

// A guarded batch larger than a Badger transaction commits as often as it
// must, asking the guard before each commit, and stops at the first
// refusal.
func TestGuardedBatchAsksBeforeEachCommit(t *testing.T) {
	g := &roomGuard{}
	db := openGuarded(t, t.TempDir(), g)
	defer db.Close()
	const n = 40000 // several transactions' worth
	key := func(i int) []byte { return fmt.Appendf(nil, "test/%06d", i) }
	b := db.newGuardedBatch()
	for i := range n {
		if err := b.set(key(i), bytes.Repeat([]byte{1}, 32)); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.flush(); err != nil {
		t.Fatal(err)
	}
	b.cancel()
	if g.asked < 2 {
		t.Fatalf("%d asks for %d keys: the batch fit one transaction, the test proves nothing", g.asked, n)
	}
	if unasked := g.unaskedCommits(); unasked > 0 {
		t.Fatalf("%d commits did not ask the guard", unasked)
	}
	err := db.bdb.View(func(txn *badger.Txn) error {
		for i := range n {
			if _, err := txn.Get(key(i)); err != nil {
				return fmt.Errorf("key %d: %w", i, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	g.setFull(true)
	b = db.newGuardedBatch()
	defer b.cancel()
	var last error
	for i := range n {
		if last = b.set(key(n+i), []byte{1}); last != nil {
			break
		}
	}
	if last == nil {
		last = b.flush()
	}
	if !errors.Is(last, ErrNoRoom) {
		t.Fatalf("a batch on a full disk: %v, want ErrNoRoom", last)
	}
}

func formatOf(t *testing.T, db *DB) int {
	t.Helper()
	var v []byte
	if err := db.bdb.View(func(txn *badger.Txn) (err error) { v, err = getValue(txn, []byte(keyLedgerFormat)); return err }); err != nil {
		t.Fatal(err)
	}
	if len(v) != 1 {
		t.Fatalf("format mark %x", v)
	}
	return int(v[0])
}
