package ledgerd

import (
	"slices"
	"time"

	"github.com/mira-market/mira/node/clock"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/ledger"
)

// The writer writes this node's own ledger entries for the market (the
// escrow holds of posted jobs and of awards, the settlements of finished
// jobs, a provider's lease and receipt records) off the market loop and
// the runs, so neither waits for a disk. Writes queued while one is on
// disk go together in the next batch, with one sync (group commit).
// Batches are written in the order they were queued; an award waits for
// its hold's batch, whose callback hands the hold back to the market loop.
//
// run's goroutine keeps the queue (writerState) and hands one job at a
// time to the writer's goroutine (writeLoop), which computes the
// entries, writes them and calls the writes' callbacks: those may wait
// for the market loop, which may be queueing a write meanwhile, so run
// never waits for them.

// ledgerWrite is one queued write: the entries it makes, computed just
// before the write (so they see every earlier write), and what to do once
// they are on disk. The market's writes are made in escrow.go and queued
// by the service's market methods (market.go).
type ledgerWrite struct {
	// jobs are the jobs the entries are about: a write is never batched
	// with an earlier one about the same job, which it must see on disk.
	jobs   []protocol.JobID
	bodies func(b *batch) []ledger.Body
	// done gets the entries written, nil where a body was refused, and
	// each refusal's error.
	done func(written []*ledger.Entry, errs []error)
	// fail, if set, is called instead of done for a write that sends and
	// is given up unwritten (the node could not confirm its head within
	// head_wait); a write that sends without it gets done(nil, nil).
	fail func(err error)
	// sends marks a write that a message waits for (an award waiting for
	// its hold): it goes at once, and fails, rather than waits, when the
	// head stays unconfirmed.
	sends bool
	// urgent marks a write that goes at once, without waiting for company
	// (an interactive job's escrow hold, which its award will need within
	// milliseconds); a write that sends is urgent too.
	urgent bool
}

// batch is what the writes of one batch have computed so far, for the
// next to see: what the holds take from the balance, and the leases and
// receipts by job (for the receipts that need a lease).
type batch struct {
	held             uint64
	leases, receipts map[ledger.Hash]uint64
}

// writeJob is work for the writer's goroutine: a batch to write (keep,
// the writes of batch that are still wanted), or writes to fail with err.
type writeJob struct {
	batch, keep []*ledgerWrite
	failed      []*ledgerWrite
	err         error
}

// writerState is the queue, owned by run's goroutine.
type writerState struct {
	queue  []*ledgerWrite
	sends  int // queued or active writes that send messages when done
	urgent int // queued or active writes that must not wait for company
	// busy: the writer's goroutine has a job. draining: the writes queued
	// are written one batch after another, without waiting for company.
	busy, draining bool
	// lazy times the wait for company; stopping: the service's context
	// has ended.
	lazy     clock.Timer
	stopping bool
}

// enqueue queues w (nothing if w is nil). It does not wait for the
// write, only for run's goroutine to take the request.
func (s *Service) enqueue(w *ledgerWrite) {
	if w == nil {
		return
	}
	s.post(func() { s.st.writer.add(w) })
}

func (ws *writerState) add(w *ledgerWrite) {
	ws.queue = append(ws.queue, w)
	if w.sends {
		ws.sends++
	}
	if w.urgent {
		ws.urgent++
	}
}

// hurried reports whether a queued write must go at once.
func (ws *writerState) hurried() bool { return ws.sends > 0 || ws.urgent > 0 }

func (ws *writerState) lazyC() <-chan time.Time {
	if ws.lazy == nil {
		return nil
	}
	return ws.lazy.C()
}

func (ws *writerState) lazyEnded() { ws.lazy, ws.draining = nil, true }

// finish counts a job's writes done.
func (ws *writerState) finish(job writeJob) {
	ws.busy = false
	for _, w := range job.batch {
		ws.forget(w)
	}
}

func (ws *writerState) forget(w *ledgerWrite) {
	if w.sends {
		ws.sends--
	}
	if w.urgent {
		ws.urgent--
	}
}

// lazyWrite is how long writes that send nothing (settlements, lease and
// receipt records, a batch job's posting hold) wait to share a sync with
// others; a write that sends (an award waiting for its hold) or is urgent
// goes at once and takes them along. A sync is the costly part of a write
// (in `mira bench market`, 150 ms instead of 50 cut the CPU per job by
// about 8 %), and nothing waits on these writes: a finished job's hold
// stays open until its settlement is on disk, and one lost to a crash is
// settled on restart.
const lazyWrite = 150 * time.Millisecond

