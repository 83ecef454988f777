package ledger

import (
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
	// ErrClaimExpired means a claim or waive dated after its hold's
	// expiry: final, since neither date changes.
	ErrClaimExpired = errors.New("claim after its hold's expiry")
	// ErrClaimWindowOpen means a release of a hold naming a provider (or
	// a new hold naming it for the job) while that provider may still
	// claim or waive the hold: its chain, as applied here, has no entry
	// dated after the hold's expiry yet. It waits (see Waits).
	ErrClaimWindowOpen = errors.New("hold's claim window still open")
	// ErrReleaseEarly means a release of a hold naming a provider dated
	// before the hold's expiry: only the provider closes such a hold
	// before then. Final, since neither date changes.
	ErrReleaseEarly = errors.New("release before its hold's expiry")
	// ErrPaymentRetired means a payment of version 3: a provider is paid
	// by its own claim, not by the requester.
	ErrPaymentRetired = errors.New("payments are retired: providers claim")
	// ErrWrongPayee means a payment (version 2) to another peer than the
	// provider its hold names.
	ErrWrongPayee = errors.New("payment to a peer its hold does not name")
	// ErrNotDrawable means a claim or waive that the requester's hold at
	// its HoldSeq, as this node applied the requester's chain, does not
	// admit (not that job's hold naming the provider, closed, below the
	// amount, expired before it), or a release of a hold naming a
	// provider that is not open. It waits (see Waits): a requester (or
	// provider) that equivocates shows other nodes another chain, on
	// which the entry may be valid, so refusing it here for good would
	// split an honest counterparty's chain between nodes. A rogue entry
	// waits for ever and stalls only its own chain. It wraps the reason
	// (ErrNoHold, ErrPaymentAboveHold, ErrClaimExpired).
	ErrNotDrawable = errors.New("hold not as the entry draws on it here")
	// ErrSelfAward means a hold naming its own account as the provider:
	// it would let one key pay itself jobs.
	ErrSelfAward = errors.New("hold naming its own account")
	// ErrVersionDown means an entry of an older version than one its
	// account wrote before: once a chain is of version 3, the rules of
	// older versions (payments, holds any lease may draw on) are closed
	// to it. Final: it depends on the chain alone.
	ErrVersionDown = errors.New("entry version below its chain's")
)

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

// Duplicate is the error of an entry of account, seq that is already
// stored: it wraps ErrDuplicate.
func Duplicate(account peer.ID, seq uint64) error {
	return &seqError{kind: ErrDuplicate, account: account, seq: seq}
}

// Waits reports whether err refuses an entry only until something it
// needs arrives: its predecessor (ErrGap), funds paid to its account
// (ErrOverdraft), the hold that backs a lease or that a claim or waive
// draws on (ErrUnfunded, ErrNotDrawable), the provider's entries past a
// hold's expiry (ErrClaimWindowOpen), the receipts a verdict quotes
// (ErrVerdictWaits). Such an entry is kept pending, not refused.
func Waits(err error) bool {
	return errors.Is(err, ErrGap) || waitsOnOthers(err)
}

// waitsOnOthers reports whether err waits for another chain (Waits but
// for ErrGap).
func waitsOnOthers(err error) bool {
	return errors.Is(err, ErrOverdraft) || errors.Is(err, ErrUnfunded) || errors.Is(err, ErrClaimWindowOpen) ||
		errors.Is(err, ErrNotDrawable) || errors.Is(err, ErrVerdictWaits)
}

// Rules are a network's rules for ledger entries, with its parameters
// from genesis.
type Rules struct {
	// grants is what each account may claim with its Grant entry:
	// genesis grants, and faucet claims (testnets).
	grants map[peer.ID]uint64
	rate   RateLimit
}

// NewRules returns the rules of the network of g, a valid genesis.
func NewRules(g *Genesis) *Rules {
	r := &Rules{grants: make(map[peer.ID]uint64, len(g.Grants)), rate: g.RateLimit()}
	if f := g.Faucet; f != nil && g.Testnet {
		for _, p := range f.Peers {
			r.grants[p] = f.Amount
		}
	}
	for _, gr := range g.Grants {
		r.grants[gr.Peer] = gr.Amount
	}
	return r
}

// Rate returns the network's per-account limit on entries.
func (r *Rules) Rate() RateLimit { return r.rate }

