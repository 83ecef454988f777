package joblogs

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"sync"
	"testing"

	"github.com/mira-market/mira/protocol"
)

// mapLogStore is the database's part of a log book, in memory.
type mapLogStore struct {
	mu   sync.Mutex
	logs map[string][]byte
}

func (s *mapLogStore) PutJobLog(name string, log []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.logs[name] = bytes.Clone(log)
	return nil
}

func (s *mapLogStore) JobLog(name string) ([]byte, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.logs[name]
	return b, ok, nil
}

func readLog(t *testing.T, l *Log) []byte {
	t.Helper()
	var got []byte
	if _, err := l.Follow(context.Background(), 0, false, func(b []byte) error { got = append(got, b...); return nil }); err != nil {
		t.Fatal(err)
	}
	return got
}

func TestJobLogKeepsSmallLogsInTheDatabaseAndSpillsLargeOnes(t *testing.T) {
	for _, tc := range []struct {
		name      string
		size      int
		wantFile  bool
		wantStore bool
	}{
		{"empty", 0, false, false},
		{"small", 100, false, true},
		{"at the spill size", spillAt, false, true},
		{"larger", spillAt + 1, true, false},
		{"much larger", 5 * spillAt, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, store := t.TempDir(), &mapLogStore{logs: map[string][]byte{}}
			book, err := NewBook(Config{Dir: dir, Store: store, Log: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			job := protocol.JobID{1}
			l, err := book.Get(job, 1)
			if err != nil {
				t.Fatal(err)
			}
			want := bytes.Repeat([]byte("0123456789abcdef"), tc.size/16+1)[:tc.size]
			// Written in pieces while a follower reads, across the spill.
			followed := make(chan []byte)
			go func() {
				var got []byte
				l.Follow(context.Background(), 0, true, func(b []byte) error { got = append(got, b...); return nil })
				followed <- got
			}()
			for rest := want; len(rest) > 0; {
				n := min(len(rest), 1000)
				if _, err := l.Write(rest[:n]); err != nil {
					t.Fatal(err)
				}
				rest = rest[n:]
			}
			l.Finish()
			if got := <-followed; !bytes.Equal(got, want) {
				t.Fatalf("follower read %d bytes, want %d", len(got), len(want))
			}
			_, err = os.Stat(l.path)
			if hasFile := err == nil; hasFile != tc.wantFile {
				t.Fatalf("log file exists: %v, want %v", hasFile, tc.wantFile)
			}
			if _, stored, _ := store.JobLog(logName(job, 1)); stored != tc.wantStore {
				t.Fatalf("log stored in the database: %v, want %v", stored, tc.wantStore)
			}
			// The book has let the finished log go; it reads back whole.
			again, err := book.Get(job, 1)
			if err != nil {
				t.Fatal(err)
			}
			if got := readLog(t, again); !bytes.Equal(got, want) {
				t.Fatalf("read back %d bytes, want %d", len(got), len(want))
			}
		})
	}
}

// A log still open when the node closes is kept in a file, and the run's
// log resumes from its end after a restart.
func TestOpenJobLogSurvivesClose(t *testing.T) {
	dir, store := t.TempDir(), &mapLogStore{logs: map[string][]byte{}}
	book, err := NewBook(Config{Dir: dir, Store: store, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	job := protocol.JobID{2}
	l, err := book.Get(job, 3)
	if err != nil {
		t.Fatal(err)
	}
	l.Write([]byte("first half, "))
	book.Close()

	book, err = NewBook(Config{Dir: dir, Store: store, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	l, err = book.Get(job, 3)
	if err != nil {
		t.Fatal(err)
	}
	if size, done, _ := l.State(); size != int64(len("first half, ")) || done {
		t.Fatalf("reopened log: size %d, complete %v", size, done)
	}
	l.Write([]byte("second half"))
	l.Finish()
	if got := string(readLog(t, l)); got != "first half, second half" {
		t.Fatalf("log %q", got)
	}
}

// failingLogStore refuses every write, as a closed database does.
type failingLogStore struct{ mapLogStore }

func (*failingLogStore) PutJobLog(string, []byte) error { return errors.New("database closed") }

// A small log the database refuses at its end is kept in its file.
func TestJobLogFallsBackToItsFile(t *testing.T) {
	dir, store := t.TempDir(), &failingLogStore{mapLogStore{logs: map[string][]byte{}}}
	book, err := NewBook(Config{Dir: dir, Store: store, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	l, err := book.Get(protocol.JobID{3}, 1)
	if err != nil {
		t.Fatal(err)
	}
	l.Write([]byte("last words\n"))
	l.Finish()
	if b, err := os.ReadFile(l.path); err != nil || string(b) != "last words\n" {
		t.Fatalf("log file %q, %v", b, err)
	}
	if got := string(readLog(t, l)); got != "last words\n" {
		t.Fatalf("log %q", got)
	}
}
