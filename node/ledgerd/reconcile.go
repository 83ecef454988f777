package ledgerd

import (
	"bufio"
	"bytes"
	"cmp"
	"container/heap"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/protocol/riblt"
	"github.com/mira-market/mira/storage"
)

// ledgerSet is the node's reconciliation summary of its ledger: every
// stored entry's hash, kept current by the ledger's store hook.
type ledgerSet struct {
	mu  sync.Mutex
	set *riblt.Set
}

func (s *ledgerSet) add(h ledger.Hash) {
	s.mu.Lock()
	s.set.Add(h)
	s.mu.Unlock()
}

func (s *ledgerSet) snapshot() *riblt.Set {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.set.Snapshot()
}

// countingStream counts the bytes read and written through it.
type countingStream struct {
	network.Stream
	n int64
}

func (c *countingStream) Read(p []byte) (int, error) {
	n, err := c.Stream.Read(p)
	c.n += int64(n)
	return n, err
}

func (c *countingStream) Write(p []byte) (int, error) {
	n, err := c.Stream.Write(p)
	c.n += int64(n)
	return n, err
}

// StartReconciling reconciles the ledger with a random connected peer
// every ReconcileInterval, and with each peer that comes on connected,
// until the service stops.
func (s *Service) StartReconciling(connected <-chan peer.ID) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.reconcileLoop(s.ctx, connected)
	}()
}

func (s *Service) reconcileLoop(ctx context.Context, connected <-chan peer.ID) {
	t := s.clock.NewTicker(s.cfg.ReconcileInterval)
	defer t.Stop()
	for {
		var p peer.ID
		select {
		case <-ctx.Done():
			return
		case p = <-connected:
		case <-t.C():
			peers := s.host.Network().Peers()
			if len(peers) == 0 {
				continue
			}
			p = peers[rand.IntN(len(peers))]
		}
		if s.disk.Low() != nil {
			continue // it could not store what it learns
		}
		if err := s.Reconcile(ctx, p); err != nil && ctx.Err() == nil {
			s.log.Debug("reconcile", "peer", p, "err", err)
		}
	}
}

// Reconcile runs one reconciliation session with p: both ledgers end up
// with the union of their entries (those that validate).
func (s *Service) Reconcile(ctx context.Context, p peer.ID) error {
	err := s.reconcile(ctx, p)
	if errors.Is(err, riblt.ErrDifferenceTooLarge) || errors.Is(err, riblt.ErrAborted) {
		s.countReconcile(func(st *ReconcileStats) { st.Fallbacks++ })
		err = s.fetchListing(ctx, p)
	}
	s.countReconcile(func(st *ReconcileStats) {
		st.Sessions++
		if err != nil {
			st.Failures++
		}
	})
	return err
}

func (s *Service) openSync(ctx context.Context, p peer.ID, kind byte) (network.Stream, *bufio.Reader, *bufio.Writer, error) {
	st, err := s.host.NewStream(ctx, p, s.syncProtocol())
	if err != nil {
		return nil, nil, nil, fmt.Errorf("ledger sync with %s: %w", p, err)
	}
	st.SetDeadline(time.Now().Add(syncTimeout))
	cs := &countingStream{Stream: st}
	bw := bufio.NewWriter(cs)
	bw.WriteByte(kind)
	return cs, bufio.NewReader(cs), bw, nil
}

// closeSync closes a stream from openSync and counts its bytes.
func (s *Service) closeSync(st network.Stream) {
	st.Close()
	if cs, ok := st.(*countingStream); ok {
		s.countReconcile(func(st *ReconcileStats) { st.Bytes += cs.n })
	}
}

// reconcile is the initiator's side: it streams its coded symbols, the
// peer decodes the difference, then each side sends the entries the other
// lacks, the initiator first.
func (s *Service) reconcile(ctx context.Context, p peer.ID) error {
	ctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	st, br, bw, err := s.openSync(ctx, p, protocol.SyncReconcile)
	if err != nil {
		return err
	}
	defer s.closeSync(st)
	stop := context.AfterFunc(ctx, func() { st.Reset() })
	defer stop()
	snap := s.rset.snapshot()
	defer snap.Release()
	x := riblt.NewInitiator(snap, riblt.Config{})
	if err := protocol.WriteFrame(bw, x.Start()); err != nil {
		return err
	}
	for done := false; !done; {
		if err := bw.Flush(); err != nil {
			return err
		}
		frame, err := protocol.ReadFrame(br, protocol.MaxSyncFrame)
		if err != nil {
			return fmt.Errorf("reconcile: %w", err)
		}
		var out [][]byte
		if out, done, err = x.Step(frame); err != nil {
			return err
		}
		for _, o := range out {
			if err := protocol.WriteFrame(bw, o); err != nil {
				return err
			}
		}
	}
	snap.Release() // the symbols are done with; the entries exchange may take a while
	return s.exchangeEntries(p, br, bw, x.Extra(), true)
}