// Apply checks e (with hash h) against st and, if valid, applies it. The
// caller has handled duplicates, equivocations, signatures, the future time
// limit and frozen accounts. Nothing changes unless the result is nil.
//
// Every rule reads only the entry's own chain and what other chains have
// added (grants, payments received, holds ever written), never that
// something is absent for good, so every node reaches the same verdict
// whatever order entries reach it in: what another chain may still bring
// is waited for (ErrOverdraft, ErrUnfunded, like ErrGap).
func (r *Rules) Apply(st State, e *Entry, h Hash) error {
	a, err := st.Account(e.Account)
	if err != nil {
		return err
	}
	switch {
	case e.Seq <= a.LastSeq:
		return &seqError{kind: ErrDuplicate, account: e.Account, seq: e.Seq, have: a.LastSeq, known: true}
	case e.Seq > a.LastSeq+1:
		return &seqError{kind: ErrGap, account: e.Account, seq: e.Seq, have: a.LastSeq, known: true}
	case e.Prev != a.LastHash:
		return fmt.Errorf("%w: %s seq %d", ErrBrokenChain, e.Account, e.Seq)
	case e.Time.UnixNano() < a.LastTime:
		return fmt.Errorf("%w: %s seq %d is older than its predecessor", ErrBadTimestamp, e.Account, e.Seq)
	}
	if v := e.Version(); v < entryVersion && a.V3 {
		return fmt.Errorf("%w: %s seq %d is of version %d", ErrVersionDown, e.Account, e.Seq, v)
	}
	paced, ok := r.rate.Admit(a.Paced, e.Time.UnixNano())
	if !ok {
		return where(e, ErrRateLimited)
	}
	if err := r.applyKind(st, a, e); err != nil {
		return err
	}
	if err := countEntry(st, e); err != nil {
		return err
	}
	a.LastSeq, a.LastHash, a.LastTime, a.Paced = e.Seq, h, e.Time.UnixNano(), paced
	a.V3 = a.V3 || e.Version() >= entryVersion
	return nil
}

// where says which entry err refuses.
func where(e *Entry, err error) error { return fmt.Errorf("%w: %s seq %d", err, e.Account, e.Seq) }

// applyKind checks and applies what e's kind asks of its account a (in st).
func (r *Rules) applyKind(st State, a *AccountState, e *Entry) error {
	switch b := e.Body.(type) {
	case GrantBody:
		return r.grantRule(a, e, b)
	case HoldBody:
		return holdRule(st, a, e, b)
	case ReleaseBody:
		return releaseRule(st, a, e, b)
	case PaymentBody:
		return paymentRule(st, a, e, b)
	case LeaseBody:
		return leaseRule(st, e, b)
	case ReceiptBody:
		return receiptRule(st, e, b)
	case ClaimBody:
		return claimRule(st, e, b)
	case WaiveBody:
		return waiveRule(st, e, b)
	case MajorityClaimBody:
		return majorityClaimRule(st, e, b)
	case MajorityReleaseBody:
		return majorityReleaseRule(st, a, e, b)
	default:
		return fmt.Errorf("%w: entry without a body", ErrMalformed)
	}
}

// grantRule credits an account's first entry with what genesis grants it.
func (r *Rules) grantRule(a *AccountState, e *Entry, b GrantBody) error {
	amt, ok := r.grants[e.Account]
	if e.Seq != 1 || !ok || amt != b.Amount {
		return where(e, ErrBadGrant)
	}
	bal, c1 := bits.Add64(a.Balance, b.Amount, 0)
	gr, c2 := bits.Add64(a.Granted, b.Amount, 0)
	if c1|c2 != 0 {
		return where(e, ErrOverflow)
	}
	a.Balance, a.Granted = bal, gr
	return nil
}

// holdRule opens a hold on a job not paid and not held, within the
// account's available balance, and counts it among the holds of the job
// ever written. A hold of version 3 naming a provider has its own rule
// (namedHoldRule).
func holdRule(st State, a *AccountState, e *Entry, b HoldBody) error {
	if b.Provider != "" && e.Version() >= entryVersion {
		return namedHoldRule(st, a, e, b)
	}
	if paid, err := st.Paid(e.Account, b.Job); err != nil {
		return err
	} else if paid {
		return where(e, ErrAlreadyPaid)
	}
	if _, open, err := st.Hold(e.Account, b.Job, ""); err != nil {
		return err
	} else if open {
		return where(e, ErrHoldExists)
	}
	if b.Amount > a.Balance-a.Held {
		return overdraft(e, b.Amount, a.Balance-a.Held)
	}
	if err := st.PutHold(e.Account, b.Job, "", HoldRecord{Provider: b.Provider, Amount: b.Amount, Seq: e.Seq, Replicas: b.Replicas}); err != nil {
		return err
	}
	a.Held += b.Amount
	if e.Version() >= entryVersion {
		// A posting hold of version 3 backs no lease: leases of version
		// 3 need a hold naming their provider, and one of version 2
		// must not find it (two providers would lease one hold).
		return nil
	}
	n, err := st.Funding(e.Account, b.Job, b.Provider)
	if err != nil {
		return err
	}
	return st.PutFunding(e.Account, b.Job, b.Provider, n+1)
}

func overdraft(e *Entry, amount, available uint64) error {
	return fmt.Errorf("%w: %s seq %d holds %d, available %d", ErrOverdraft, e.Account, e.Seq, amount, available)
}

// releaseRule closes an open hold without paying. A hold of version 3
// naming a provider has its own rule (namedReleaseRule).
func releaseRule(st State, a *AccountState, e *Entry, b ReleaseBody) error {
	if b.Provider != "" {
		return namedReleaseRule(st, a, e, b)
	}
	hr, open, err := st.Hold(e.Account, b.Job, "")
	if err != nil {
		return err
	}
	if !open {
		return where(e, ErrNoHold)
	}
	if err := st.DeleteHold(e.Account, b.Job, ""); err != nil {
		return err
	}
	a.Held -= hr.Amount
	return nil
}

