package node

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/storage"
)

// ledgerWriter writes this node's own ledger entries for the market (the
// escrow holds of posted jobs and of awards, the settlements of finished
// jobs, a provider's lease and receipt records) off the market loop and
// the runs, so neither waits for a disk. Writes queued while one is on
// disk go together in the next batch, with one sync (group commit).
// Batches are written in the order they were queued, and what a write
// sends afterwards (an award carrying its hold) goes out in that order.
type ledgerWriter struct {
	n    *Node
	wake chan struct{}

	mu     sync.Mutex
	queue  []*ledgerWrite
	sends  int // queued or active writes that send messages when done
	urgent int // queued or active writes that must not wait for company

	// batchHeld is what the holds computed so far for the batch being
	// written take from the balance, and batchLeases and batchReceipts
	// count its leases and receipts by job, for the receipts that need a
	// lease (used by the writer goroutine only).
	batchHeld                  uint64
	batchLeases, batchReceipts map[storage.Hash]uint64
}

// ledgerWrite is one queued write: the entries it makes, computed just
// before the write (so they see every earlier write), and what to do once
// they are on disk.
type ledgerWrite struct {
	// jobs are the jobs the entries are about: a write is never batched
	// with an earlier one about the same job, which it must see on disk.
	jobs   []protocol.JobID
	bodies func() []storage.Body
	// done gets the entries written, nil where a body was refused, and
	// each refusal's error.
	done func(written []*storage.Entry, errs []error)
	// fail, if set, is called instead of done for a write that sends and
	// is given up unwritten (the node could not confirm its head within
	// head_wait); a write that sends without it gets done(nil, nil).
	fail func(err error)
	// sends marks a write whose done sends market messages: while one is
	// pending, the market loop queues its messages behind it.
	sends bool
	// urgent marks a write that goes at once, without waiting for company
	// (an interactive job's escrow hold, which its award will need within
	// milliseconds); a write that sends is urgent too.
	urgent bool
}

func newLedgerWriter(n *Node) *ledgerWriter {
	return &ledgerWriter{n: n, wake: make(chan struct{}, 1)}
}

// add queues w; it never blocks.
func (lw *ledgerWriter) add(w *ledgerWrite) {
	lw.mu.Lock()
	lw.queue = append(lw.queue, w)
	if w.sends {
		lw.sends++
	}
	if w.urgent {
		lw.urgent++
	}
	lw.mu.Unlock()
	select {
	case lw.wake <- struct{}{}:
	default:
	}
}

// sending reports whether a write that sends messages is pending: then the
// market loop must queue its messages too, not overtake an award.
func (lw *ledgerWriter) sending() bool {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	return lw.sends > 0
}

// hurried reports whether a queued write must go at once.
func (lw *ledgerWriter) hurried() bool {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	return lw.sends > 0 || lw.urgent > 0
}

// run writes queued batches until ctx ends, and then what is still
// queued (see drain). Nothing is written before the node has confirmed
// its head with its peers (see confirmHead): writes wait for it, and once
// it has waited head_wait in vain, writes that send (awards waiting for
// their holds) fail with the reason, so that their jobs end and the
// messages behind them go, while settlements and records keep waiting.
func (lw *ledgerWriter) run(ctx context.Context) {
	defer lw.n.wg.Done()
	head := lw.n.head
	opened, stalled := head.opened, head.stalled
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-lw.wake:
		case <-opened:
			opened = nil
		case <-stalled:
			stalled = nil
		}
		if !head.isOpen() {
			if head.isStalled() {
				lw.failSends(head.err())
			}
			continue
		}
		lw.waitForCompany(ctx)
		lw.drain(ctx)
	}
	if !head.isOpen() {
		lw.dropUnconfirmed(head.err())
		return
	}
	lw.drain(ctx)
}

// failSends gives up the queued writes that send, unwritten, with err.
func (lw *ledgerWriter) failSends(err error) {
	lw.mu.Lock()
	var failed []*ledgerWrite
	lw.queue = slices.DeleteFunc(lw.queue, func(w *ledgerWrite) bool {
		if !w.sends {
			return false
		}
		failed = append(failed, w)
		lw.sends--
		if w.urgent {
			lw.urgent--
		}
		return true
	})
	lw.mu.Unlock()
	for _, w := range failed {
		switch {
		case w.fail != nil:
			w.fail(err)
		case w.done != nil:
			w.done(nil, nil)
		}
	}
}

// dropUnconfirmed drops what is queued when the node stops before it has
// confirmed its head: none of it may be signed. Settlements are made
// again from the job records after the next start; lease and receipt
// records are lost.
func (lw *ledgerWriter) dropUnconfirmed(err error) {
	lw.mu.Lock()
	n := len(lw.queue)
	lw.queue, lw.sends, lw.urgent = nil, 0, 0
	lw.mu.Unlock()
	if n > 0 {
		lw.n.log.Warn("stopping with ledger writes unwritten", "writes", n, "err", err)
	}
}

// drain writes the queued batches. Once ctx has ended, writes that would
// send messages are dropped (their awards unsent, their holds unwritten,
// the jobs re-offered after a restart), while settlements and lease and
// receipt records are still written: a node that stops keeps its records.
func (lw *ledgerWriter) drain(ctx context.Context) {
	for batch := lw.next(); batch != nil; batch = lw.next() {
		keep := batch
		if ctx.Err() != nil {
			keep = slices.DeleteFunc(slices.Clone(batch), func(w *ledgerWrite) bool { return w.sends })
		}
		lw.n.withDB(func() { lw.write(keep) })
		lw.mu.Lock()
		for _, w := range batch {
			if w.sends {
				lw.sends--
			}
			if w.urgent {
				lw.urgent--
			}
		}
		lw.mu.Unlock()
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

// waitForCompany waits up to lazyWrite unless a write that sends or is
// urgent is queued, or ctx ends.
func (lw *ledgerWriter) waitForCompany(ctx context.Context) {
	timer := time.NewTimer(lazyWrite)
	defer timer.Stop()
	for !lw.hurried() {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
			return
		case <-lw.wake:
		}
	}
}

// next takes the longest prefix of the queue whose writes are about
// different jobs.
func (lw *ledgerWriter) next() []*ledgerWrite {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	seen := map[protocol.JobID]bool{}
	k := 0
prefix:
	for ; k < len(lw.queue); k++ {
		for _, id := range lw.queue[k].jobs {
			if seen[id] {
				break prefix
			}
		}
		for _, id := range lw.queue[k].jobs {
			seen[id] = true
		}
	}
	if k == 0 {
		return nil
	}
	batch := lw.queue[:k:k]
	lw.queue = lw.queue[k:]
	return batch
}

// write appends the batch's entries with one sync and hands each write
// its share.
func (lw *ledgerWriter) write(batch []*ledgerWrite) {
	lw.batchHeld = 0
	lw.batchLeases, lw.batchReceipts = map[storage.Hash]uint64{}, map[storage.Hash]uint64{}
	var all []storage.Body
	ends := make([]int, len(batch))
	for i, w := range batch {
		if w.bodies != nil {
			all = append(all, w.bodies()...)
		}
		ends[i] = len(all)
	}
	written, errs := lw.n.appendAll(all, "market ledger write")
	start := 0
	for i, w := range batch {
		if w.done != nil {
			w.done(written[start:ends[i]], errs[start:ends[i]])
		}
		start = ends[i]
	}
}
