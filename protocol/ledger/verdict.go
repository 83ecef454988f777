package ledger

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"slices"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Verdicts among a job's replicas (entries of version 3). A requester's
// holds of a job carry its replicas k (HoldBody.Replicas); with k ≥ 2 the
// first k providers they name vote (Voters), each with its first receipt
// of the job (LeaseRecord.Vote). A majority is at least k/2+1 votes with
// one outcome (the result's and the outputs' content IDs). A member of a
// majority claims its hold by quoting the others' receipts
// (MajorityClaimBody); the requester releases the hold of a voter whose
// receipt a majority contradicts by quoting them (MajorityReleaseBody).
// Every node checks a verdict against the receipts in the ledger, so no
// side can invent one.
//
// Why every node reaches the same verdict, whatever order entries reach
// it in: a quoted receipt is read only once its chain is applied up to
// it (before, the verdict waits: ErrVerdictWaits), and what it says then
// never changes; the voters are fixed in the requester's chain order, at
// most k, each with one vote, so two majorities with different outcomes
// cannot both exist, and a majority claim and a majority release never
// both apply to one hold. After its vote a voter closes its hold only by
// a majority claim (a claim by acceptance or a waive is refused:
// ErrVoted): a majority release waits for the loser's chain up to its
// vote, so it sees every claim and waive the loser could still write.

// Errors of verdicts.
var (
	// ErrVerdictWaits means a verdict that quotes a receipt whose chain
	// is not applied up to it yet (or a provider that the requester's
	// holds may still name as a voter). It waits (see Waits).
	ErrVerdictWaits = errors.New("verdict quotes a receipt not here yet")
	// ErrBadVerdict means a verdict the quoted receipts do not support:
	// an entry that is not its provider's vote on this job for this
	// requester, a provider that is not a voter or is quoted twice, an
	// outcome that differs, fewer votes than a majority, a job without
	// replicas. Final: what the receipts say does not change.
	ErrBadVerdict = errors.New("verdict not supported by the receipts it quotes")
	// ErrReplicasMismatch means a hold naming a provider whose replicas
	// differ from the job's (its first such hold's).
	ErrReplicasMismatch = errors.New("hold's replicas differ from its job's")
	// ErrVoted means a claim by acceptance or a waive of a hold of a job
	// with replicas by a voter that has voted: from its vote on, only
	// the verdict settles its hold.
	ErrVoted = errors.New("replica has voted: only a verdict settles its hold")
)

// ReceiptRef names a receipt: the provider's entry seq.
type ReceiptRef struct {
	Provider peer.ID
	Seq      uint64
}

// MajorityClaimBody pays, in a provider's chain, out of the requester's
// open hold for Job naming the provider (the hold entry HoldSeq), on the
// word of a majority of the job's voters: its own receipt (its entry
// Receipt) and the others' (Majority), all with one outcome. Amount is
// what the provider has claimed from the hold in all after this claim; it
// closes the hold (the rest returns to the requester). Amount is at most
// the provider's own receipt's units, capped by the lower median of the
// majority's, at its lease's price, and at most the hold (or what was
// claimed before, if more).
type MajorityClaimBody struct {
	Job       Hash
	Requester peer.ID
	HoldSeq   uint64
	Amount    uint64
	Receipt   uint64
	Majority  []ReceiptRef
}

// MajorityReleaseBody closes, in the requester's chain, its open hold for
// Job naming Loser.Provider, whose receipt (Loser) differs from those of
// a majority of the job's voters (Majority). The hold's unclaimed rest
// returns; the loser's reputation counts a verification loss.
type MajorityReleaseBody struct {
	Job      Hash
	Loser    ReceiptRef
	Majority []ReceiptRef
}

// Kind implements Body.
func (MajorityClaimBody) Kind() Kind { return KindMajorityClaim }

// Kind implements Body.
func (MajorityReleaseBody) Kind() Kind { return KindMajorityRelease }

func (b MajorityClaimBody) appendBody(out []byte, _ uint8) []byte {
	out = append(out, b.Job[:]...)
	out = appendField(out, []byte(b.Requester))
	out = binary.BigEndian.AppendUint64(out, b.HoldSeq)
	out = binary.BigEndian.AppendUint64(out, b.Amount)
	out = binary.BigEndian.AppendUint64(out, b.Receipt)
	return appendRefs(out, b.Majority)
}