// paymentRule pays out of an open hold, at most its amount, once per job,
// only to the provider the hold names (if it names one), and closes the
// hold. Only entries of version 2 and before pay: providers claim.
func paymentRule(st State, a *AccountState, e *Entry, b PaymentBody) error {
	if e.Version() >= entryVersion {
		return where(e, ErrPaymentRetired)
	}
	if paid, err := st.Paid(e.Account, b.Job); err != nil {
		return err
	} else if paid {
		return where(e, ErrAlreadyPaid)
	}
	hr, open, err := st.Hold(e.Account, b.Job, "")
	if err != nil {
		return err
	}
	switch {
	case !open:
		return where(e, ErrNoHold)
	case hr.Provider != "" && b.To != hr.Provider:
		return fmt.Errorf("%w: %s seq %d pays %s, the hold names %s", ErrWrongPayee, e.Account, e.Seq, b.To, hr.Provider)
	case b.Amount > hr.Amount:
		return fmt.Errorf("%w: %s seq %d pays %d out of %d", ErrPaymentAboveHold, e.Account, e.Seq, b.Amount, hr.Amount)
	}
	to, err := st.Account(b.To)
	if err != nil {
		return err
	}
	if to != a {
		if _, c := bits.Add64(to.Balance, b.Amount, 0); c != 0 {
			return where(e, ErrOverflow)
		}
	}
	if err := st.DeleteHold(e.Account, b.Job, ""); err != nil {
		return err
	}
	if err := st.PutPaid(e.Account, b.Job, e.Seq); err != nil {
		return err
	}
	a.Held -= hr.Amount
	a.Balance -= b.Amount
	to.Balance += b.Amount
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
// VerifyBatch: on ingest and in a replay; storage's AppendBatch for a
// node's own), once per entry, not again each time a lease that waits for
// its hold is retried here.
//
// A lease of version 3 is backed only by holds of version 3 naming its
// provider (counted apart, under V3Holds): a hold naming none backs an
// award to no one in particular, and one award it backed would let a
// second provider lease the same funds; a hold of version 2 naming it
// its requester may release at will. A lease of version 2 is backed only
// by holds of version 2.
func leaseRule(st State, e *Entry, b LeaseBody) error {
	r, err := st.Leases(e.Account, b.Job)
	if err != nil {
		return err
	}
	var named, open uint64
	if e.Version() >= entryVersion {
		named, err = st.Funding(b.Requester, b.Job, V3Holds(e.Account))
	} else if named, err = st.Funding(b.Requester, b.Job, e.Account); err == nil {
		open, err = st.Funding(b.Requester, b.Job, "")
	}
	if err != nil {
		return err
	}
	if backed, c := bits.Add64(named, open, 0); c == 0 && r.Leases >= backed {
		return fmt.Errorf("%w: %s seq %d: job %s of %s backs %d leases, this would be lease %d",
			ErrUnfunded, e.Account, e.Seq, b.Job, b.Requester, backed, r.Leases+1)
	}
	r.Leases++
	if e.Version() >= entryVersion {
		r.Requester, r.Price = b.Requester, b.Price
	}
	return st.PutLeases(e.Account, b.Job, r)
}

// receiptRule admits a provider's record of a run: one for each lease of
// the job in its own chain, so a receipt is never more than its lease's
// funding allows. The first of a job, of version 3, is the provider's
// vote in a verdict among the job's replicas (voteOf).
func receiptRule(st State, e *Entry, b ReceiptBody) error {
	r, err := st.Leases(e.Account, b.Job)
	if err != nil {
		return err
	}
	if r.Receipts >= r.Leases {
		return fmt.Errorf("%w: %s seq %d: job %s has %d leases and %d receipts", ErrNoLease, e.Account, e.Seq, b.Job, r.Leases, r.Receipts)
	}
	voteOf(&r, e, b)
	r.Receipts++
	r.LastReceipt, r.GPUMS, r.WallMS = e.Time.UnixNano(), b.Usage.GPUMS, b.Usage.WallMS
	return st.PutLeases(e.Account, b.Job, r)
}

// countEntry adds to the reputations what e says by itself (ReputationOf):
// the rules of the kinds count the rest.
func countEntry(st State, e *Entry) error {
	switch e.Body.(type) {
	case LeaseBody, ReceiptBody, PaymentBody:
	default:
		return nil
	}
	own, err := st.Reputation(e.Account)
	if err != nil {
		return err
	}
	to := &own
	var other Reputation
	if p, ok := e.Body.(PaymentBody); ok && p.To != e.Account {
		if other, err = st.Reputation(p.To); err != nil {
			return err
		}
		to = &other
	}
	ReputationOf(e, &own, to)
	if err := st.PutReputation(e.Account, own); err != nil {
		return err
	}
	if p, ok := e.Body.(PaymentBody); ok && p.To != e.Account {
		return st.PutReputation(p.To, other)
	}
	return nil
}
