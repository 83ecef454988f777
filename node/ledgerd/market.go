package ledgerd

import (
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
	"github.com/mira-market/mira/storage"
)

// The market's side of the ledger (what node/marketd's Ledger asks): the
// writes it queues go in the order queued, each after the earlier ones
// about the same job are on disk; none waits for the disk.

// HoldPosted queues the hold of a posted (and persisted) job's maximum
// cost (see offerHoldWrite).
func (s *Service) HoldPosted(job protocol.JobID, spec *pb.JobSpec) {
	s.enqueue(s.offerHoldWrite(job, spec))
}

// WriteHolds queues the holds that back awards (see escrowWrite); done
// gets each award's hold entry or the error that keeps it from being
// sent, on the writer's goroutine.
func (s *Service) WriteHolds(reqs []market.HoldRequest, done func(holds [][]byte, errs []error)) {
	s.enqueue(s.escrowWrite(reqs, done))
}

// RecordLease queues this provider's record of a lease it took (after
// CheckHold).
func (s *Service) RecordLease(l *market.Lease) { s.enqueue(s.leaseWrite(l)) }

// RecordReceipt queues this provider's receipt entry of a bill it sent.
func (s *Service) RecordReceipt(b *pb.Bill) { s.enqueue(s.receiptWrite(b)) }

// RequesterHead is the seq of the head of a requester's chain that this
// node holds.
func (s *Service) RequesterHead(requester peer.ID) (uint64, error) {
	// Read on a stream handler's goroutine, which may outlive Close.
	var h storage.Head
	err := errDBClosed
	s.withDB(func() { h, err = s.ledger.Head(requester) })
	return h.Seq, err
}