func (b MajorityReleaseBody) appendBody(out []byte, _ uint8) []byte {
	out = append(out, b.Job[:]...)
	out = appendRef(out, b.Loser)
	return appendRefs(out, b.Majority)
}

func appendRef(out []byte, r ReceiptRef) []byte {
	return binary.BigEndian.AppendUint64(appendField(out, []byte(r.Provider)), r.Seq)
}

// appendRefs appends a count (one byte) and the references.
func appendRefs(out []byte, rs []ReceiptRef) []byte {
	out = append(out, byte(len(rs)))
	for _, r := range rs {
		out = appendRef(out, r)
	}
	return out
}

func (r *reader) ref() ReceiptRef {
	ref := ReceiptRef{Provider: r.peer(), Seq: r.u64()}
	if r.err == nil && ref.Seq == 0 {
		r.fail("receipt seq 0")
	}
	return ref
}

// refs reads 1..MaxReplicas-1 references: a majority quotes at least one
// other receipt, and at most the other voters'.
func (r *reader) refs() []ReceiptRef {
	n := int(r.u8())
	if r.err == nil && (n == 0 || n >= MaxReplicas) {
		r.fail("%d receipts quoted, want 1..%d", n, MaxReplicas-1)
		return nil
	}
	rs := make([]ReceiptRef, 0, n)
	for range n {
		rs = append(rs, r.ref())
	}
	return rs
}

// decodeVerdict reads a majority claim or release.
func decodeVerdict(r *reader, kind Kind) Body {
	job := r.hash()
	if kind == KindMajorityRelease {
		return MajorityReleaseBody{Job: job, Loser: r.ref(), Majority: r.refs()}
	}
	c := MajorityClaimBody{Job: job, Requester: r.peer(), HoldSeq: r.u64(), Amount: r.u64(), Receipt: r.u64()}
	if r.err == nil && c.Receipt == 0 {
		r.fail("receipt seq 0")
	}
	c.Majority = r.refs()
	return c
}

// Outcome is what replicas of a job agree on: the digest of a receipt's
// result and outputs content IDs (each length prefixed).
func Outcome(b ReceiptBody) Hash {
	return sha256.Sum256(appendField(appendField([]byte("mira-outcome/1\x00"), []byte(b.Result)), []byte(b.Outputs)))
}

// billedUnits is what a receipt bills: its GPU-ms, or for a run that
// metered none, its wall ms as one unit.
func billedUnits(u Usage) uint64 {
	if u.GPUMS > 0 {
		return u.GPUMS
	}
	return u.WallMS
}

// voteOf records, in the provider's lease record of the job, the vote a
// receipt of version 3 casts: the first receipt of the job, after a lease
// of version 3 (whose requester and price it answers).
func voteOf(r *LeaseRecord, e *Entry, b ReceiptBody) {
	if r.Receipts != 0 || r.Requester == "" || e.Version() < entryVersion {
		return
	}
	r.Vote = Vote{Seq: e.Seq, Requester: r.Requester, Price: r.Price, Units: billedUnits(b.Usage), Outcome: Outcome(b)}
}

// joinVoters checks a hold of version 3 naming provider against its job's
// replicas, and returns the job's voters with provider among them if
// there is room: the first k providers named vote.
func joinVoters(st State, e *Entry, b HoldBody) (Voters, error) {
	vs, err := st.Voters(e.Account, b.Job)
	if err != nil {
		return vs, err
	}
	if vs.Replicas != 0 && vs.Replicas != b.Replicas {
		return vs, fmt.Errorf("%w: %s seq %d: %d replicas, the job has %d", ErrReplicasMismatch, e.Account, e.Seq, b.Replicas, vs.Replicas)
	}
	vs.Replicas = b.Replicas
	if !vs.Has(b.Provider) && !vs.full() {
		vs.Providers = append(slices.Clone(vs.Providers), b.Provider)
	}
	return vs, nil
}

// hasVoted reports whether provider's vote on requester's job is cast and
// counts: the job has replicas, provider is a voter and its vote answers
// requester. From then on only a verdict settles its hold (ErrVoted).
func hasVoted(st State, requester, provider peer.ID, job Hash, hr HoldRecord) (bool, error) {
	if hr.Replicas < 2 {
		return false, nil
	}
	lr, err := st.Leases(provider, job)
	if err != nil || lr.Vote.Seq == 0 || lr.Vote.Requester != requester {
		return false, err
	}
	vs, err := st.Voters(requester, job)
	return vs.Has(provider), err
}