// serveReconcile is the responder's side of reconcile, with p.
func (s *Service) serveReconcile(p peer.ID, br *bufio.Reader, bw *bufio.Writer) error {
	snap := s.rset.snapshot()
	defer snap.Release()
	r := riblt.NewResponder(snap, riblt.Config{})
	for done := false; !done; {
		frame, err := protocol.ReadFrame(br, protocol.MaxSyncFrame)
		if err != nil {
			return fmt.Errorf("reconcile: %w", err)
		}
		var out [][]byte
		out, done, err = r.Step(frame)
		for _, o := range out {
			if werr := protocol.WriteFrame(bw, o); werr != nil {
				return werr
			}
		}
		if ferr := bw.Flush(); ferr != nil {
			return ferr
		}
		if err != nil {
			// The abort frame is out; ending the stream cleanly lets the
			// initiator read it (a reset could overtake it) and fall back.
			s.log.Debug("reconcile session ended", "err", err)
			return nil
		}
	}
	snap.Release()
	return s.exchangeEntries(p, br, bw, r.Extra(), false)
}

// exchangeEntries sends the entries of extra (which peer p lacks) and
// receives p's, in turn: the initiator sends first, so neither side
// writes while the other has unread data.
func (s *Service) exchangeEntries(p peer.ID, br *bufio.Reader, bw *bufio.Writer, extra [][32]byte, first bool) error {
	if first {
		if err := s.sendEntries(bw, extra); err != nil {
			return err
		}
		return s.receiveEntries(p, br)
	}
	if err := s.receiveEntries(p, br); err != nil {
		return err
	}
	return s.sendEntries(bw, extra)
}

func (s *Service) sendEntries(bw *bufio.Writer, hashes [][32]byte) error {
	sent := 0
	for _, h := range hashes[:min(len(hashes), protocol.MaxSyncEntries)] {
		e, err := s.ledger.EntryByHash(h)
		if err != nil {
			continue // e.g. pruned by a fraud proof since the snapshot
		}
		if err := protocol.WriteFrame(bw, e.Encode()); err != nil {
			return err
		}
		sent++
	}
	if err := protocol.WriteFrame(bw, nil); err != nil {
		return err
	}
	s.countReconcile(func(st *ReconcileStats) { st.Sent += sent })
	return bw.Flush()
}

// receiveEntries reads entries from p (each at most an entry's size) and
// ingests them in batches, so a peer can make this node hold at most one
// batch.
func (s *Service) receiveEntries(p peer.ID, br *bufio.Reader) error {
	var raws [][]byte
	for count := 0; ; count++ {
		b, err := protocol.ReadFrame(br, ledger.MaxEntrySize)
		if err != nil {
			return fmt.Errorf("reconcile entries: %w", err)
		}
		if len(b) == 0 {
			break
		}
		if count == protocol.MaxSyncEntries {
			return fmt.Errorf("reconcile entries: more than %d", protocol.MaxSyncEntries)
		}
		if raws = append(raws, b); len(raws) == ingestBatch {
			if err := s.ingestSynced(p, raws); err != nil {
				return err
			}
			raws = nil
		}
	}
	return s.ingestSynced(p, raws)
}

// ingestBatch is how many received entries are ingested (and synced) at once.
const ingestBatch = 1024

// ingestSynced ingests entries a reconciliation fetched from p and counts
// them.
func (s *Service) ingestSynced(p peer.ID, raws [][]byte) error {
	res, err := s.ingestFetched(p, raws)
	if err != nil {
		return err
	}
	s.countReconcile(func(st *ReconcileStats) { st.Received += len(res.Accepted) })
	return nil
}

// ingestFetched ingests entries fetched from peer p, gossips the proof of
// any equivocation they reveal, counts those refused, and sends p the
// proof against any frozen account whose entries it offered.
func (s *Service) ingestFetched(p peer.ID, raws [][]byte) (storage.IngestResult, error) {
	if len(raws) == 0 {
		return storage.IngestResult{}, nil
	}
	if err := s.disk.Low(); err != nil {
		return storage.IngestResult{}, err
	}
	res, err := s.ledger.IngestMany(raws)
	if err != nil {
		return res, err
	}
	for _, proof := range res.Fraud {
		s.spreadFraud(proof)
	}
	s.rejected.Add(float64(len(res.Rejected)))
	s.sendFraudProofs(p, res.Rejected)
	return res, nil
}

