package node

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"

	"github.com/mira-market/mira/protocol"
)

// maxJobLog bounds the log kept of one run; output beyond it is dropped
// (the result blob still holds all of stdout).
const maxJobLog = 16 << 20

// logSpill is the size up to which a run's log is kept in memory; a larger
// one moves to a file.
const logSpill = 64 << 10

// logStore keeps complete logs that never spilled to a file.
type logStore interface {
	PutJobLog(name string, log []byte) error
	JobLog(name string) ([]byte, bool, error)
}

// logBook keeps the logs of job runs on the provider that runs them and on
// the requester they stream to. A log starts in memory; one that outgrows
// logSpill moves to a file of its own; a complete small log is stored in
// the database, unless it went in the run's result instead. Readers wait
// on a log for new bytes instead of polling it.
type logBook struct {
	dir   string
	store logStore
	log   *slog.Logger
	mu    sync.Mutex
	logs  map[string]*jobLog
}

func newLogBook(dir string, store logStore, log *slog.Logger) (*logBook, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("logs dir: %w", err)
	}
	return &logBook{dir: dir, store: store, log: log, logs: map[string]*jobLog{}}, nil
}

func logName(job protocol.JobID, attempt uint32) string {
	return fmt.Sprintf("%s.%d.log", job, attempt)
}