// ballot is what a verdict reads of the votes it quotes.
type ballot struct {
	st        State
	e         *Entry
	requester peer.ID
	job       Hash
	voters    Voters
	seen      map[peer.ID]bool
}

func newBallot(st State, e *Entry, requester peer.ID, job Hash) (*ballot, error) {
	vs, err := st.Voters(requester, job)
	if err != nil {
		return nil, err
	}
	b := &ballot{st: st, e: e, requester: requester, job: job, voters: vs, seen: map[peer.ID]bool{}}
	if vs.Replicas < 2 {
		return nil, b.bad("job %s of %s has no replicas", job, requester)
	}
	return b, nil
}

// majority is how many votes of one outcome decide.
func (b *ballot) majority() int { return int(b.voters.Replicas)/2 + 1 }

func (b *ballot) bad(format string, a ...any) error {
	return fmt.Errorf("%w: %s seq %d: %s", ErrBadVerdict, b.e.Account, b.e.Seq, fmt.Sprintf(format, a...))
}

// vote returns the vote ref quotes: ErrVerdictWaits while its chain is
// not applied up to it (or its provider may still become a voter),
// ErrBadVerdict if it is not a counting vote on the job, or a provider
// quoted twice.
func (b *ballot) vote(ref ReceiptRef) (Vote, error) {
	if b.seen[ref.Provider] {
		return Vote{}, b.bad("%s quoted twice", ref.Provider)
	}
	b.seen[ref.Provider] = true
	if !b.voters.Has(ref.Provider) && b.voters.full() {
		return Vote{}, b.bad("%s is not a voter of job %s", ref.Provider, b.job)
	}
	p, err := b.st.Account(ref.Provider)
	if err != nil {
		return Vote{}, err
	}
	if p.LastSeq < ref.Seq {
		return Vote{}, fmt.Errorf("%w: %s seq %d quotes seq %d of %s, which has %d", ErrVerdictWaits, b.e.Account, b.e.Seq, ref.Seq, ref.Provider, p.LastSeq)
	}
	lr, err := b.st.Leases(ref.Provider, b.job)
	if err != nil {
		return Vote{}, err
	}
	if lr.Vote.Seq != ref.Seq || lr.Vote.Requester != b.requester {
		return Vote{}, b.bad("seq %d of %s is not its vote on job %s of %s", ref.Seq, ref.Provider, b.job, b.requester)
	}
	if !b.voters.Has(ref.Provider) {
		return Vote{}, fmt.Errorf("%w: %s seq %d: %s is not a voter of job %s yet", ErrVerdictWaits, b.e.Account, b.e.Seq, ref.Provider, b.job)
	}
	return lr.Vote, nil
}

// tally is the votes a verdict quotes, those here so far.
type tally struct {
	votes []Vote
	here  []bool
	wait  error // why one is not here (ErrVerdictWaits), if one is not
}

// collect reads the votes refs quote. Its error refuses the verdict for
// good; one that is not here yet only makes it wait (tally.wait), once
// no other refuses it: what a quoted receipt says never changes once its
// chain is here, so a refusal holds in every order.
func (b *ballot) collect(refs []ReceiptRef) (tally, error) {
	t := tally{votes: make([]Vote, len(refs)), here: make([]bool, len(refs))}
	for i, ref := range refs {
		v, err := b.vote(ref)
		switch {
		case errors.Is(err, ErrVerdictWaits):
			t.wait = err
		case err != nil:
			return t, err
		default:
			t.votes[i], t.here[i] = v, true
		}
	}
	return t, nil
}

// agree checks that the votes here have one outcome, and returns it (ok:
// one is here).
func (t tally) agree(b *ballot) (outcome Hash, ok bool, err error) {
	for i, v := range t.votes {
		switch {
		case !t.here[i]:
		case !ok:
			outcome, ok = v.Outcome, true
		case v.Outcome != outcome:
			return outcome, ok, b.bad("the quoted receipts disagree")
		}
	}
	return outcome, ok, nil
}

