package ledger

import (
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/libp2p/go-libp2p/core/peer"
)

// State is the ledger state the rules read and change (Rules.Apply): the
// live one over storage's Badger transaction, and MemState, in memory,
// for a replay.
type State interface {
	// Account returns the account's state for changing in place; a new
	// account reads as the zero state.
	Account(id peer.ID) (*AccountState, error)
	// Hold returns the account's open hold of job naming provider, which
	// a hold of version 3 naming a provider opens; provider "" is the
	// job's other hold: the one naming no provider, or the one a hold of
	// an older version opened, whichever provider it names (its record
	// says).
	Hold(id peer.ID, job Hash, provider peer.ID) (HoldRecord, bool, error)
	PutHold(id peer.ID, job Hash, provider peer.ID, h HoldRecord) error
	DeleteHold(id peer.ID, job Hash, provider peer.ID) error
	// Paid reports whether the account paid job with a payment (version
	// 2 and before).
	Paid(id peer.ID, job Hash) (bool, error)
	PutPaid(id peer.ID, job Hash, seq uint64) error
	// Claimed reports whether provider's final claim closed a hold of
	// requester's job naming it; PutClaimed records the claim's seq.
	Claimed(requester peer.ID, job Hash, provider peer.ID) (bool, error)
	PutClaimed(requester peer.ID, job Hash, provider peer.ID, seq uint64) error
	// Funding returns how many holds requester has ever written for job
	// naming provider ("" for none), open or closed since: a lease needs
	// a hold, and a hold paid or released before the lease reached this
	// node backed it all the same.
	Funding(requester peer.ID, job Hash, provider peer.ID) (uint64, error)
	PutFunding(requester peer.ID, job Hash, provider peer.ID, n uint64) error
	Leases(provider peer.ID, job Hash) (LeaseRecord, error)
	PutLeases(provider peer.ID, job Hash, r LeaseRecord) error
	// Voters returns the voters of requester's job (zero: no hold of
	// version 3 named a provider for it yet).
	Voters(requester peer.ID, job Hash) (Voters, error)
	PutVoters(requester peer.ID, job Hash, v Voters) error
	// Reputation returns the peer's counters (zero for a new one).
	Reputation(id peer.ID) (Reputation, error)
	PutReputation(id peer.ID, r Reputation) error
}

// AccountState is the derived state of one account (storage keeps its
// record under ledger/acct/<account>).
type AccountState struct {
	LastSeq  uint64
	LastHash Hash
	LastTime int64 // Unix nanoseconds of entry LastSeq
	Balance  uint64
	Held     uint64
	Granted  uint64
	Frozen   bool
	// Paced is the account's rate limit state (RateLimit): the entry
	// time, in Unix nanoseconds, by which its bucket would be full again.
	Paced uint64
}

// The size of an account record: format 1's (version 1) and then Paced
// (version 2).
const (
	AccountStateLenV1 = 1 + 8 + 32 + 8 + 8 + 8 + 8 + 1
	AccountStateLen   = AccountStateLenV1 + 8
)

// Encode returns the account's record, of version 2.
func (a AccountState) Encode() []byte {
	out := make([]byte, 0, AccountStateLen)
	out = append(out, 2)
	out = binary.BigEndian.AppendUint64(out, a.LastSeq)
	out = append(out, a.LastHash[:]...)
	out = binary.BigEndian.AppendUint64(out, uint64(a.LastTime))
	out = binary.BigEndian.AppendUint64(out, a.Balance)
	out = binary.BigEndian.AppendUint64(out, a.Held)
	out = binary.BigEndian.AppendUint64(out, a.Granted)
	frozen := byte(0)
	if a.Frozen {
		frozen = 1
	}
	out = append(out, frozen)
	return binary.BigEndian.AppendUint64(out, a.Paced)
}

// DecodeAccountState reads an account record of version 2.
func DecodeAccountState(b []byte) (AccountState, error) {
	a, err := DecodeAccountStateAny(b)
	if err == nil && b[0] != 2 {
		err = fmt.Errorf("%w: account record of version %d", ErrMalformed, b[0])
	}
	return a, err
}

