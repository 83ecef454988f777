package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Errors of ledger validation. Test for them with errors.Is: the returned
// errors wrap them with the account and seq.
var (
	// ErrDuplicate means the entry is already stored. It is not a failure:
	// callers that sync ledgers see it all the time.
	ErrDuplicate = errors.New("ledger entry already stored")
	// ErrGap means the entry's predecessor is missing; the entry may become
	// valid once it arrives (IngestMany and Ingest keep it pending).
	ErrGap = errors.New("ledger entry's predecessor is missing")
	// ErrBrokenChain means the entry's prev hash is not the hash of the
	// account's entry before it.
	ErrBrokenChain = errors.New("ledger entry does not chain to its predecessor")
	// ErrBadTimestamp means the entry's time is before its predecessor's or
	// too far in the future.
	ErrBadTimestamp = errors.New("ledger entry time out of range")
	// ErrBadGrant means a Grant that genesis does not allow: not the
	// account's first entry, not a granted (or faucet) account, or another
	// amount than granted.
	ErrBadGrant = errors.New("grant not allowed by genesis")
	// ErrOverdraft means a hold above the account's available balance. As
	// payments to the account may still be on their way from other chains,
	// IngestMany keeps such an entry pending.
	ErrOverdraft = errors.New("hold above available balance")
	// ErrHoldExists means a hold for a job that already has an open hold.
	ErrHoldExists = errors.New("job already has an open hold")
	// ErrNoHold means a release or payment for a job without an open hold.
	ErrNoHold = errors.New("job has no open hold")
	// ErrPaymentAboveHold means a payment above its job's hold.
	ErrPaymentAboveHold = errors.New("payment above hold")
	// ErrAlreadyPaid means a second payment (or a new hold) for a job the
	// account has paid.
	ErrAlreadyPaid = errors.New("job already paid")
	// ErrOverflow means an amount that would overflow a balance.
	ErrOverflow = errors.New("balance overflow")
	// ErrFrozen means an entry of an account convicted of equivocation.
	ErrFrozen = errors.New("ledger account frozen for equivocation")
	// ErrEquivocation means a second, different, validly signed entry for
	// an (account, seq) already stored. The error is an *EquivocationError
	// holding the fraud proof.
	ErrEquivocation = errors.New("ledger equivocation")
	// ErrNotFound means no such entry.
	ErrNotFound = errors.New("ledger entry not found")
)

// acctState is the derived state of one account, stored under
// ledger/acct/<account>.
type acctState struct {
	lastSeq  uint64
	lastHash Hash
	lastTime int64 // Unix nanoseconds of entry lastSeq
	balance  uint64
	held     uint64
	granted  uint64
	frozen   bool
}

const acctStateLen = 1 + 8 + 32 + 8 + 8 + 8 + 8 + 1

func (a acctState) encode() []byte {
	out := make([]byte, 0, acctStateLen)
	out = append(out, 1)
	out = binary.BigEndian.AppendUint64(out, a.lastSeq)
	out = append(out, a.lastHash[:]...)
	out = binary.BigEndian.AppendUint64(out, uint64(a.lastTime))
	out = binary.BigEndian.AppendUint64(out, a.balance)
	out = binary.BigEndian.AppendUint64(out, a.held)
	out = binary.BigEndian.AppendUint64(out, a.granted)
	if a.frozen {
		return append(out, 1)
	}
	return append(out, 0)
}

func decodeAcctState(b []byte) (acctState, error) {
	if len(b) != acctStateLen || b[0] != 1 || b[acctStateLen-1] > 1 {
		return acctState{}, fmt.Errorf("%w: account record", ErrMalformed)
	}
	r := reader{b: b[1:]}
	a := acctState{lastSeq: r.u64(), lastHash: r.hash(), lastTime: int64(r.u64()),
		balance: r.u64(), held: r.u64(), granted: r.u64(), frozen: r.u8() == 1}
	return a, r.end()
}

// holdRec is an open hold, stored under ledger/hold/<account>/<job>.
type holdRec struct {
	provider peer.ID
	amount   uint64
	seq      uint64 // the hold entry's seq
}

func (h holdRec) encode() []byte {
	out := appendField(nil, []byte(h.provider))
	out = binary.BigEndian.AppendUint64(out, h.amount)
	return binary.BigEndian.AppendUint64(out, h.seq)
}

func decodeHoldRec(b []byte) (holdRec, error) {
	r := reader{b: b}
	h := holdRec{provider: r.optionalPeer(), amount: r.u64(), seq: r.u64()}
	return h, r.end()
}

// ruleState is the state the kind rules read and change: the live one over
// a Badger transaction, and Verify's in memory.
type ruleState interface {
	// account returns the account's state for changing in place; a new
	// account reads as the zero state.
	account(id peer.ID) (*acctState, error)
	hold(id peer.ID, job Hash) (holdRec, bool, error)
	putHold(id peer.ID, job Hash, h holdRec) error
	delHold(id peer.ID, job Hash) error
	paid(id peer.ID, job Hash) (bool, error)
	putPaid(id peer.ID, job Hash, seq uint64) error
}

