package storage

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Defaults of a Ledger's options.
const (
	// DefaultPendingLimit is how many out-of-order entries a Ledger keeps.
	DefaultPendingLimit = 4096
	// DefaultMaxClockSkew is how far in the future an entry's time may be.
	DefaultMaxClockSkew = 10 * time.Minute
	// MaxAppendBatch is the most entries one AppendBatch writes.
	MaxAppendBatch = 256
)

// Ledger is the ledger of one network: every account's hash chain of
// signed entries, and the balances, holds and payments derived from them,
// kept in the node's Badger database.
//
// Every write (Append, AppendBatch, Ingest, IngestMany, IngestFraudProof)
// validates the entries, stores them with all derived indexes in one
// transaction, and syncs to disk before it returns: an entry it reports
// stored survives a crash. The batch forms sync once per batch.
//
// Cross-chain rules are checked so that every node reaches the same
// verdict whatever the order entries arrive in: a hold can only be
// refused for want of funds that a payment from another chain may still
// bring, and a lease for want of a hold that the requester's chain may
// still bring, so ErrOverdraft and ErrUnfunded on ingest are kept pending
// like ErrGap. The one
// exception is an account convicted of equivocation: its entries are
// refused from the moment a node learns of the fraud, so nodes may keep
// different suffixes of a frozen chain.
//
// A Ledger is safe for concurrent use.
type Ledger struct {
	db       *DB
	network  string
	genesis  *Genesis
	grants   map[peer.ID]uint64 // genesis grants, then faucet claims (testnets)
	params   ruleParams
	clock    func() time.Time
	maxSkew  time.Duration
	workers  int
	pendingN int
	onStore  func(Entry)
	// syncReceived syncs ingested entries of other accounts, not only
	// this node's own (see WithReceivedSync).
	syncReceived bool

	mu      sync.Mutex
	accts   map[peer.ID]acctState // committed account states, loaded lazily
	pending pendingBuf

	count atomic.Uint64 // entries stored
	// keys rules out most lookups of absent hashes, holds and payments
	// without a read.
	keys *keyFilter

	claimMu sync.Mutex
	claims  map[leaseSlot]uint64 // leases claimed, not yet written (ClaimLease)
}

// LedgerOption configures OpenLedger.
type LedgerOption func(*Ledger) error

// WithPendingLimit sets how many out-of-order entries the ledger keeps
// in memory (default DefaultPendingLimit); 0 keeps none.
func WithPendingLimit(n int) LedgerOption {
	return func(l *Ledger) error {
		if n < 0 {
			return fmt.Errorf("pending limit %d < 0", n)
		}
		l.pendingN = n
		return nil
	}
}

// WithMaxClockSkew sets how far past the clock an entry's time may be
// (default DefaultMaxClockSkew).
func WithMaxClockSkew(d time.Duration) LedgerOption {
	return func(l *Ledger) error {
		if d < 0 {
			return fmt.Errorf("clock skew %v < 0", d)
		}
		l.maxSkew = d
		return nil
	}
}

// WithVerifyWorkers sets how many goroutines check signatures in a batch
// (default GOMAXPROCS).
func WithVerifyWorkers(n int) LedgerOption {
	return func(l *Ledger) error {
		if n < 1 {
			return fmt.Errorf("verify workers %d < 1", n)
		}
		l.workers = n
		return nil
	}
}

