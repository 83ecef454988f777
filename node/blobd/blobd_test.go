package blobd

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/node/blob"
)

// memDB keeps the service's records in memory and counts the blob
// records written.
type memDB struct {
	mu      sync.Mutex
	records map[string][]byte
	puts    int
	readers map[string]bool // id + reader
}

func newMemDB() *memDB { return &memDB{records: map[string][]byte{}, readers: map[string]bool{}} }

func (db *memDB) PutBlobRecord(name string, rec []byte) error {
	db.mu.Lock()
	defer db.mu.Unlock()
	db.records[name] = rec
	db.puts++
	return nil
}

func (db *memDB) DeleteBlobRecord(name string) error {
	db.mu.Lock()
	defer db.mu.Unlock()
	delete(db.records, name)
	return nil
}

func (db *memDB) BlobRecords(fn func(name string, rec []byte) error) error {
	db.mu.Lock()
	defer db.mu.Unlock()
	for name, rec := range db.records {
		if err := fn(name, rec); err != nil {
			return err
		}
	}
	return nil
}

func (db *memDB) PutResultReader(id string, reader []byte) error {
	db.mu.Lock()
	defer db.mu.Unlock()
	db.readers[id+string(reader)] = true
	return nil
}

func (db *memDB) MayReadResult(id string, reader []byte) (bool, error) {
	db.mu.Lock()
	defer db.mu.Unlock()
	return db.readers[id+string(reader)], nil
}

func (db *memDB) recordPuts() int {
	db.mu.Lock()
	defer db.mu.Unlock()
	return db.puts
}

func newService(t *testing.T, db DB, withDB func(func()) bool) *Service {
	t.Helper()
	s, err := New(Config{Dir: t.TempDir(), MaxSize: 1 << 20, DB: db, WithDB: withDB})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// The collector runs every CollectInterval and once more when the
// service stops: a blob's last use, too recent to be written when it was
// read, reaches the database at the next pass and not before. Time is
// synctest's: the test takes no wall time.
func TestCollectLoopStoresLastUseEveryInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		db := newMemDB()
		s := newService(t, db, nil)
		ctx, cancel := context.WithCancel(context.Background())
		s.Start(ctx)
		wantPuts := func(when string, want int) {
			t.Helper()
			synctest.Wait()
			if got := db.recordPuts(); got != want {
				t.Fatalf("%s: %d blob records written, want %d", when, got, want)
			}
		}
		// putAndUse stores a blob, written at once, and reads it 10 s
		// later: too soon after the write for its last use to be written.
		putAndUse := func(content string) func() {
			id, err := s.Store().PutBytes([]byte(content), blob.Cached)
			if err != nil {
				t.Fatal(err)
			}
			use := func() {
				f, _, err := s.Store().Open(id)
				if err != nil {
					t.Fatal(err)
				}
				f.Close()
			}
			time.Sleep(10 * time.Second)
			use()
			return use
		}

		putAndUse("first")
		wantPuts("stored and used", 1)
		time.Sleep(CollectInterval - 10*time.Second - time.Nanosecond)
		wantPuts("just before the first pass", 1)
		time.Sleep(time.Nanosecond)
		wantPuts("at the first pass", 2)

		time.Sleep(CollectInterval - 20*time.Second)
		useSecond := putAndUse("second")
		wantPuts("second stored and used", 3)
		time.Sleep(10*time.Second - time.Nanosecond)
		wantPuts("just before the second pass", 3)
		time.Sleep(time.Nanosecond)
		wantPuts("at the second pass", 4)

		time.Sleep(20 * time.Second)
		useSecond()
		wantPuts("used again", 4)
		cancel()
		s.Close()
		wantPuts("after the last pass on stop", 5)
	})
}

// The operator's API answers: the error each bad request maps to, and a
// stored blob read back and deleted.
func TestOperatorBlobs(t *testing.T) {
	s := newService(t, newMemDB(), nil)
	info, err := s.Put(strings.NewReader("operator's"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(strings.NewReader(strings.Repeat("x", 1<<20+1))); !errors.Is(err, api.ErrTooLarge) {
		t.Errorf("a blob over the size limit: %v, want api.ErrTooLarge", err)
	}
	f, got, err := s.Open(info.ID)
	if err != nil || got != info {
		t.Fatalf("open the stored blob: %v, %v; want %v", got, err, info)
	}
	f.Close()
	const missing = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
	for _, tc := range []struct {
		name, id string
		notFound bool
	}{
		{"not an ID", "x", false},
		{"not stored", missing, true},
	} {
		_, err := s.Delete(tc.id)
		if err == nil || errors.Is(err, api.ErrNotFound) != tc.notFound {
			t.Errorf("delete %s: %v, want an error (not found: %v)", tc.name, err, tc.notFound)
		}
		if _, _, err := s.Open(tc.id); !errors.Is(err, api.ErrNotFound) {
			t.Errorf("open %s: %v, want api.ErrNotFound", tc.name, err)
		}
	}
	del, err := s.Delete(info.ID)
	if err != nil || !del.Removed || del.ID != info.ID {
		t.Fatalf("delete the stored blob: %+v, %v", del, err)
	}
	if _, _, err := s.Open(info.ID); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("open after delete: %v, want api.ErrNotFound", err)
	}
}

// Who may read a stored result is kept in the database; once it is
// closed, nobody may, and nothing is written.
func TestResultReadersAfterTheDatabaseClosed(t *testing.T) {
	open := true
	s := newService(t, newMemDB(), func(f func()) bool {
		if open {
			f()
		}
		return open
	})
	id, err := s.Store().PutBytes([]byte("result"), blob.Held)
	if err != nil {
		t.Fatal(err)
	}
	requester, other := peer.ID("requester"), peer.ID("other")
	if err := s.AllowReader(id.String(), requester); err != nil {
		t.Fatal(err)
	}
	if !s.MayRead(id, requester) || s.MayRead(id, other) {
		t.Fatal("only the job's requester may read its result")
	}
	open = false
	if s.MayRead(id, requester) {
		t.Error("a reader allowed after the database closed")
	}
	if err := s.AllowReader(id.String(), other); !errors.Is(err, errDBClosed) {
		t.Errorf("allow a reader after the database closed: %v, want errDBClosed", err)
	}
}
