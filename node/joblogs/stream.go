package joblogs

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"

	"github.com/mira-market/mira/node/clock"
	"github.com/mira-market/mira/protocol"
)

// StreamDelay is how long a provider waits after a run's first output
// before it streams the log: a run that ends by then with a log of at most
// protocol.MaxResultLog bytes sends it in its signed result instead, which
// saves a stream per short job.
const StreamDelay = 100 * time.Millisecond

// Streams carries runs' logs over the logs protocol: a provider sends the
// log of a run it holds the lease of (Send), a requester receives it into
// its Book (Handle).
type Streams struct {
	host       host.Host
	proto      libp2pproto.ID
	book       *Book
	log        *slog.Logger
	holdsLease func(job protocol.JobID, attempt uint32, p peer.ID) bool
	refused    func(error)
	clock      clock.Clock
}

// StreamsConfig is what Streams need.
type StreamsConfig struct {
	Host    host.Host
	Network string
	Book    *Book // where received logs go
	Log     *slog.Logger
	// HoldsLease reports whether p holds the lease of this node's job
	// with the given attempt: only that peer may stream its log here.
	HoldsLease func(job protocol.JobID, attempt uint32, p peer.ID) bool
	// Refused is told of a log stream from a peer without the lease.
	Refused func(error)
	// Clock times the sender's delay and backoff; the system clock if
	// nil.
	Clock clock.Clock
}

// NewStreams returns the logs protocol's two ends; the caller registers
// Handle as the host's handler of LogsProtocol.
func NewStreams(cfg StreamsConfig) *Streams {
	if cfg.Clock == nil {
		cfg.Clock = clock.System
	}
	return &Streams{
		host: cfg.Host, proto: libp2pproto.ID(protocol.LogsProtocol(cfg.Network)), book: cfg.Book, log: cfg.Log,
		holdsLease: cfg.HoldsLease, refused: cfg.Refused, clock: cfg.Clock,
	}
}

// header opens a logs stream: which run the bytes belong to. The
// requester answers with how many bytes of it it already has.
func header(job protocol.JobID, attempt uint32) []byte {
	b := append([]byte{}, job[:]...)
	return binary.AppendUvarint(b, uint64(attempt))
}

// Send sends a run's log from the provider to the requester while the
// job runs, resuming after a broken stream, until the log is complete and
// delivered or ctx ends. It starts StreamDelay after the first output,
// unless the run has ended with a log small enough for its result (then
// route is InResult, and nothing is sent).
func (s *Streams) Send(ctx context.Context, to peer.ID, job protocol.JobID, attempt uint32, l *Log, route *Route) {
	if !s.awaitStream(ctx, l) || !route.Take(Streamed) {
		return
	}
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := s.sendOnce(ctx, to, job, attempt, l)
		if err == nil {
			return
		}
		s.log.Debug("log stream", "job", job, "to", to, "err", err)
		select {
		case <-clock.After(s.clock, backoff):
			backoff = min(2*backoff, 5*time.Second)
		case <-ctx.Done():
		}
	}
}

// awaitStream waits until the log is to be streamed: over
// protocol.MaxResultLog, or StreamDelay after its first bytes while the
// run goes on, or complete but too large for the result. It reports false
// when the result carries the log (or there is none), or ctx ended.
func (s *Streams) awaitStream(ctx context.Context, l *Log) bool {
	var delay <-chan time.Time
	for {
		size, done, changed := l.State()
		if done && size <= protocol.MaxResultLog {
			return false // the result carries it (or there is none)
		}
		if done || size > protocol.MaxResultLog {
			return true
		}
		if size > 0 && delay == nil {
			delay = clock.After(s.clock, StreamDelay)
		}
		select {
		case <-changed:
		case <-delay:
			return true
		case <-ctx.Done():
			return false
		}
	}
}

func (s *Streams) sendOnce(ctx context.Context, to peer.ID, job protocol.JobID, attempt uint32, l *Log) (err error) {
	st, err := s.host.NewStream(ctx, to, s.proto)
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
	if _, err := st.Write(protocol.Frame(header(job, attempt))); err != nil {
		return err
	}
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	off, err := binary.ReadUvarint(bufio.NewReader(io.LimitReader(st, binary.MaxVarintLen64)))
	if err != nil {
		return fmt.Errorf("read offset: %w", err)
	}
	st.SetReadDeadline(time.Time{})
	if _, err := l.Follow(ctx, int64(off), true, func(b []byte) error { _, err := st.Write(b); return err }); err != nil {
		return err
	}
	return st.CloseWrite()
}

// Handle receives a run's log from the provider that holds its lease.
func (s *Streams) Handle(st network.Stream) {
	defer st.Close()
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(st)
	raw, err := protocol.ReadFrame(br, maxHeader)
	if err != nil || len(raw) < 33 {
		st.Reset()
		return
	}
	job := protocol.JobID(raw[:32])
	attempt, err := binary.ReadUvarint(bytes.NewReader(raw[32:]))
	if err != nil || !s.holdsLease(job, uint32(attempt), st.Conn().RemotePeer()) {
		s.refused(fmt.Errorf("%w: log stream from a peer without the lease", protocol.ErrSigner))
		st.Reset()
		return
	}
	l, err := s.book.Get(job, uint32(attempt))
	if err != nil {
		st.Reset()
		return
	}
	size, _, _ := l.State()
	if _, err := st.Write(binary.AppendUvarint(nil, uint64(size))); err != nil {
		return
	}
	st.SetReadDeadline(time.Time{})
	if _, err := io.Copy(l, io.LimitReader(br, MaxLog)); err == nil {
		l.Finish() // the provider closes the stream only after the run ended
	}
}

// maxHeader bounds a stream's header frame: a job ID and an attempt.
const maxHeader = 48
