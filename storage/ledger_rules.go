package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"time"

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
	// ErrFutureTime means an entry dated further ahead of this node's
	// clock than the skew allowed. It wraps ErrBadTimestamp; unlike the
	// other refusals it says as much about this node's clock as about the
	// entry, which may become valid later.
	ErrFutureTime = fmt.Errorf("%w: in the future", ErrBadTimestamp)
	// ErrBadGrant means a Grant that genesis does not allow: not the
	// account's first entry, not a granted (or faucet) account, or another
	// amount than granted.
	ErrBadGrant = errors.New("grant not allowed by genesis")
	// ErrOverdraft means a hold above the account's available balance. As
	// payments to the account may still be on their way from other chains,
	// IngestMany keeps such an entry pending.
	ErrOverdraft = errors.New("hold above available balance")
	// ErrUnfunded means a lease that no hold backs: its requester has not
	// held the job for this provider (or for no provider) as often as the
	// provider leases it. The hold may still be on its way from the
	// requester's chain, so IngestMany keeps such an entry pending.
	ErrUnfunded = errors.New("lease without a hold that backs it")
	// ErrNoLease means a receipt for a job the provider's chain has no
	// lease left for: each lease backs one receipt.
	ErrNoLease = errors.New("receipt without a lease")
	// ErrRateLimited means an entry its account wrote faster than the
	// network's entry rate allows (Genesis.EntryRate), in its own entry
	// times: final, since the times before it do not change.
	ErrRateLimited = errors.New("ledger entry over its account's rate limit")
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
	// ErrStore marks a failure of this node's store (no room on its disk,
	// a Badger error), not of what was written: no fault of the peer that
	// sent it.
	ErrStore = errors.New("ledger store failed")
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
	// paced is the account's rate limit state (entryRate): the entry time,
	// in Unix nanoseconds, by which its bucket would be full again.
	paced uint64
}

// acctStateLen is the size of an account record: format 1's (version 1)
// and then paced (version 2).
const (
	acctStateLenV1 = 1 + 8 + 32 + 8 + 8 + 8 + 8 + 1
	acctStateLen   = acctStateLenV1 + 8
)

func (a acctState) encode() []byte {
	out := make([]byte, 0, acctStateLen)
	out = append(out, 2)
	out = binary.BigEndian.AppendUint64(out, a.lastSeq)
	out = append(out, a.lastHash[:]...)
	out = binary.BigEndian.AppendUint64(out, uint64(a.lastTime))
	out = binary.BigEndian.AppendUint64(out, a.balance)
	out = binary.BigEndian.AppendUint64(out, a.held)
	out = binary.BigEndian.AppendUint64(out, a.granted)
	frozen := byte(0)
	if a.frozen {
		frozen = 1
	}
	out = append(out, frozen)
	return binary.BigEndian.AppendUint64(out, a.paced)
}

func decodeAcctState(b []byte) (acctState, error) {
	a, err := decodeAcctStateAny(b)
	if err == nil && b[0] != 2 {
		err = fmt.Errorf("%w: account record of version %d", ErrMalformed, b[0])
	}
	return a, err
}

// decodeAcctStateAny reads an account record of this format (version 2) or
// of the last (version 1, without paced), for upgradeFormat.
func decodeAcctStateAny(b []byte) (acctState, error) {
	switch {
	case len(b) == acctStateLenV1 && b[0] == 1:
	case len(b) == acctStateLen && b[0] == 2:
	default:
		return acctState{}, fmt.Errorf("%w: account record", ErrMalformed)
	}
	r := reader{b: b[1:]}
	a := acctState{lastSeq: r.u64(), lastHash: r.hash(), lastTime: int64(r.u64()),
		balance: r.u64(), held: r.u64(), granted: r.u64()}
	switch r.u8() {
	case 0:
	case 1:
		a.frozen = true
	default:
		return acctState{}, fmt.Errorf("%w: account record", ErrMalformed)
	}
	if b[0] == 2 {
		a.paced = r.u64()
	}
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

// leaseRec counts a provider's records of one job, stored under
// ledger/lease/<provider>/<job>: the leases it wrote, and the receipts,
// each of which used up one lease.
type leaseRec struct {
	leases, receipts uint64
}

func (r leaseRec) encode() []byte {
	return binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, r.leases), r.receipts)
}

func decodeLeaseRec(b []byte) (leaseRec, error) {
	r := reader{b: b}
	l := leaseRec{leases: r.u64(), receipts: r.u64()}
	return l, r.end()
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
	// funding returns how many holds requester has ever written for job
	// naming provider ("" for none), open or closed since: a lease needs
	// a hold, and a hold paid or released before the lease reached this
	// node backed it all the same.
	funding(requester peer.ID, job Hash, provider peer.ID) (uint64, error)
	putFunding(requester peer.ID, job Hash, provider peer.ID, n uint64) error
	leases(provider peer.ID, job Hash) (leaseRec, error)
	putLeases(provider peer.ID, job Hash, r leaseRec) error
}