// majorityBill is what a majority claim may draw at most: the claimant's
// units, capped by the lower median of the majority's (so a member that
// inflates its usage is paid the majority's), at its lease's price per
// unit-second, rounded up, capped by the hold.
func majorityBill(own Vote, votes []Vote, hold uint64) uint64 {
	units := make([]uint64, 0, len(votes))
	for _, v := range votes {
		units = append(units, v.Units)
	}
	slices.Sort(units)
	u := min(own.Units, units[(len(units)-1)/2])
	hi, lo := bits.Mul64(own.Price, u)
	if hi != 0 || lo > ^uint64(0)-999 {
		return hold
	}
	return min((lo+999)/1000, hold)
}

// majorityClaimRule pays a member of a majority out of its hold: the hold
// as a claim's (drawnHold), its own vote and the quoted ones agreeing, at
// least a majority, Amount within majorityBill. It closes the hold.
//
// A hold not as the claim draws on it (ErrNotDrawable, which waits) is
// reported only after the votes: a claim the votes refuse for good is
// refused whether a release closed the hold first or not.
func majorityClaimRule(st State, e *Entry, b MajorityClaimBody) error {
	req, hr, holdErr := drawnHold(st, e, b.Requester, b.Job, b.HoldSeq)
	if holdErr != nil && !errors.Is(holdErr, ErrNotDrawable) {
		return holdErr
	}
	bal, err := newBallot(st, e, b.Requester, b.Job)
	if err != nil {
		return err
	}
	if 1+len(b.Majority) < bal.majority() {
		return bal.bad("%d votes, a majority of %d replicas is %d", 1+len(b.Majority), bal.voters.Replicas, bal.majority())
	}
	// Its own receipt is earlier in its own chain: here.
	refs := append([]ReceiptRef{{Provider: e.Account, Seq: b.Receipt}}, b.Majority...)
	t, err := bal.collect(refs)
	if err != nil {
		return err
	}
	if _, _, err := t.agree(bal); err != nil {
		return err
	}
	if t.wait != nil {
		return t.wait
	}
	if holdErr != nil {
		return holdErr
	}
	limit := max(hr.Claimed, majorityBill(t.votes[0], t.votes, hr.Amount))
	switch {
	case b.Amount > limit:
		return fmt.Errorf("%w: %s seq %d claims %d, the majority's bill is %d", ErrPaymentAboveHold, e.Account, e.Seq, b.Amount, limit)
	case b.Amount < hr.Claimed:
		return fmt.Errorf("%w: %s seq %d claims %d in all, %d claimed before", ErrAlreadyPaid, e.Account, e.Seq, b.Amount, hr.Claimed)
	}
	return drawClaim(st, e, req, b.Requester, b.Job, hr, b.Amount, true)
}

// majorityReleaseRule closes the hold naming a voter whose vote a
// majority contradicts: the quoted votes, at least a majority, agree with
// each other and differ from the loser's, whose receipt must be in the
// ledger (no requester can invent a mismatch). The verdict is read before
// the hold: by then the loser's chain is applied up to its vote, and
// nothing it writes after can close the hold.
func majorityReleaseRule(st State, a *AccountState, e *Entry, b MajorityReleaseBody) error {
	bal, err := newBallot(st, e, e.Account, b.Job)
	if err != nil {
		return err
	}
	if len(b.Majority) < bal.majority() {
		return bal.bad("%d votes, a majority of %d replicas is %d", len(b.Majority), bal.voters.Replicas, bal.majority())
	}
	loser, err := bal.collect([]ReceiptRef{b.Loser})
	if err != nil {
		return err
	}
	t, err := bal.collect(b.Majority)
	if err != nil {
		return err
	}
	outcome, ok, err := t.agree(bal)
	if err != nil {
		return err
	}
	if ok && loser.here[0] && loser.votes[0].Outcome == outcome {
		return bal.bad("the loser %s agrees with the majority", b.Loser.Provider)
	}
	if t.wait != nil || loser.wait != nil {
		return errors.Join(t.wait, loser.wait)
	}
	hr, open, err := st.Hold(e.Account, b.Job, b.Loser.Provider)
	if err != nil {
		return err
	}
	if !open {
		return where(e, ErrNoHold)
	}
	if err := st.DeleteHold(e.Account, b.Job, b.Loser.Provider); err != nil {
		return err
	}
	a.Held -= hr.Rest()
	return bump(st, b.Loser.Provider, func(r *Reputation) { sat(&r.VerificationLosses, 1) })
}