// schedule gives the writer's goroutine its next job, if it has none and
// there is one; it reports false once run should end: the service
// stopped and nothing is left to write. Nothing is written before the
// node has confirmed its head with its peers (see confirmHead): writes
// wait for it, and once it has waited head_wait in vain, writes that
// send (awards waiting for their holds) fail with the reason, so that
// their jobs end and the messages behind them go, while settlements and
// records keep waiting.
func (s *Service) schedule() bool {
	ws := &s.st.writer
	if ws.busy {
		return true
	}
	if !s.head.isOpen() {
		if ws.stopping {
			s.dropUnconfirmed(s.head.err())
			return false
		}
		if s.head.isStalled() {
			s.failSends(s.head.err())
		}
		return true
	}
	if len(ws.queue) == 0 {
		ws.draining = false
		return !ws.stopping
	}
	if !ws.draining && !ws.stopping {
		if !ws.hurried() {
			if ws.lazy == nil {
				ws.lazy = s.clock.NewTimer(lazyWrite)
			}
			return true
		}
		ws.draining = true
	}
	if ws.lazy != nil {
		ws.lazy.Stop()
		ws.lazy = nil
	}
	s.dispatch(ws.next())
	return true
}

// dispatch hands the writer's goroutine a batch. Once the service has
// stopped, writes that would send messages are dropped (their awards
// unsent, their holds unwritten, the jobs re-offered after a restart),
// while settlements and lease and receipt records are still written: a
// node that stops keeps its records.
func (s *Service) dispatch(b []*ledgerWrite) {
	keep := b
	if s.st.writer.stopping {
		keep = slices.DeleteFunc(slices.Clone(b), func(w *ledgerWrite) bool { return w.sends })
	}
	s.st.writer.busy = true
	s.jobs <- writeJob{batch: b, keep: keep}
}

// failSends gives up the queued writes that send, unwritten, with err.
func (s *Service) failSends(err error) {
	ws := &s.st.writer
	var failed []*ledgerWrite
	ws.queue = slices.DeleteFunc(ws.queue, func(w *ledgerWrite) bool {
		if !w.sends {
			return false
		}
		failed = append(failed, w)
		ws.forget(w)
		return true
	})
	if len(failed) > 0 {
		ws.busy = true
		s.jobs <- writeJob{failed: failed, err: err}
	}
}

// dropUnconfirmed drops what is queued when the node stops before it has
// confirmed its head: none of it may be signed. Settlements are made
// again from the job records after the next start; lease and receipt
// records are lost.
func (s *Service) dropUnconfirmed(err error) {
	ws := &s.st.writer
	if n := len(ws.queue); n > 0 {
		s.log.Warn("stopping with ledger writes unwritten", "writes", n, "err", err)
	}
	ws.queue, ws.sends, ws.urgent = nil, 0, 0
}

// next takes the longest prefix of the queue whose writes are about
// different jobs.
func (ws *writerState) next() []*ledgerWrite {
	seen := map[protocol.JobID]bool{}
	k := 0
prefix:
	for ; k < len(ws.queue); k++ {
		for _, id := range ws.queue[k].jobs {
			if seen[id] {
				break prefix
			}
		}
		for _, id := range ws.queue[k].jobs {
			seen[id] = true
		}
	}
	b := ws.queue[:k:k]
	ws.queue = ws.queue[k:]
	return b
}

// writeLoop is the writer's goroutine: it does the jobs run hands it, one
// at a time, and hands each back done.
func (s *Service) writeLoop() {
	defer s.wg.Done()
	for job := range s.jobs {
		if job.failed != nil {
			for _, w := range job.failed {
				switch {
				case w.fail != nil:
					w.fail(job.err)
				case w.done != nil:
					w.done(nil, nil)
				}
			}
		} else {
			s.withDB(func() { s.write(job.keep) })
		}
		s.finished <- job
	}
}

// write appends the batch's entries with one sync and hands each write
// its share.
func (s *Service) write(writes []*ledgerWrite) {
	b := &batch{leases: map[ledger.Hash]uint64{}, receipts: map[ledger.Hash]uint64{}}
	var all []ledger.Body
	ends := make([]int, len(writes))
	for i, w := range writes {
		if w.bodies != nil {
			all = append(all, w.bodies(b)...)
		}
		ends[i] = len(all)
	}
	written, errs := s.appendAll(all, "market ledger write")
	start := 0
	for i, w := range writes {
		if w.done != nil {
			w.done(written[start:ends[i]], errs[start:ends[i]])
		}
		start = ends[i]
	}
}
