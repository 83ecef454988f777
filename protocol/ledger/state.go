package ledger

import (
	"encoding/binary"
	"fmt"
	"math/bits"
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
	// node backed it all the same. Holds of version 3 naming a provider
	// count under V3Holds(provider); those naming none do not count.
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
	// V3 is whether the account wrote an entry of version 3: its chain
	// takes no entry of an older version after it (ErrVersionDown).
	V3 bool
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

// Encode returns the account's record, of version 2. Its byte after
// Granted holds flags: 1 Frozen, 2 V3 (records written before V3 never
// set 2, so they read as they should: no upgrade needed).
func (a AccountState) Encode() []byte {
	out := make([]byte, 0, AccountStateLen)
	out = append(out, 2)
	out = binary.BigEndian.AppendUint64(out, a.LastSeq)
	out = append(out, a.LastHash[:]...)
	out = binary.BigEndian.AppendUint64(out, uint64(a.LastTime))
	out = binary.BigEndian.AppendUint64(out, a.Balance)
	out = binary.BigEndian.AppendUint64(out, a.Held)
	out = binary.BigEndian.AppendUint64(out, a.Granted)
	out = append(out, boolByte(a.Frozen)|boolByte(a.V3)<<1)
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
	flags := r.u8()
	if flags > 3 || b[0] == 1 && flags > 1 {
		return AccountState{}, fmt.Errorf("%w: account record", ErrMalformed)
	}
	a.Frozen, a.V3 = flags&1 != 0, flags&2 != 0
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

// V3Holds is the provider under which State.Funding counts the holds of
// version 3 naming provider, apart from those of older versions naming it:
// each kind backs only leases of its own version. (Its bytes are no peer
// ID's: a peer ID never ends in "/v3".)
func V3Holds(provider peer.ID) peer.ID { return provider + "/v3" }

// LeaseRecord counts a provider's records of one job (storage keeps it
// under ledger/lease/<provider>/<job>): the leases it wrote, and the
// receipts, each of which used up one lease, with the last receipt's time
// (Unix ns), which tells whether the provider had run an award when its
// hold was released, and its usage, which counts as delivered once a
// claim shows the requester paid for it (paidUsage). Only the last
// receipt is kept: the record stays of one size however many awards the
// job had. Requester and Price are those of its latest lease of version 3
// of the job (the award a receipt after it answers); Vote is its first
// receipt of the job, if that is of version 3 and follows such a lease:
// what it says of the job in a verdict among the job's replicas. All
// follow from the provider's own chain alone.
type LeaseRecord struct {
	Leases, Receipts uint64
	LastReceipt      int64
	GPUMS, WallMS    uint64
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

// Encode returns the record: the counts and the last receipt's time and
// usage, then, once the provider leased the job under version 3, the
// latest such lease's requester and price and the vote.
func (r LeaseRecord) Encode() []byte {
	out := make([]byte, 0, 5*8)
	for _, v := range []uint64{r.Leases, r.Receipts, uint64(r.LastReceipt), r.GPUMS, r.WallMS} {
		out = binary.BigEndian.AppendUint64(out, v)
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
	l := LeaseRecord{Leases: r.u64(), Receipts: r.u64(), LastReceipt: int64(r.u64()), GPUMS: r.u64(), WallMS: r.u64()}
	if r.err != nil || len(r.b) == 0 {
		return l, r.end()
	}
	l.Requester, l.Price, l.Vote.Seq = r.peer(), r.u64(), r.u64()
	if l.Vote.Seq != 0 {
		l.Vote.Requester, l.Vote.Price, l.Vote.Units, l.Vote.Outcome = r.peer(), r.u64(), r.u64(), r.hash()
	}
	return l, r.end()
}

// ranBetween reports whether the last receipt is dated from..to. A
// provider that writes a receipt after a hold's expiry (on a lease an
// older hold backed) hides an earlier one: that only turns its own
// Unclaimed into NotRun.
func (r LeaseRecord) ranBetween(from, to int64) bool {
	return r.Receipts > 0 && r.LastReceipt >= from && r.LastReceipt <= to
}

// paidUsage is the usage of the last receipt that a claim of amount in
// all pays for at the latest lease's price (Price per second of billable
// time, rounded up: ms ≤ amount×1000/Price), so that no provider's own
// receipt adds more delivered time than its requester accepted to pay.
func (r LeaseRecord) paidUsage(amount uint64) (gpuMS, wallMS uint64) {
	if r.Price == 0 || r.Receipts == 0 {
		return 0, 0
	}
	hi, lo := bits.Mul64(amount, 1000)
	ms := ^uint64(0)
	if hi < r.Price {
		ms, _ = bits.Div64(hi, lo, r.Price)
	}
	return min(r.GPUMS, ms), min(r.WallMS, ms)
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
