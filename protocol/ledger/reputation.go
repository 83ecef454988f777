package ledger

import (
	"encoding/binary"
	"fmt"
	"math/bits"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Reputation is what the ledger shows of a peer's dealings, as a provider
// and as a requester. Rules.Apply updates it with each entry it applies,
// from what the entry and the state before it say, so every node that
// applied the same entries holds the same counters, whatever order they
// came in (storage keeps them under ledger/rep/<peer>). Counters saturate
// instead of wrapping.
type Reputation struct {
	// As a provider.
	Leases, Receipts uint64
	JobsPaid         uint64 // final claims (and payments of version 2 and before)
	Earned           uint64 // micro-credits claimed (or paid)
	// GPUMS, WallMS sum, over its final claims above zero, its last
	// receipt's usage of the job as far as the claim pays for it at the
	// lease's price: never what its own receipts say alone.
	GPUMS, WallMS uint64
	Waived        uint64 // awards given back
	// NotRun counts holds naming it released at expiry with no receipt
	// of the job in its chain dated from the hold to the expiry.
	NotRun uint64
	// Unclaimed counts holds naming it released at expiry after such a
	// receipt.
	Unclaimed          uint64
	VerificationLosses uint64 // (replicas; later)
	// As a requester.
	Awards     uint64 // holds of version 3 naming a provider
	PaidFor    uint64 // final claims against it (and its payments of version 2 and before)
	Spent      uint64
	LeftUnpaid uint64 // holds it released at expiry whose provider wrote a receipt
}

// reputationFields lists the counters in their record's order.
func (r *Reputation) fields() []*uint64 {
	return []*uint64{&r.Leases, &r.Receipts, &r.JobsPaid, &r.Earned, &r.GPUMS, &r.WallMS, &r.Waived,
		&r.NotRun, &r.Unclaimed, &r.VerificationLosses, &r.Awards, &r.PaidFor, &r.Spent, &r.LeftUnpaid}
}

// reputationVersion is the version byte of a reputation record.
const reputationVersion = 1

// Encode returns the reputation's record: a version byte, then each
// counter in 8 bytes.
func (r Reputation) Encode() []byte {
	fs := r.fields()
	out := make([]byte, 0, 1+8*len(fs))
	out = append(out, reputationVersion)
	for _, f := range fs {
		out = binary.BigEndian.AppendUint64(out, *f)
	}
	return out
}

// DecodeReputation reads a reputation record.
func DecodeReputation(b []byte) (Reputation, error) {
	var rep Reputation
	rd := reader{b: b}
	if v := rd.u8(); rd.err == nil && v != reputationVersion {
		return rep, fmt.Errorf("%w: reputation record of version %d", ErrMalformed, v)
	}
	for _, f := range rep.fields() {
		*f = rd.u64()
	}
	return rep, rd.end()
}

// sat adds n to *c, saturating.
func sat(c *uint64, n uint64) {
	v, carry := bits.Add64(*c, n, 0)
	if carry != 0 {
		v = ^uint64(0)
	}
	*c = v
}

// bump reads id's reputation from st, lets f change it, and stores it.
func bump(st State, id peer.ID, f func(*Reputation)) error {
	r, err := st.Reputation(id)
	if err != nil {
		return err
	}
	f(&r)
	return st.PutReputation(id, r)
}

// ReputationOf is what entry e alone adds to the reputation of its
// account and of the account it names (to: a payment's payee; nothing
// otherwise), among the counters that depend on the entry alone: leases,
// receipts, and version 2's payments. storage's upgrade builds
// the counters of a ledger stored before reputations from it; Apply
// counts the rest (claims, waives, awards, releases at expiry), which
// only entries of version 3 bring.
func ReputationOf(e *Entry, own, to *Reputation) {
	switch b := e.Body.(type) {
	case LeaseBody:
		sat(&own.Leases, 1)
	case ReceiptBody:
		sat(&own.Receipts, 1)
	case PaymentBody:
		sat(&own.PaidFor, 1)
		sat(&own.Spent, b.Amount)
		sat(&to.JobsPaid, 1)
		sat(&to.Earned, b.Amount)
	}
}