// DecodeAccountStateAny reads an account record of this format (version
// 2) or of the last (version 1, without Paced), for storage's upgrade.
func DecodeAccountStateAny(b []byte) (AccountState, error) {
	switch {
	case len(b) == AccountStateLenV1 && b[0] == 1:
	case len(b) == AccountStateLen && b[0] == 2:
	default:
		return AccountState{}, fmt.Errorf("%w: account record", ErrMalformed)
	}
	r := reader{b: b[1:]}
	a := AccountState{LastSeq: r.u64(), LastHash: r.hash(), LastTime: int64(r.u64()),
		Balance: r.u64(), Held: r.u64(), Granted: r.u64()}
	switch r.u8() {
	case 0:
	case 1:
		a.Frozen = true
	default:
		return AccountState{}, fmt.Errorf("%w: account record", ErrMalformed)
	}
	if b[0] == 2 {
		a.Paced = r.u64()
	}
	return a, r.end()
}

// HoldRecord is an open hold (storage keeps it under
// ledger/hold/<account>/<job>[/<provider>], see State.Hold).
type HoldRecord struct {
	Provider peer.ID
	Amount   uint64
	Seq      uint64 // the hold entry's seq
	// Of a hold of version 3 naming a provider: the end of its claim
	// window and its entry's time (Unix ns), the job's replicas, and what
	// claims have drawn from it so far. Zero for the others (Replicas
	// may be set on one naming none).
	Expiry, Time int64
	Replicas     uint8
	Claimed      uint64
}

// holdRecordShort is the size of a record without the fields of version
// 3 (Provider's length prefix, Amount, Seq, beside the provider), which a
// hold without them keeps: records stored before version 3 stay valid.
const holdRecordShort = 2 + 8 + 8

// Encode returns the hold's record.
func (h HoldRecord) Encode() []byte {
	out := appendField(nil, []byte(h.Provider))
	out = binary.BigEndian.AppendUint64(out, h.Amount)
	out = binary.BigEndian.AppendUint64(out, h.Seq)
	if h.Expiry == 0 && h.Time == 0 && h.Replicas == 0 && h.Claimed == 0 {
		return out
	}
	out = binary.BigEndian.AppendUint64(out, uint64(h.Expiry))
	out = binary.BigEndian.AppendUint64(out, uint64(h.Time))
	out = append(out, h.Replicas)
	return binary.BigEndian.AppendUint64(out, h.Claimed)
}

// DecodeHoldRecord reads a hold's record.
func DecodeHoldRecord(b []byte) (HoldRecord, error) {
	r := reader{b: b}
	h := HoldRecord{Provider: r.optionalPeer(), Amount: r.u64(), Seq: r.u64()}
	if r.err == nil && len(r.b) > 0 {
		h.Expiry, h.Time, h.Replicas, h.Claimed = int64(r.u64()), int64(r.u64()), r.u8(), r.u64()
	}
	return h, r.end()
}

// Rest is what of the hold no claim has drawn.
func (h HoldRecord) Rest() uint64 { return h.Amount - h.Claimed }

// LeaseRecord counts a provider's records of one job (storage keeps it
// under ledger/lease/<provider>/<job>): the leases it wrote, and the
// receipts, each of which used up one lease, with each receipt's time
// (Unix ns, in chain order), which tells whether the provider had run an
// award when its hold was released. Requester and Price are those of its
// latest lease of version 3 of the job (the award a receipt after it
// answers); Vote is its first receipt of the job, if that is of version 3
// and follows such a lease: what it says of the job in a verdict among
// the job's replicas. Both follow from the provider's own chain alone.
type LeaseRecord struct {
	Leases, Receipts uint64
	ReceiptTimes     []int64
	Requester        peer.ID
	Price            uint64
	Vote             Vote
}

// Vote is a provider's first receipt of a job (of version 3), as verdicts
// among the job's replicas count it: one per provider and job, so no
// provider can change its answer or answer twice.
type Vote struct {
	Seq       uint64  // the receipt's seq in the provider's chain; 0: none
	Requester peer.ID // whose award (lease) it answers
	Price     uint64  // that lease's price, per unit-second
	// Units is what the receipt bills: GPU-ms, or wall ms for a run
	// that metered no GPU time (one unit).
	Units uint64
	// Outcome is the digest of the result's and the outputs' content
	// IDs: what replicas agree on.
	Outcome Hash
}

