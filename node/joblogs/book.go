// Package joblogs keeps the logs of job runs, on the provider that runs a
// job and on the requester its log streams to, and carries them between
// the two over the logs stream protocol.
package joblogs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/mira-market/mira/node/clock"
	"github.com/mira-market/mira/protocol"
)

// MaxLog bounds the log kept of one run; output beyond it is dropped
// (the result blob still holds all of stdout).
const MaxLog = 16 << 20

// spillAt is the size up to which a run's log is kept in memory; a larger
// one moves to a file.
const spillAt = 64 << 10

// Store keeps complete logs that never spilled to a file (the node's
// database).
type Store interface {
	PutJobLog(name string, log []byte) error
	JobLog(name string) ([]byte, bool, error)
}

// Book keeps the logs of job runs on the provider that runs them and on
// the requester they stream to. A log starts in memory; one that outgrows
// spillAt moves to a file of its own; a complete small log is stored in
// the Store, unless it went in the run's result instead. Readers wait on
// a log for new bytes instead of polling it.
type Book struct {
	dir   string
	store Store
	log   *slog.Logger
	clock clock.Clock
	mu    sync.Mutex
	logs  map[string]*Log
}

// Config is what a Book needs.
type Config struct {
	Dir   string // spilled logs' files, created 0700
	Store Store
	Log   *slog.Logger
	Clock clock.Clock // times a follower's linger; the system clock if nil
}

// NewBook opens the book of logs kept in cfg.Dir and cfg.Store.
func NewBook(cfg Config) (*Book, error) {
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("logs dir: %w", err)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.System
	}
	return &Book{dir: cfg.Dir, store: cfg.Store, log: cfg.Log, clock: cfg.Clock, logs: map[string]*Log{}}, nil
}

func logName(job protocol.JobID, attempt uint32) string {
	return fmt.Sprintf("%s.%d.log", job, attempt)
}

// Get returns the log of a run: the open one, a complete one from the
// store, a spilled one from its file (resumed, after a restart), or a
// new empty one.
func (b *Book) Get(job protocol.JobID, attempt uint32) (*Log, error) {
	name := logName(job, attempt)
	b.mu.Lock()
	defer b.mu.Unlock()
	if l, ok := b.logs[name]; ok {
		return l, nil
	}
	path := filepath.Join(b.dir, name)
	l := &Log{path: path, changed: make(chan struct{})}
	if data, ok, err := b.store.JobLog(name); err != nil {
		return nil, err
	} else if ok {
		l.mem, l.size, l.done = data, int64(len(data)), true
		return l, nil
	}
	if f, err := os.OpenFile(path, os.O_RDWR, 0o600); err == nil {
		size, err := f.Seek(0, io.SeekEnd)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("open job log: %w", err)
		}
		l.f, l.spilled, l.size = f, true, size
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("open job log: %w", err)
	}
	l.persist = func(data []byte) error { return b.store.PutJobLog(name, data) }
	l.log = b.log
	l.release = func() {
		b.mu.Lock()
		if b.logs[name] == l {
			delete(b.logs, name)
		}
		b.mu.Unlock()
	}
	b.logs[name] = l
	return l, nil
}

// Close spills the logs still open to their files, to be resumed after a
// restart, and closes them.
func (b *Book) Close() {
	b.mu.Lock()
	logs := b.logs
	b.logs = map[string]*Log{}
	b.mu.Unlock()
	for _, l := range logs {
		l.mu.Lock()
		if !l.done && !l.spilled && l.size > 0 {
			if err := l.spill(); err != nil {
				b.log.Warn("keep open job log", "log", l.path, "err", err)
			}
		}
		if l.f != nil {
			l.f.Close()
			l.f = nil
		}
		l.done = true
		l.broadcast()
		l.mu.Unlock()
	}
}

// Log is one run's log and a broadcast of its changes. Once complete it
// leaves the book; readers keep what they hold of it.
type Log struct {
	path    string
	persist func([]byte) error // stores a complete log that never spilled
	release func()
	log     *slog.Logger
	mu      sync.Mutex
	mem     []byte   // the log, until it spills
	f       *os.File // write handle once spilled; nil once complete
	spilled bool
	size    int64
	done    bool
	changed chan struct{} // closed and replaced on every change
}