// ruleParams are the network's parameters of the kind rules, from its
// genesis.
type ruleParams struct {
	// grantFor returns what an account may claim with its Grant entry.
	grantFor func(peer.ID) (uint64, bool)
	rate     entryRate
}

// entryRate is a per-account limit on entries, in the entries' own times,
// as a generic cell rate algorithm (a token bucket): an account may write
// burst entries at once, then one per interval nanoseconds of entry time.
// Every node computes it alike from the chain alone, so it is a rule like
// the others: an entry over it is refused everywhere, for good.
type entryRate struct {
	interval uint64 // nanoseconds of entry time per entry
	slack    uint64 // (burst − 1) × interval
}

func newEntryRate(burst, perSecond uint64) entryRate {
	iv := uint64(time.Second) / perSecond
	return entryRate{interval: iv, slack: (burst - 1) * iv}
}

// admit returns the account's new paced time if an entry dated t (Unix
// nanoseconds) is within the limit given the old one.
func (r entryRate) admit(paced uint64, t int64) (uint64, bool) {
	now := uint64(max(t, 0))
	paced = max(paced, now) // a bucket refilled past full stays full
	if paced-now > r.slack {
		return 0, false
	}
	return paced + r.interval, true
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
//
// Every rule reads only the entry's own chain and what other chains have
// added (grants, payments received, holds ever written), never that
// something is absent for good, so every node reaches the same verdict
// whatever order entries reach it in: what another chain may still bring
// is waited for (ErrOverdraft, ErrUnfunded, like ErrGap).
func rules(st ruleState, p ruleParams, e *Entry, h Hash) error {
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
	paced, ok := p.rate.admit(a.paced, e.Time.UnixNano())
	if !ok {
		return where(ErrRateLimited)
	}
	if err := kindRules(st, p, a, e); err != nil {
		return err
	}
	a.lastSeq, a.lastHash, a.lastTime, a.paced = e.Seq, h, e.Time.UnixNano(), paced
	return nil
}

// kindRules checks and applies what e's kind asks of its account a (in st).
func kindRules(st ruleState, p ruleParams, a *acctState, e *Entry) error {
	where := func(err error) error { return fmt.Errorf("%w: %s seq %d", err, e.Account, e.Seq) }
	switch b := e.Body.(type) {
	case GrantBody:
		amt, ok := p.grantFor(e.Account)
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
		n, err := st.funding(e.Account, b.Job, b.Provider)
		if err != nil {
			return err
		}
		if err := st.putFunding(e.Account, b.Job, b.Provider, n+1); err != nil {
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
	case LeaseBody:
		return leaseRule(st, e, b)
	case ReceiptBody:
		// A provider's record of a run: one for each lease of the job in
		// its own chain, so a receipt is never more than its lease's
		// funding allows.
		r, err := st.leases(e.Account, b.Job)
		if err != nil {
			return err
		}
		if r.receipts >= r.leases {
			return fmt.Errorf("%w: %s seq %d: job %s has %d leases and %d receipts", ErrNoLease, e.Account, e.Seq, b.Job, r.leases, r.receipts)
		}
		r.receipts++
		return st.putLeases(e.Account, b.Job, r)
	default:
		return fmt.Errorf("%w: entry without a body", ErrMalformed)
	}
	return nil
}

// leaseRule admits a provider's lease of a job only as often as the job's
// requester has held it for this provider, or for no provider (the hold a
// job's posting writes, which backs its first award, whoever wins it):
// each award a requester backs with a hold is one lease. The holds may
// have been paid or released since; they count as written.
//
// Whoever wins: the lease also quotes the requester's grant of the award
// to this provider (LeaseGrant), without which a hold naming no provider
// would back a lease of any key at all. The grant depends on the entry
// alone, so it is checked with the entry's signature (VerifySignature,
// verifyBatch: on ingest and in Verify; AppendBatch for this node's own),
// once per entry, not again each time a lease that waits for its hold is
// retried here.
func leaseRule(st ruleState, e *Entry, b LeaseBody) error {
	r, err := st.leases(e.Account, b.Job)
	if err != nil {
		return err
	}
	named, err := st.funding(b.Requester, b.Job, e.Account)
	if err != nil {
		return err
	}
	open, err := st.funding(b.Requester, b.Job, "")
	if err != nil {
		return err
	}
	if backed, c := bits.Add64(named, open, 0); c == 0 && r.leases >= backed {
		return fmt.Errorf("%w: %s seq %d: job %s of %s backs %d leases, this would be lease %d",
			ErrUnfunded, e.Account, e.Seq, b.Job, b.Requester, backed, r.leases+1)
	}
	r.leases++
	return st.putLeases(e.Account, b.Job, r)
}
