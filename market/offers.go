package market

import (
	"container/heap"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol"
)

// Default budgets of the offers a provider remembers (Config.OfferMemory,
// Config.OfferMemoryPerRequester). A noop offer costs about 300 bytes, so a
// requester's burst of 1,000 batch offers takes about 300 KiB of its 16 MiB;
// 16 MiB holds 1,000 offers of 16 KiB specs.
const (
	DefaultOfferMemory             = 64 << 20
	DefaultOfferMemoryPerRequester = 16 << 20
)

// memoOverhead is what a remembered offer costs beyond its spec's bytes:
// the memo itself, its requester's ID and its map entry (measured:
// TestOfferMemoCostCoversHeap).
const memoOverhead = 320

// offerMemo is what a provider remembers of an offer it answered: its
// round, to answer each round once (the same round comes directly and by
// gossip), and, while it may still be awarded, its spec.
type offerMemo struct {
	job       protocol.JobID
	requester peer.ID
	round     uint32
	deadline  time.Time
	// spec is the offer's spec, encoded (so its cost is its length); nil
	// when no award may lease it: the provider declined it, or it was
	// taken, cancelled or leased.
	spec []byte
	cost int
	// seq orders memos by when they were answered.
	seq uint64
	// Links in the list of every memo and in its requester's, least
	// recently answered first.
	inAll, inRequester memoLinks
}

type memoLinks struct{ prev, next *offerMemo }

// memoList is a list of memos through one of their two pairs of links
// (links picks which), with the bytes they cost.
type memoList struct {
	head, tail *offerMemo
	bytes      int
	links      func(*offerMemo) *memoLinks
	// at is a requester's list's place in offerMemos.largest.
	at int
}

func allLinks(m *offerMemo) *memoLinks       { return &m.inAll }
func requesterLinks(m *offerMemo) *memoLinks { return &m.inRequester }

// offerMemos are the offers a provider remembers, within a budget of bytes
// per requester and in total: a requester past its budget loses its least
// recently answered offers, and past the total the requester holding the
// most bytes loses its least recently answered. So a requester within its
// fair share of the total keeps its memos, whatever others send: a
// least-recently-answered order over all would let a few identities with
// big offers flush every honest requester's (and its awards would be
// declined). An award for a forgotten offer is declined as an unknown job,
// and the requester offers it again.
type offerMemos struct {
	byJob       map[protocol.JobID]*offerMemo
	byRequester map[peer.ID]*memoList
	// largest orders the requesters' lists, the most bytes first.
	largest      memoHeap
	all          memoList
	limit        int
	perRequester int
	seq          uint64
}

func newOfferMemos(limit, perRequester int) *offerMemos {
	if limit <= 0 {
		limit = DefaultOfferMemory
	}
	if perRequester <= 0 {
		perRequester = DefaultOfferMemoryPerRequester
	}
	return &offerMemos{byJob: map[protocol.JobID]*offerMemo{}, byRequester: map[peer.ID]*memoList{},
		all: memoList{links: allLinks}, limit: limit, perRequester: min(perRequester, limit)}
}

// get returns the memo of a job, or nil.
func (o *offerMemos) get(job protocol.JobID) *offerMemo { return o.byJob[job] }

// bytes is what the remembered offers cost.
func (o *offerMemos) bytes() int { return o.all.bytes }

// len is how many offers are remembered.
func (o *offerMemos) len() int { return len(o.byJob) }

// put remembers a round of a job's offer as the most recently answered,
// replacing what was remembered of the job, then evicts past the budgets.
func (o *offerMemos) put(job protocol.JobID, requester peer.ID, round uint32, deadline time.Time, spec []byte) {
	o.remove(job)
	o.seq++
	m := &offerMemo{job: job, requester: requester, round: round, deadline: deadline, spec: spec, seq: o.seq}
	m.cost = memoOverhead + len(requester) + len(spec)
	o.byJob[job] = m
	o.all.pushBack(m)
	r := o.byRequester[requester]
	if r == nil {
		r = &memoList{links: requesterLinks}
		o.byRequester[requester] = r
		r.pushBack(m)
		heap.Push(&o.largest, r)
	} else {
		r.pushBack(m)
		heap.Fix(&o.largest, r.at)
	}
	for r.bytes > o.perRequester && r.head != m {
		o.remove(r.head.job)
	}
	for o.all.bytes > o.limit {
		victim := o.largest[0].head
		if victim == m {
			// The newest memo is its requester's only one and the
			// largest: every other requester holds less; the least
			// recently answered of all goes.
			if victim = o.all.head; victim == m {
				return
			}
		}
		o.remove(victim.job)
	}
}

// forget drops a memo's spec, keeping its round: no award may lease the
// offer any more, and a repeat of the round is still recognised.
func (o *offerMemos) forget(m *offerMemo) {
	if m.spec == nil {
		return
	}
	d := len(m.spec)
	m.spec, m.cost = nil, m.cost-d
	o.all.bytes -= d
	r := o.byRequester[m.requester]
	r.bytes -= d
	heap.Fix(&o.largest, r.at)
}

// remove drops a job's memo, if there is one.
func (o *offerMemos) remove(job protocol.JobID) {
	m, ok := o.byJob[job]
	if !ok {
		return
	}
	delete(o.byJob, job)
	o.all.unlink(m)
	r := o.byRequester[m.requester]
	r.unlink(m)
	if r.head == nil {
		delete(o.byRequester, m.requester)
		heap.Remove(&o.largest, r.at)
	} else {
		heap.Fix(&o.largest, r.at)
	}
}

// expire drops the memos whose offers' deadlines have passed.
func (o *offerMemos) expire(now time.Time) {
	for job, m := range o.byJob {
		if !m.deadline.After(now) {
			o.remove(job)
		}
	}
}

func (l *memoList) pushBack(m *offerMemo) {
	l.bytes += m.cost
	ln := l.links(m)
	ln.prev, ln.next = l.tail, nil
	if l.tail != nil {
		l.links(l.tail).next = m
	} else {
		l.head = m
	}
	l.tail = m
}

func (l *memoList) unlink(m *offerMemo) {
	l.bytes -= m.cost
	ln := l.links(m)
	if ln.prev != nil {
		l.links(ln.prev).next = ln.next
	} else {
		l.head = ln.next
	}
	if ln.next != nil {
		l.links(ln.next).prev = ln.prev
	} else {
		l.tail = ln.prev
	}
	*ln = memoLinks{}
}

// memoHeap is a heap of requesters' memo lists, the one holding the most
// bytes on top (ties: the one with the least recently answered memo).
type memoHeap []*memoList

func (h memoHeap) Len() int { return len(h) }

func (h memoHeap) Less(i, j int) bool {
	if h[i].bytes != h[j].bytes {
		return h[i].bytes > h[j].bytes
	}
	return h[i].head.seq < h[j].head.seq
}

func (h memoHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].at, h[j].at = i, j
}

func (h *memoHeap) Push(x any) {
	l := x.(*memoList)
	l.at = len(*h)
	*h = append(*h, l)
}

func (h *memoHeap) Pop() any {
	old := *h
	l := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return l
}