// Encode returns the record: the counts and receipt times (format 3 and
// 5's record), then, once the provider leased the job under version 3,
// the latest such lease's requester and price and the vote.
func (r LeaseRecord) Encode() []byte {
	out := binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, r.Leases), r.Receipts)
	for _, t := range r.ReceiptTimes {
		out = binary.BigEndian.AppendUint64(out, uint64(t))
	}
	if r.Requester == "" {
		return out
	}
	out = appendField(out, []byte(r.Requester))
	out = binary.BigEndian.AppendUint64(out, r.Price)
	out = binary.BigEndian.AppendUint64(out, r.Vote.Seq)
	if r.Vote.Seq == 0 {
		return out
	}
	out = appendField(out, []byte(r.Vote.Requester))
	out = binary.BigEndian.AppendUint64(out, r.Vote.Price)
	out = binary.BigEndian.AppendUint64(out, r.Vote.Units)
	return append(out, r.Vote.Outcome[:]...)
}

// DecodeLeaseRecord reads a lease record.
func DecodeLeaseRecord(b []byte) (LeaseRecord, error) {
	r := reader{b: b}
	l := LeaseRecord{Leases: r.u64(), Receipts: r.u64()}
	if r.err == nil && uint64(len(r.b)) < 8*l.Receipts {
		return l, fmt.Errorf("%w: lease record of %d receipts with %d bytes of times", ErrMalformed, l.Receipts, len(r.b))
	}
	for range l.Receipts {
		l.ReceiptTimes = append(l.ReceiptTimes, int64(r.u64()))
	}
	if r.err != nil || len(r.b) == 0 {
		return l, r.end()
	}
	l.Requester, l.Price, l.Vote.Seq = r.peer(), r.u64(), r.u64()
	if l.Vote.Seq != 0 {
		l.Vote.Requester, l.Vote.Price, l.Vote.Units, l.Vote.Outcome = r.peer(), r.u64(), r.u64(), r.hash()
	}
	return l, r.end()
}

// Voters are the replicas of a requester's job whose votes count in its
// verdicts (storage keeps them under ledger/voters/<requester><job>): the
// job's Replicas (k), which every hold of version 3 naming a provider for
// the job carries, and the first k distinct providers those holds named,
// in the requester's chain order. Bounding the voters by k is what makes
// two disagreeing majorities impossible, so a majority claim and a
// majority release never both apply to one hold, whatever order entries
// arrive in.
type Voters struct {
	Replicas  uint8
	Providers []peer.ID
}

// Has reports whether p votes.
func (v Voters) Has(p peer.ID) bool { return slices.Contains(v.Providers, p) }

// full reports whether no provider may join the voters any more.
func (v Voters) full() bool { return len(v.Providers) >= int(v.Replicas) }

// Encode returns the record: the replicas, then each voter.
func (v Voters) Encode() []byte {
	out := []byte{v.Replicas}
	for _, p := range v.Providers {
		out = appendField(out, []byte(p))
	}
	return out
}

// DecodeVoters reads a voters record.
func DecodeVoters(b []byte) (Voters, error) {
	r := reader{b: b}
	v := Voters{Replicas: r.u8()}
	for r.err == nil && len(r.b) > 0 && len(v.Providers) < MaxReplicas {
		v.Providers = append(v.Providers, r.peer())
	}
	if r.err == nil && (v.Replicas == 0 || v.Replicas > MaxReplicas || len(v.Providers) > int(v.Replicas)) {
		return v, fmt.Errorf("%w: voters record of %d replicas, %d voters", ErrMalformed, v.Replicas, len(v.Providers))
	}
	return v, r.end()
}

// receiptBetween reports whether one of the receipts is dated from..to.
func (r LeaseRecord) receiptBetween(from, to int64) bool {
	for _, t := range r.ReceiptTimes {
		if t >= from && t <= to {
			return true
		}
	}
	return false
}