// get returns the log of a run: the open one, a complete one from the
// database, a spilled one from its file (resumed, after a restart), or a
// new empty one.
func (b *logBook) get(job protocol.JobID, attempt uint32) (*jobLog, error) {
	name := logName(job, attempt)
	b.mu.Lock()
	defer b.mu.Unlock()
	if l, ok := b.logs[name]; ok {
		return l, nil
	}
	path := filepath.Join(b.dir, name)
	l := &jobLog{path: path, changed: make(chan struct{})}
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

// close spills the logs still open to their files, to be resumed after a
// restart, and closes them.
func (b *logBook) close() {
	b.mu.Lock()
	logs := b.logs
	b.logs = map[string]*jobLog{}
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

// jobLog is one run's log and a broadcast of its changes. Once complete it
// leaves the book; readers keep what they hold of it.
type jobLog struct {
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

func (l *jobLog) broadcast() {
	close(l.changed)
	l.changed = make(chan struct{})
}

// Write appends p, silently dropping what is beyond maxJobLog so a job's
// chatter never fails the job.
func (l *jobLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	room := maxJobLog - l.size
	if room <= 0 || l.done {
		return len(p), nil
	}
	q := p[:min(int64(len(p)), room)]
	if !l.spilled && l.size+int64(len(q)) > logSpill {
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
func (l *jobLog) spill() error {
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

// finish marks the log complete: followers stop once they have read it.
// A log that stayed in memory is stored in the database.
func (l *jobLog) finish() { l.finishUnless(nil) }

// finishUnless is finish, except that a log still in memory is offered to
// elsewhere first: when it returns true (say, the log travels in the
// run's signed result), the log is not stored.
func (l *jobLog) finishUnless(elsewhere func(mem []byte) bool) {
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
	// Stored before the log leaves the book, so get finds it in one or
	// the other; if the database refuses it (the node is closing), the
	// file keeps it.
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

// state returns the log's size, whether it is complete, and a channel
// closed at its next change.
func (l *jobLog) state() (int64, bool, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.size, l.done, l.changed
}

// readAt reads the log at off, from memory or, once spilled, from its
// file (opened into *f on first use).
func (l *jobLog) readAt(f **os.File, p []byte, off int64) (int, error) {
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

// follow sends the log from off to w as it grows, until it is complete (or,
// without follow, until its current end).
func (l *jobLog) follow(ctx context.Context, off int64, follow bool, w func([]byte) error) (int64, error) {
	var f *os.File
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	buf := make([]byte, 64<<10)
	for {
		size, done, changed := l.state()
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

// logsHeader opens a logs stream: which run the bytes belong to. The
// requester answers with how many bytes of it it already has.
func logsHeader(job protocol.JobID, attempt uint32) []byte {
	b := append([]byte{}, job[:]...)
	return binary.AppendUvarint(b, uint64(attempt))
}

// logStreamDelay is how long a provider waits after a run's first output
// before it streams the log: a run that ends by then with a log of at most
// protocol.MaxResultLog bytes sends it in its signed result instead, which
// saves a stream per short job.
const logStreamDelay = 100 * time.Millisecond

// logRoute decides, once, how a run's log reaches the requester: streamed,
// or inside the run's result.
type logRoute struct {
	mu     sync.Mutex
	chosen int
}

const (
	logStreamed = iota + 1
	logInResult
)

// take chooses way unless the other was chosen first, and reports whether
// way is the route.
func (r *logRoute) take(way int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.chosen == 0 {
		r.chosen = way
	}
	return r.chosen == way
}

// streamLogs sends a run's log from the provider to the requester while the
// job runs, resuming after a broken stream, until the log is complete and
// delivered or ctx ends. It starts logStreamDelay after the first output,
// unless the run has ended with a log small enough for its result.
func (n *Node) streamLogs(ctx context.Context, to peer.ID, job protocol.JobID, attempt uint32, l *jobLog, route *logRoute) {
	defer n.wg.Done()
	var delay <-chan time.Time
	for {
		size, done, changed := l.state()
		if done && size <= protocol.MaxResultLog {
			return // the result carries it (or there is none)
		}
		if done || size > protocol.MaxResultLog {
			break
		}
		if size > 0 && delay == nil {
			t := time.NewTimer(logStreamDelay)
			defer t.Stop()
			delay = t.C
		}
		select {
		case <-changed:
			continue
		case <-delay:
		case <-ctx.Done():
			return
		}
		break
	}
	if !route.take(logStreamed) {
		return
	}
	proto := libp2pproto.ID(protocol.LogsProtocol(n.cfg.Network))
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := n.sendLog(ctx, to, proto, job, attempt, l)
		if err == nil {
			return
		}
		n.log.Debug("log stream", "job", job, "to", to, "err", err)
		select {
		case <-time.After(backoff):
			backoff = min(2*backoff, 5*time.Second)
		case <-ctx.Done():
		}
	}
}

func (n *Node) sendLog(ctx context.Context, to peer.ID, proto libp2pproto.ID, job protocol.JobID, attempt uint32, l *jobLog) (err error) {
	st, err := n.host.NewStream(ctx, to, proto)
	if err != nil {
		return err
	}
	// Only a complete log ends the stream cleanly: the requester takes a
	// clean end as "the run's log is complete".
	defer func() {
		if err != nil {
			st.Reset()
		} else {
			st.Close()
		}
	}()
	stop := context.AfterFunc(ctx, func() { st.Reset() })
	defer stop()
	if _, err := st.Write(protocol.Frame(logsHeader(job, attempt))); err != nil {
		return err
	}
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	off, err := binary.ReadUvarint(bufio.NewReader(io.LimitReader(st, binary.MaxVarintLen64)))
	if err != nil {
		return fmt.Errorf("read offset: %w", err)
	}
	st.SetReadDeadline(time.Time{})
	if _, err := l.follow(ctx, int64(off), true, func(b []byte) error { _, err := st.Write(b); return err }); err != nil {
		return err
	}
	return st.CloseWrite()
}

// handleLogs receives a run's log from the provider that holds its lease.
func (n *Node) handleLogs(st network.Stream) {
	defer st.Close()
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(st)
	raw, err := protocol.ReadFrame(br, 48)
	if err != nil || len(raw) < 33 {
		st.Reset()
		return
	}
	job := protocol.JobID(raw[:32])
	attempt, err := binary.ReadUvarint(bytes.NewReader(raw[32:]))
	if err != nil || !n.market.isLeaseHolder(job, uint32(attempt), st.Conn().RemotePeer()) {
		n.market.reject(fmt.Errorf("%w: log stream from a peer without the lease", protocol.ErrSigner))
		st.Reset()
		return
	}
	l, err := n.logs.get(job, uint32(attempt))
	if err != nil {
		st.Reset()
		return
	}
	size, _, _ := l.state()
	if _, err := st.Write(binary.AppendUvarint(nil, uint64(size))); err != nil {
		return
	}
	st.SetReadDeadline(time.Time{})
	if _, err := io.Copy(l, io.LimitReader(br, maxJobLog)); err == nil {
		l.finish() // the provider closes the stream only after the run ended
	}
}