func (l *Log) broadcast() {
	close(l.changed)
	l.changed = make(chan struct{})
}

// Write appends p, silently dropping what is beyond MaxLog so a job's
// chatter never fails the job.
func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	room := MaxLog - l.size
	if room <= 0 || l.done {
		return len(p), nil
	}
	q := p[:min(int64(len(p)), room)]
	if !l.spilled && l.size+int64(len(q)) > spillAt {
		if err := l.spill(); err != nil {
			return 0, fmt.Errorf("job log: %w", err)
		}
	}
	var err error
	if l.spilled {
		var n int
		n, err = l.f.WriteAt(q, l.size)
		q = q[:n]
	} else {
		l.mem = append(l.mem, q...)
	}
	l.size += int64(len(q))
	l.broadcast()
	if err != nil {
		return len(q), fmt.Errorf("job log: %w", err)
	}
	return len(p), nil
}

// spill moves the log from memory to its file; l.mu is held.
func (l *Log) spill() error {
	f, err := os.OpenFile(l.path, os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(l.mem); err != nil {
		f.Close()
		return err
	}
	l.f, l.mem, l.spilled = f, nil, true
	return nil
}

// Finish marks the log complete: followers stop once they have read it.
// A log that stayed in memory is stored in the Store.
func (l *Log) Finish() { l.FinishUnless(nil) }

// FinishUnless is Finish, except that a log still in memory is offered to
// elsewhere first: when it returns true (say, the log travels in the
// run's signed result), the log is not stored.
func (l *Log) FinishUnless(elsewhere func(mem []byte) bool) {
	l.mu.Lock()
	if l.done {
		l.mu.Unlock()
		return
	}
	l.done = true
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
	l.broadcast()
	mem, spilled := l.mem, l.spilled
	l.mu.Unlock()
	defer l.release()
	if spilled || len(mem) == 0 || (elsewhere != nil && elsewhere(mem)) {
		return
	}
	// Stored before the log leaves the book, so Get finds it in one or
	// the other; if the store refuses it (the node is closing), the file
	// keeps it.
	if err := l.persist(mem); err != nil {
		l.mu.Lock()
		if err := l.spill(); err != nil {
			l.log.Warn("job log lost", "log", l.path, "err", err)
		}
		if l.f != nil {
			l.f.Close()
			l.f = nil
		}
		l.mu.Unlock()
	}
}

// State returns the log's size, whether it is complete, and a channel
// closed at its next change.
func (l *Log) State() (int64, bool, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.size, l.done, l.changed
}

// readAt reads the log at off, from memory or, once spilled, from its
// file (opened into *f on first use).
func (l *Log) readAt(f **os.File, p []byte, off int64) (int, error) {
	l.mu.Lock()
	if !l.spilled {
		n := copy(p, l.mem[off:])
		l.mu.Unlock()
		return n, nil
	}
	l.mu.Unlock()
	if *f == nil {
		var err error
		if *f, err = os.Open(l.path); err != nil {
			return 0, err
		}
	}
	return (*f).ReadAt(p, off)
}

// Follow sends the log from off to w as it grows, until it is complete
// (or, without follow, until its current end).
func (l *Log) Follow(ctx context.Context, off int64, follow bool, w func([]byte) error) (int64, error) {
	var f *os.File
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	buf := make([]byte, 64<<10)
	for {
		size, done, changed := l.State()
		for off < size {
			n, err := l.readAt(&f, buf[:min(int64(len(buf)), size-off)], off)
			if n > 0 {
				if werr := w(buf[:n]); werr != nil {
					return off, werr
				}
				off += int64(n)
			}
			if err != nil && !errors.Is(err, io.EOF) {
				return off, fmt.Errorf("read job log: %w", err)
			}
		}
		if done || !follow {
			return off, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return off, ctx.Err()
		}
	}
}