// seqError refuses an entry for its place in its account's chain: a
// duplicate or a gap. Peers' gossip and reconciliation overlap, so these
// are common and mostly never read: the text (a peer ID in base58 costs
// more than the check that found it) is built only when asked for.
type seqError struct {
	kind    error // ErrDuplicate or ErrGap
	account peer.ID
	seq     uint64
	have    uint64 // the account's head, when known
	known   bool
}

func (e *seqError) Error() string {
	if e.known {
		return fmt.Sprintf("%v: %s seq %d, have up to %d", e.kind, e.account, e.seq, e.have)
	}
	return fmt.Sprintf("%v: %s seq %d", e.kind, e.account, e.seq)
}

func (e *seqError) Unwrap() error { return e.kind }

// rules checks e (with hash h) against st and, if valid, applies it. The
// caller has handled duplicates, equivocations, signatures, the future time
// limit and frozen accounts. Nothing changes unless the result is nil.
func rules(st ruleState, grantFor func(peer.ID) (uint64, bool), e *Entry, h Hash) error {
	a, err := st.account(e.Account)
	if err != nil {
		return err
	}
	switch {
	case e.Seq <= a.lastSeq:
		return &seqError{kind: ErrDuplicate, account: e.Account, seq: e.Seq, have: a.lastSeq, known: true}
	case e.Seq > a.lastSeq+1:
		return &seqError{kind: ErrGap, account: e.Account, seq: e.Seq, have: a.lastSeq, known: true}
	case e.Prev != a.lastHash:
		return fmt.Errorf("%w: %s seq %d", ErrBrokenChain, e.Account, e.Seq)
	case e.Time.UnixNano() < a.lastTime:
		return fmt.Errorf("%w: %s seq %d is older than its predecessor", ErrBadTimestamp, e.Account, e.Seq)
	}
	where := func(err error) error { return fmt.Errorf("%w: %s seq %d", err, e.Account, e.Seq) }
	switch b := e.Body.(type) {
	case GrantBody:
		amt, ok := grantFor(e.Account)
		if e.Seq != 1 || !ok || amt != b.Amount {
			return where(ErrBadGrant)
		}
		bal, c1 := bits.Add64(a.balance, b.Amount, 0)
		gr, c2 := bits.Add64(a.granted, b.Amount, 0)
		if c1|c2 != 0 {
			return where(ErrOverflow)
		}
		a.balance, a.granted = bal, gr
	case HoldBody:
		if paid, err := st.paid(e.Account, b.Job); err != nil {
			return err
		} else if paid {
			return where(ErrAlreadyPaid)
		}
		if _, open, err := st.hold(e.Account, b.Job); err != nil {
			return err
		} else if open {
			return where(ErrHoldExists)
		}
		if b.Amount > a.balance-a.held {
			return fmt.Errorf("%w: %s seq %d holds %d, available %d", ErrOverdraft, e.Account, e.Seq, b.Amount, a.balance-a.held)
		}
		if err := st.putHold(e.Account, b.Job, holdRec{provider: b.Provider, amount: b.Amount, seq: e.Seq}); err != nil {
			return err
		}
		a.held += b.Amount
	case ReleaseBody:
		hr, open, err := st.hold(e.Account, b.Job)
		if err != nil {
			return err
		}
		if !open {
			return where(ErrNoHold)
		}
		if err := st.delHold(e.Account, b.Job); err != nil {
			return err
		}
		a.held -= hr.amount
	case PaymentBody:
		if paid, err := st.paid(e.Account, b.Job); err != nil {
			return err
		} else if paid {
			return where(ErrAlreadyPaid)
		}
		hr, open, err := st.hold(e.Account, b.Job)
		if err != nil {
			return err
		}
		if !open {
			return where(ErrNoHold)
		}
		if b.Amount > hr.amount {
			return fmt.Errorf("%w: %s seq %d pays %d out of %d", ErrPaymentAboveHold, e.Account, e.Seq, b.Amount, hr.amount)
		}
		to, err := st.account(b.To)
		if err != nil {
			return err
		}
		if to != a {
			if _, c := bits.Add64(to.balance, b.Amount, 0); c != 0 {
				return where(ErrOverflow)
			}
		}
		if err := st.delHold(e.Account, b.Job); err != nil {
			return err
		}
		if err := st.putPaid(e.Account, b.Job, e.Seq); err != nil {
			return err
		}
		a.held -= hr.amount
		a.balance -= b.Amount
		to.balance += b.Amount
	case LeaseBody, ReceiptBody:
		// A provider's records: their content is checked by the market,
		// the chain rules above are all the ledger asks.
	default:
		return fmt.Errorf("%w: entry without a body", ErrMalformed)
	}
	a.lastSeq, a.lastHash, a.lastTime = e.Seq, h, e.Time.UnixNano()
	return nil
}