// OpenLedger opens the ledger of network in db. genesis must be valid and
// for network; the first open records its hash and later opens refuse
// another genesis. clock gives the time own entries carry and the limit
// for others' (nil means time.Now).
func OpenLedger(db *DB, network string, genesis *Genesis, clock func() time.Time, opts ...LedgerOption) (*Ledger, error) {
	if genesis == nil {
		return nil, fmt.Errorf("%w: none given", ErrGenesis)
	}
	if err := genesis.Validate(); err != nil {
		return nil, err
	}
	if genesis.Network != network {
		return nil, fmt.Errorf("%w: genesis is for network %q, not %q", ErrGenesis, genesis.Network, network)
	}
	if stored, err := db.Network(); err != nil {
		return nil, err
	} else if stored != network {
		return nil, fmt.Errorf("%w: stored %q, ledger %q", ErrWrongNetwork, stored, network)
	}
	if clock == nil {
		clock = time.Now
	}
	l := &Ledger{
		db: db, network: network, genesis: genesis, clock: clock,
		grants:       make(map[peer.ID]uint64, len(genesis.Grants)),
		maxSkew:      DefaultMaxClockSkew,
		workers:      runtime.GOMAXPROCS(0),
		pendingN:     DefaultPendingLimit,
		syncReceived: true,
		accts:        make(map[peer.ID]acctState),
	}
	for _, o := range opts {
		if err := o(l); err != nil {
			return nil, fmt.Errorf("ledger option: %w", err)
		}
	}
	l.pending = newPendingBuf(l.pendingN)
	if f := genesis.Faucet; f != nil && genesis.Testnet {
		for _, p := range f.Peers {
			l.grants[p] = f.Amount
		}
	}
	for _, g := range genesis.Grants {
		l.grants[g.Peer] = g.Amount
	}
	l.params = ruleParams{grantFor: l.grantFor, rate: genesis.entryRate()}
	gh := genesis.Hash()
	var stored []byte
	err := db.bdb.View(func(txn *badger.Txn) error {
		var err error
		if stored, err = getValue(txn, []byte(keyLedgerGenesis)); err != nil || stored == nil {
			return err
		}
		if !bytes.Equal(stored, gh[:]) {
			return fmt.Errorf("%w: the database holds the ledger of another genesis", ErrGenesis)
		}
		c, err := getValue(txn, []byte(keyLedgerCount))
		if err != nil {
			return err
		}
		if len(c) == 8 {
			l.count.Store(binary.BigEndian.Uint64(c))
		}
		return nil
	})
	if err == nil && stored == nil {
		// A new ledger: the one write an open makes, besides an upgrade.
		err = db.update(func(txn *badger.Txn) error { return txn.Set([]byte(keyLedgerGenesis), gh[:]) })
	}
	if err != nil {
		return nil, fmt.Errorf("open ledger: %w", err)
	}
	if err := upgradeFormat(db, l.params.rate); err != nil {
		return nil, fmt.Errorf("open ledger: %w", err)
	}
	if l.keys, err = openKeyFilter(db.bdb, l.count.Load()); err != nil {
		return nil, err
	}
	return l, nil
}

func getValue(txn *badger.Txn, k []byte) ([]byte, error) {
	item, err := txn.Get(k)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return item.ValueCopy(nil)
}

// Network returns the ledger's network.
func (l *Ledger) Network() string { return l.network }

// Genesis returns the ledger's genesis (not to be changed).
func (l *Ledger) Genesis() *Genesis { return l.genesis }

// grantFor is Genesis.GrantFor, from a map.
func (l *Ledger) grantFor(id peer.ID) (uint64, bool) {
	amt, ok := l.grants[id]
	return amt, ok
}

// EquivocationError is the error of an entry that conflicts with a stored
// one: it wraps ErrEquivocation and holds the proof, to gossip.
type EquivocationError struct {
	Account peer.ID
	Seq     uint64
	Proof   FraudProof
}

// Error implements error.
func (e *EquivocationError) Error() string {
	return fmt.Sprintf("%v: %s wrote two entries with seq %d; account frozen", ErrEquivocation, e.Account, e.Seq)
}

// Unwrap returns ErrEquivocation.
func (e *EquivocationError) Unwrap() error { return ErrEquivocation }

// IngestResult reports what IngestMany did.
type IngestResult struct {
	// Accepted lists the entries stored, in the order stored: given ones
	// and pending ones that became valid.
	Accepted []Entry
	// Duplicates counts given entries that were already stored.
	Duplicates int
	// Rejected lists given entries refused for good (they may become valid
	// later only for ErrFutureTime).
	Rejected []Rejection
	// Fraud lists the fraud proofs found, to gossip; their accounts are
	// frozen.
	Fraud []FraudProof
	// Pending is how many entries wait in the pending buffer afterwards.
	Pending int
}