// fetchListing is the fallback for a difference too large to decode (a new
// node): the peer lists every entry it holds, each with its time, and this
// node asks for the oldest protocol.MaxSyncEntries it lacks, in time order:
// an entry after the entries it builds on (its chain's earlier entries,
// the payments that fund a hold).
func (s *Service) fetchListing(ctx context.Context, p peer.ID) error {
	ctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	st, br, bw, err := s.openSync(ctx, p, protocol.SyncList)
	if err != nil {
		return err
	}
	defer s.closeSync(st)
	stop := context.AfterFunc(ctx, func() { st.Reset() })
	defer stop()
	if err := bw.Flush(); err != nil {
		return err
	}
	missing := oldest{limit: protocol.MaxSyncEntries}
	err = readRecords(br, protocol.ListingRecord, func(rec []byte) error {
		item := storage.LedgerItem{Hash: ledger.Hash(rec[:32]), Time: int64(binary.BigEndian.Uint64(rec[32:]))}
		ok, err := s.ledger.Has(item.Hash)
		if err == nil && !ok {
			missing.add(item)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("listing: %w", err)
	}
	rw := recordWriter{bw: bw}
	for _, item := range missing.sorted() {
		if err := rw.add(item.Hash[:]); err != nil {
			return err
		}
	}
	if err := rw.end(); err != nil {
		return err
	}
	return s.receiveEntries(p, br)
}

// serveListing answers fetchListing: every entry's hash and time, then the
// entries asked for.
func (s *Service) serveListing(br *bufio.Reader, bw *bufio.Writer) error {
	rw := recordWriter{bw: bw}
	var rec [protocol.ListingRecord]byte
	for item, err := range s.ledger.Items() {
		if err != nil {
			return err
		}
		copy(rec[:], item.Hash[:])
		binary.BigEndian.PutUint64(rec[32:], uint64(item.Time))
		if err := rw.add(rec[:]); err != nil {
			return err
		}
	}
	if err := rw.end(); err != nil {
		return err
	}
	var asked [][32]byte
	err := readRecords(br, 32, func(h []byte) error {
		if len(asked) == protocol.MaxSyncEntries {
			return fmt.Errorf("more than %d hashes asked for", protocol.MaxSyncEntries)
		}
		asked = append(asked, [32]byte(h))
		return nil
	})
	if err != nil {
		return fmt.Errorf("listing request: %w", err)
	}
	return s.sendEntries(bw, asked)
}

// oldest keeps the limit oldest of the items it is given, by (time, hash).
type oldest struct {
	limit int
	items []storage.LedgerItem // a heap, the newest on top
}

func itemOrder(a, b storage.LedgerItem) int {
	return cmp.Or(cmp.Compare(a.Time, b.Time), bytes.Compare(a.Hash[:], b.Hash[:]))
}

func (o *oldest) add(item storage.LedgerItem) {
	switch {
	case len(o.items) < o.limit:
		heap.Push(o, item)
	case o.limit > 0 && itemOrder(item, o.items[0]) < 0:
		o.items[0] = item
		heap.Fix(o, 0)
	}
}

// sorted returns the items kept, oldest first, each once (a lister that
// repeats a record spoils only its own session).
func (o *oldest) sorted() []storage.LedgerItem {
	byHash := func(a, b storage.LedgerItem) int {
		return cmp.Or(bytes.Compare(a.Hash[:], b.Hash[:]), cmp.Compare(a.Time, b.Time))
	}
	slices.SortFunc(o.items, byHash)
	o.items = slices.CompactFunc(o.items, func(a, b storage.LedgerItem) bool { return a.Hash == b.Hash })
	slices.SortFunc(o.items, itemOrder)
	return o.items
}

// Len, Less, Swap, Push and Pop make oldest a heap (container/heap).
func (o *oldest) Len() int           { return len(o.items) }
func (o *oldest) Less(i, j int) bool { return itemOrder(o.items[i], o.items[j]) > 0 }
func (o *oldest) Swap(i, j int)      { o.items[i], o.items[j] = o.items[j], o.items[i] }
func (o *oldest) Push(x any)         { o.items = append(o.items, x.(storage.LedgerItem)) }
func (o *oldest) Pop() any {
	last := o.items[len(o.items)-1]
	o.items = o.items[:len(o.items)-1]
	return last
}

// recordWriter writes a list of fixed-size records as full frames, then
// an empty frame, and flushes.
type recordWriter struct {
	bw    *bufio.Writer
	frame []byte
}

func (w *recordWriter) add(rec []byte) error {
	if w.frame = append(w.frame, rec...); len(w.frame)+len(rec) <= protocol.MaxSyncFrame {
		return nil
	}
	err := protocol.WriteFrame(w.bw, w.frame)
	w.frame = w.frame[:0]
	return err
}

func (w *recordWriter) end() error {
	if len(w.frame) > 0 {
		if err := protocol.WriteFrame(w.bw, w.frame); err != nil {
			return err
		}
	}
	if err := protocol.WriteFrame(w.bw, nil); err != nil {
		return err
	}
	return w.bw.Flush()
}

// readRecords reads frames of size-byte records until an empty frame,
// passing each record to use; an error from use ends the read.
func readRecords(br *bufio.Reader, size int, use func([]byte) error) error {
	for {
		frame, err := protocol.ReadFrame(br, protocol.MaxSyncFrame)
		if err != nil {
			return err
		}
		if len(frame) == 0 {
			return nil
		}
		if len(frame)%size != 0 {
			return fmt.Errorf("frame of %d bytes is not a list of %d-byte records", len(frame), size)
		}
		for i := 0; i < len(frame); i += size {
			if err := use(frame[i : i+size]); err != nil {
				return err
			}
		}
	}
}
