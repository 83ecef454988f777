package node

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
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

// logBook keeps the logs of job runs, one file per job and attempt, on the
// provider that runs it and on the requester it streams to. Readers wait on
// a log for new bytes instead of polling it.
type logBook struct {
	dir  string
	mu   sync.Mutex
	logs map[string]*jobLog
}

func newLogBook(dir string) (*logBook, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("logs dir: %w", err)
	}
	return &logBook{dir: dir, logs: map[string]*jobLog{}}, nil
}

func logName(job protocol.JobID, attempt uint32) string {
	return fmt.Sprintf("%s.%d.log", job, attempt)
}

// get returns the log of a run, opening (creating) its file.
func (b *logBook) get(job protocol.JobID, attempt uint32) (*jobLog, error) {
	name := logName(job, attempt)
	b.mu.Lock()
	defer b.mu.Unlock()
	if l, ok := b.logs[name]; ok {
		return l, nil
	}
	f, err := os.OpenFile(filepath.Join(b.dir, name), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open job log: %w", err)
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open job log: %w", err)
	}
	l := &jobLog{f: f, path: f.Name(), size: size, changed: make(chan struct{})}
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

// close closes every open log file.
func (b *logBook) close() {
	b.mu.Lock()
	logs := b.logs
	b.logs = map[string]*jobLog{}
	b.mu.Unlock()
	for _, l := range logs {
		l.finish()
	}
}

// jobLog is one run's log: an append-only file and a broadcast of changes.
// The write handle is closed, and the log leaves the book, once it is
// complete; readers open their own.
type jobLog struct {
	path    string
	release func()
	mu      sync.Mutex
	f       *os.File // nil once complete
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
	if room <= 0 || l.done || l.f == nil {
		return len(p), nil
	}
	q := p[:min(int64(len(p)), room)]
	n, err := l.f.WriteAt(q, l.size)
	l.size += int64(n)
	l.broadcast()
	if err != nil {
		return n, fmt.Errorf("job log: %w", err)
	}
	return len(p), nil
}

// finish marks the log complete: followers stop once they have read it.
func (l *jobLog) finish() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.done {
		l.done = true
		l.f.Close()
		l.f = nil
		l.broadcast()
		l.release()
	}
}

// state returns the log's size, whether it is complete, and a channel
// closed at its next change.
func (l *jobLog) state() (int64, bool, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.size, l.done, l.changed
}

// follow sends the log from off to w as it grows, until it is complete (or,
// without follow, until its current end).
func (l *jobLog) follow(ctx context.Context, off int64, follow bool, w func([]byte) error) (int64, error) {
	f, err := os.Open(l.path)
	if err != nil {
		return off, fmt.Errorf("read job log: %w", err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		size, done, changed := l.state()
		for off < size {
			n, err := f.ReadAt(buf[:min(int64(len(buf)), size-off)], off)
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

// streamLogs sends a run's log from the provider to the requester while the
// job runs, resuming after a broken stream, until the log is complete and
// delivered or ctx ends.
func (n *Node) streamLogs(ctx context.Context, to peer.ID, job protocol.JobID, attempt uint32, l *jobLog) {
	defer n.wg.Done()
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
	raw, err := readFrameLimit(br, 48)
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