// Rejection is an entry refused, with the reason.
type Rejection struct {
	// Account and Seq are zero when the bytes could not be decoded.
	Account peer.ID
	Seq     uint64
	Err     error
}

// parallel calls f(0) … f(n-1) on up to workers goroutines.
func parallel(workers, n int, f func(i int)) {
	workers = min(workers, n)
	if workers <= 1 {
		for i := range n {
			f(i)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				f(i)
			}
		})
	}
	wg.Wait()
}

// Ingest validates and stores one entry received from a peer. It returns
// the decoded entry and nil, or an error wrapping one of the package's
// sentinels: ErrDuplicate (already stored: not a failure), ErrGap,
// ErrOverdraft and ErrUnfunded (kept pending: it is stored as soon as what
// it waits for arrives), ErrEquivocation (an *EquivocationError: the account is now
// frozen), or a refusal (ErrMalformed, ErrBadSignature, ErrBadLeaseGrant,
// ErrBrokenChain, ErrFrozen, …).
func (l *Ledger) Ingest(raw []byte) (Entry, error) {
	if len(raw) > MaxEntrySize {
		return Entry{}, fmt.Errorf("%w: %d bytes, limit %d", ErrMalformed, len(raw), MaxEntrySize)
	}
	e, err := DecodeEntry(raw)
	if err != nil {
		return Entry{}, err
	}
	h := sha256.Sum256(raw)
	// A stored entry needs no signature check.
	if ok, err := l.hasHash(h); err != nil {
		return e, err
	} else if ok {
		return e, &seqError{kind: ErrDuplicate, account: e.Account, seq: e.Seq}
	}
	c := &cand{raw: raw, e: e, hash: h, err: e.VerifySignature(l.network)}
	if c.err != nil {
		return e, c.err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if p := l.pending.get(c); p != nil {
		return e, p.waitErr
	}
	r := l.newRun()
	r.received = true
	defer func() { r.t.txn.Discard() }()
	err = r.process(c)
	if isStoreErr(err) {
		return e, err
	}
	if ferr := r.finish(); ferr != nil {
		return e, ferr
	}
	return e, err
}

// IngestMany validates and stores a batch of entries received from peers,
// with one sync: the path for reconciliation. Signatures are checked in
// parallel; the entries are then applied in (account, seq) order, and
// pending ones retried as their predecessors (or the funds they wait for)
// arrive. Entries still waiting stay in a bounded buffer (oldest dropped
// first). The error is only for a failure of the store; the entries'
// fates are in the result.
func (l *Ledger) IngestMany(raws [][]byte) (IngestResult, error) {
	cs := make([]*cand, len(raws))
	for i, raw := range raws {
		c := &cand{raw: raw}
		if c.e, c.err = DecodeEntry(raw); c.err == nil {
			c.hash = sha256.Sum256(raw)
		}
		cs[i] = c
	}
	slices.SortStableFunc(cs, func(a, b *cand) int {
		if c := strings.Compare(string(a.e.Account), string(b.e.Account)); c != 0 {
			return c
		}
		if a.e.Seq != b.e.Seq {
			if a.e.Seq < b.e.Seq {
				return -1
			}
			return 1
		}
		return bytes.Compare(a.hash[:], b.hash[:])
	})
	// Signatures are checked on the workers while the entries already
	// checked are applied: the cores stay busy.
	ready, checked, wait := l.verifyAsync(cs)
	defer wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.newRun()
	r.received = true
	defer func() { r.t.txn.Discard() }()
	for i, c := range cs {
		if r.t.count > 0 && !checked(i) {
			// Commit what is applied while the workers check what
			// follows: Badger's writes then overlap the checks instead
			// of all coming after them. A chunk of sorted entries
			// spans few accounts, so this adds few account records.
			if err := r.commit(); err != nil {
				return r.res, err
			}
		}
		ready(i)
		if c.err != nil {
			r.res.Rejected = append(r.res.Rejected, Rejection{Account: c.e.Account, Seq: c.e.Seq, Err: c.err})
			continue
		}
		if l.pending.get(c) != nil {
			// Given again: retried at the end, as it would be if new.
			// Nothing should leave an entry waiting once what it waits
			// for is stored (wakes), but if something did, giving the
			// entry again (reconciliation does) frees it.
			r.retryAccount(c.e.Account)
			continue
		}
		if err := r.process(c); isStoreErr(err) {
			return r.res, err
		}
	}
	err := r.finish()
	return r.res, err
}

// SignatureBatch is how many signatures IngestMany and Verify check as one
// batch, on one worker. Larger batches cost less per signature but make
// IngestMany wait longer for its first checked entries; curve25519-voi
// uses its faster expanded public keys only in batches below 94. In
// `mira bench ledger` on 2 cores, 64 ingested as fast as 16 or faster,
// and faster than 32 and 90.
const SignatureBatch = 64

// verifyAsync checks the signatures of cs (those decoded) on the ledger's
// workers, in chunks of SignatureBatch, each checked as one batch, in
// order. ready(i) waits until cs[i] is checked; checked(i) reports whether
// it is, without waiting; wait waits for all.
func (l *Ledger) verifyAsync(cs []*cand) (ready func(i int), checked func(i int) bool, wait func()) {
	const chunk = SignatureBatch
	n := (len(cs) + chunk - 1) / chunk
	dones := make([]chan struct{}, n)
	for k := range dones {
		dones[k] = make(chan struct{})
	}
	var next atomic.Int64
	for range min(l.workers, n) {
		go func() {
			for {
				k := int(next.Add(1)) - 1
				if k >= n {
					return
				}
				verifyBatch(l.network, cs[k*chunk:min((k+1)*chunk, len(cs))])
				close(dones[k])
			}
		}()
	}
	ready = func(i int) { <-dones[i/chunk] }
	checked = func(i int) bool {
		select {
		case <-dones[i/chunk]:
			return true
		default:
			return false
		}
	}
	wait = func() {
		for _, d := range dones {
			<-d
		}
	}
	return ready, checked, wait
}

// waits reports whether err refuses an entry only until something it
// needs arrives: its predecessor (ErrGap), funds paid to its account
// (ErrOverdraft), the hold that backs a lease (ErrUnfunded). Such an
// entry is kept pending, not refused.
func waits(err error) bool {
	return errors.Is(err, ErrGap) || errors.Is(err, ErrOverdraft) || errors.Is(err, ErrUnfunded)
}

func isStoreErr(err error) bool {
	var se *storeError
	return errors.As(err, &se)
}

// run is one write: its current transaction and its result.
type run struct {
	l        *Ledger
	t        *ledgerTxn
	res      IngestResult
	now      int64 // limit for entry times, Unix nanoseconds
	dirty    bool  // a transaction was committed: sync at the end
	received bool  // only others' entries: synced if the ledger says so
	// scanned is how many of the entries stored so far (res.Accepted,
	// then t.fresh) finish has looked at for pending entries they may
	// unblock; retry lists accounts whose pending entries were given
	// again, to retry as well.
	scanned int
	retry   map[peer.ID]struct{}
}

func (l *Ledger) newRun() *run {
	return &run{l: l, t: l.begin(), now: l.clock().Add(l.maxSkew).UnixNano()}
}

// roll commits the current transaction if it is full and starts another.
func (r *run) roll() error {
	if !r.t.full() {
		return nil
	}
	return r.commit()
}

func (r *run) commit() error {
	fresh := r.t.fresh
	if err := r.t.commit(); err != nil {
		return err
	}
	r.res.Accepted = append(r.res.Accepted, fresh...)
	if r.l.onStore != nil {
		for _, e := range fresh {
			r.l.onStore(e)
		}
	}
	r.dirty = r.dirty || r.t.count > 0
	r.t = r.l.begin()
	return nil
}

// finish retries the pending entries that the entries stored in this run
// may have unblocked, until none is stored, then commits and syncs. Only
// those: a pending entry waits for its predecessor, for a payment to its
// account (a hold) or for a hold of its requester's job (a lease), and
// nothing else can change its verdict, so entries that wait for what no
// entry of this run brought cost nothing here, however many wait.
func (r *run) finish() error {
	for {
		woken := r.wakes()
		if len(woken) == 0 {
			break
		}
		for _, id := range woken {
			if err := r.drain(id); err != nil {
				return err
			}
		}
	}
	if err := r.commit(); err != nil {
		return err
	}
	r.res.Pending = r.l.pending.len()
	if !r.dirty || r.received && !r.l.syncReceived {
		return nil
	}
	if err := r.l.db.bdb.Sync(); err != nil {
		return storeErr(fmt.Errorf("sync: %w", err))
	}
	return nil
}

// wakes returns, sorted, the accounts with pending entries that the
// entries stored since the last call may have unblocked: their own
// accounts', the accounts payments went to, the providers whose leases
// wait for a hold written; and those of retry.
func (r *run) wakes() []peer.ID {
	set := r.retry
	r.retry = nil
	if set == nil {
		set = map[peer.ID]struct{}{}
	}
	for ; r.scanned < len(r.res.Accepted)+len(r.t.fresh); r.scanned++ {
		var e *Entry
		if i := r.scanned; i < len(r.res.Accepted) {
			e = &r.res.Accepted[i]
		} else {
			e = &r.t.fresh[i-len(r.res.Accepted)]
		}
		set[e.Account] = struct{}{}
		switch b := e.Body.(type) {
		case PaymentBody:
			set[b.To] = struct{}{}
		case HoldBody:
			r.l.pending.leasesAwaiting(e.Account, b.Job, func(p peer.ID) { set[p] = struct{}{} })
		}
	}
	ids := make([]peer.ID, 0, len(set))
	for id := range set {
		if r.l.pending.has(id) {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// retryAccount has finish retry the account's pending entries.
func (r *run) retryAccount(id peer.ID) {
	if r.retry == nil {
		r.retry = map[peer.ID]struct{}{}
	}
	r.retry[id] = struct{}{}
}

// process applies c and, if it is stored, the account's pending entries
// that follow it. It returns c's own outcome.
func (r *run) process(c *cand) error {
	err := r.handle(c)
	if err == nil {
		if derr := r.drain(c.e.Account); derr != nil {
			return derr
		}
	}
	return err
}

// drain applies the account's pending entries while they fit.
func (r *run) drain(id peer.ID) error {
	for r.l.pending.has(id) {
		a, err := r.t.account(id)
		if err != nil {
			return err
		}
		c := r.l.pending.pop(id, a.lastSeq+1)
		if c == nil {
			return nil
		}
		err = r.handle(c)
		if isStoreErr(err) {
			return err
		}
		if err != nil {
			return nil
		}
	}
	return nil
}

// handle applies c and files the outcome in the result.
func (r *run) handle(c *cand) error {
	if err := r.roll(); err != nil {
		return err
	}
	err := r.l.applyLive(r.t, c, r.now)
	var eq *EquivocationError
	switch {
	case err == nil:
	case isStoreErr(err):
	case waits(err):
		c.waitErr = err
		r.l.pending.add(c)
	case errors.Is(err, ErrDuplicate):
		r.res.Duplicates++
	case errors.As(err, &eq):
		r.res.Fraud = append(r.res.Fraud, eq.Proof)
		r.l.pending.dropAccount(c.e.Account)
	default:
		r.res.Rejected = append(r.res.Rejected, Rejection{Account: c.e.Account, Seq: c.e.Seq, Err: err})
	}
	return err
}

// applyLive checks c (signature already verified) against the stored
// ledger and stores it in t: duplicates, equivocation, frozen accounts, the
// time limit, then the kind rules.
func (l *Ledger) applyLive(t *ledgerTxn, c *cand, now int64) error {
	e := &c.e
	a, err := t.account(e.Account)
	if err != nil {
		return err
	}
	if e.Seq <= a.lastSeq {
		stored := a.lastHash
		var storedRaw []byte
		if e.Seq < a.lastSeq || c.hash != stored {
			if storedRaw, err = t.get(entryKey(e.Account, e.Seq)); err != nil {
				return err
			}
			if storedRaw == nil {
				return storeErr(fmt.Errorf("entry %s seq %d missing below the head", e.Account, e.Seq))
			}
			stored = sha256.Sum256(storedRaw)
		}
		if stored == c.hash {
			return &seqError{kind: ErrDuplicate, account: e.Account, seq: e.Seq}
		}
		if a.frozen {
			return fmt.Errorf("%w: %s", ErrFrozen, e.Account)
		}
		proof := newFraudProof(storedRaw, c.raw)
		if err := t.set(fraudKey(e.Account), proof.Encode()); err != nil {
			return err
		}
		a.frozen = true
		return &EquivocationError{Account: e.Account, Seq: e.Seq, Proof: proof}
	}
	if a.frozen {
		return fmt.Errorf("%w: %s", ErrFrozen, e.Account)
	}
	if e.Time.UnixNano() > now {
		return fmt.Errorf("%w: %s seq %d is dated %v", ErrFutureTime, e.Account, e.Seq, e.Time)
	}
	if err := rules(t, l.params, e, c.hash); err != nil {
		return err
	}
	return t.storeEntry(c)
}

// Append writes an entry of priv's account (an Ed25519 key) with body, at
// the head of its chain, after the same checks as Ingest (ErrOverdraft,
// ErrUnfunded, ErrNoHold, ErrFrozen, …). It returns once the entry is on disk.
func (l *Ledger) Append(priv crypto.PrivKey, body Body) (Entry, error) {
	es, err := l.AppendBatch(priv, []Body{body})
	if err != nil {
		return Entry{}, err
	}
	return es[0], nil
}

// AppendBatch writes entries of priv's account with the bodies, in order,
// all or none, with one sync. At most MaxAppendBatch bodies.
func (l *Ledger) AppendBatch(priv crypto.PrivKey, bodies []Body) ([]Entry, error) {
	if len(bodies) == 0 {
		return nil, nil
	}
	if len(bodies) > MaxAppendBatch {
		return nil, fmt.Errorf("append %d entries: at most %d in a batch", len(bodies), MaxAppendBatch)
	}
	id, err := accountOf(priv)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock().UnixNano()
	r := l.newRun()
	defer func() { r.t.txn.Discard() }()
	for _, body := range bodies {
		if body == nil {
			return nil, fmt.Errorf("%w: entry without a body", ErrMalformed)
		}
		a, err := r.t.account(id)
		if err != nil {
			return nil, err
		}
		if a.frozen {
			return nil, fmt.Errorf("%w: %s", ErrFrozen, id)
		}
		e := Entry{Account: id, Seq: a.lastSeq + 1, Prev: a.lastHash, Time: time.Unix(0, max(now, a.lastTime)), Body: body}
		if err := e.Sign(l.network, priv); err != nil {
			return nil, err
		}
		raw := e.Encode()
		// Decoding what others will decode catches bodies out of range.
		if e, err = DecodeEntry(raw); err != nil {
			return nil, err
		}
		// Others check a lease's grant with its signature, which this
		// node's own entries skip: a lease they would refuse must not
		// enter this chain, where it would stop every later entry.
		if err := e.verifyGrant(l.network); err != nil {
			return nil, err
		}
		if r.t.full() {
			return nil, fmt.Errorf("append batch too large for one transaction")
		}
		if err := l.applyLive(r.t, &cand{raw: raw, e: e, hash: sha256.Sum256(raw)}, max(r.now, e.Time.UnixNano())); err != nil {
			return nil, err
		}
	}
	// Own entries are all in the first transaction; a payment among them
	// may be what a pending hold waited for, so finish retries those.
	if err := r.finish(); err != nil {
		return nil, err
	}
	return r.res.Accepted[:len(bodies)], nil
}
