package storage

import (
	"encoding/binary"
	"errors"
	"fmt"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol/ledger"
)

// Badger keys of the ledger. Accounts are raw peer ID bytes, seqs and
// times 8 bytes big-endian, so prefix scans come out in order.
const (
	keyEntryPrefix = "ledger/e/"    // <account><seq> → entry bytes
	keyHashPrefix  = "ledger/h/"    // <hash> → <seq><unix nanos><account>
	keyAcctPrefix  = "ledger/acct/" // <account> → ledger.AccountState
	// <account><job><provider, or nothing> → ledger.HoldRecord; the
	// provider for a hold of version 3 naming one (format 5)
	keyHoldPrefix = "ledger/hold/"
	keyPaidPrefix = "ledger/paid/" // <account><job> → payment seq
	// <requester><job><provider> → the provider's final claim's seq (format 5)
	keyClaimPrefix = "ledger/claim/"
	keyRepPrefix   = "ledger/rep/" // <peer> → ledger.Reputation (format 5)
	// <requester><job> → ledger.Voters: the job's replicas and voters (format 5)
	keyVotersPrefix = "ledger/voters/"
	// <requester><job><provider, or nothing> → holds ever written (format 3)
	keyFundPrefix    = "ledger/fund/"
	keyLeasePrefix   = "ledger/lease/" // <provider><job> → ledger.LeaseRecord (format 3)
	keyFraudPrefix   = "ledger/fraud/"
	keyLedgerCount   = "ledger/meta/count"
	keyLedgerGenesis = "ledger/meta/genesis"
)

func entryKey(id peer.ID, seq uint64) []byte {
	k := make([]byte, 0, len(keyEntryPrefix)+len(id)+8)
	k = append(append(k, keyEntryPrefix...), id...)
	return binary.BigEndian.AppendUint64(k, seq)
}

func hashKey(h ledger.Hash) []byte { return append([]byte(keyHashPrefix), h[:]...) }

func acctKey(id peer.ID) []byte { return append([]byte(keyAcctPrefix), id...) }

func holdKey(id peer.ID, job ledger.Hash, provider peer.ID) []byte {
	return threeKey(keyHoldPrefix, id, job, provider)
}

func claimKey(requester peer.ID, job ledger.Hash, provider peer.ID) []byte {
	return threeKey(keyClaimPrefix, requester, job, provider)
}

func votersKey(requester peer.ID, job ledger.Hash) []byte {
	return threeKey(keyVotersPrefix, requester, job, "")
}

func repKey(id peer.ID) []byte { return append([]byte(keyRepPrefix), id...) }

// threeKey is prefix, an account, a job and a second account or nothing.
func threeKey(prefix string, a peer.ID, job ledger.Hash, b peer.ID) []byte {
	k := make([]byte, 0, len(prefix)+len(a)+len(job)+len(b))
	return append(append(append(append(k, prefix...), a...), job[:]...), b...)
}

func paidKey(id peer.ID, job ledger.Hash) []byte {
	return append(append([]byte(keyPaidPrefix), id...), job[:]...)
}

func fundKey(requester peer.ID, job ledger.Hash, provider peer.ID) []byte {
	return threeKey(keyFundPrefix, requester, job, provider)
}

func leaseKey(provider peer.ID, job ledger.Hash) []byte {
	return append(append([]byte(keyLeasePrefix), provider...), job[:]...)
}

func fraudKey(id peer.ID) []byte { return append([]byte(keyFraudPrefix), id...) }

// hashRef is the value under ledger/h/: where the entry is, and its time
// (so that a listing can be put in causal order without reading entries).
func hashRef(id peer.ID, seq uint64, nanos int64) []byte {
	ref := binary.BigEndian.AppendUint64(make([]byte, 0, 16+len(id)), seq)
	return append(binary.BigEndian.AppendUint64(ref, uint64(nanos)), id...)
}

// parseHashRef reads a hashRef.
func parseHashRef(ref []byte) (id peer.ID, seq uint64, nanos int64, ok bool) {
	if len(ref) <= 16 {
		return "", 0, 0, false
	}
	return peer.ID(ref[16:]), binary.BigEndian.Uint64(ref), int64(binary.BigEndian.Uint64(ref[8:])), true
}

// ErrStore marks a failure of this node's store (no room on its disk, a
// Badger error), not of what was written: no fault of the peer that sent
// it.
var ErrStore = errors.New("ledger store failed")

// storeError marks a failure of the store (not of an entry): it aborts the
// batch.
type storeError struct{ err error }

func (e *storeError) Error() string { return "ledger store: " + e.err.Error() }

// Unwrap returns ErrStore and the failure.
func (e *storeError) Unwrap() []error { return []error{ErrStore, e.err} }

func storeErr(err error) error {
	if err == nil {
		return nil
	}
	var se *storeError
	if errors.As(err, &se) {
		return err
	}
	return &storeError{err}
}

// staged is an account's state within a transaction, with the committed
// state it started from.
type staged struct {
	orig, cur ledger.AccountState
}

// ledgerTxn is the live ledger.State: a Badger update transaction plus the
// accounts it changed. Account records are written once, at flush.
type ledgerTxn struct {
	l      *Ledger
	txn    *badger.Txn
	staged map[peer.ID]*staged
	added  uint64 // entries stored
	// size and count estimate the transaction's size the way Badger does,
	// to commit before it refuses with ErrTxnTooBig.
	size, count int64
	fresh       []ledger.Entry // entries stored in this transaction
}

func (l *Ledger) begin() *ledgerTxn {
	return &ledgerTxn{l: l, txn: l.db.bdb.NewTransaction(true), staged: make(map[peer.ID]*staged)}
}

// full reports whether the transaction should be committed before another
// entry goes in: a margin for one more entry and the account records.
func (t *ledgerTxn) full() bool {
	maxSize, maxCount := t.l.db.bdb.MaxBatchSize(), t.l.db.bdb.MaxBatchCount()
	accts := int64(len(t.staged)+2) * (ledger.AccountStateLen + 64)
	return t.size+accts+2*ledger.MaxEntrySize >= maxSize/2 || t.count+int64(len(t.staged))+16 >= maxCount/2
}

func (t *ledgerTxn) set(k, v []byte) error {
	if filtered(k) {
		t.l.keys.add(k) // before the commit that makes k visible
	}
	t.size += int64(len(k) + len(v) + 12)
	t.count++
	return storeErr(t.txn.Set(k, v))
}

func (t *ledgerTxn) del(k []byte) error {
	t.size += int64(len(k) + 12)
	t.count++
	return storeErr(t.txn.Delete(k))
}

// get returns a copy of the value under k, or nil if there is none.
func (t *ledgerTxn) get(k []byte) ([]byte, error) {
	if filtered(k) && !t.l.keys.mayHave(k) {
		return nil, nil
	}
	item, err := t.txn.Get(k)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, storeErr(err)
	}
	v, err := item.ValueCopy(nil)
	if v == nil {
		v = []byte{}
	}
	return v, storeErr(err)
}

func (t *ledgerTxn) Account(id peer.ID) (*ledger.AccountState, error) {
	if s, ok := t.staged[id]; ok {
		return &s.cur, nil
	}
	a, ok := t.l.accts[id]
	if !ok {
		v, err := t.get(acctKey(id))
		if err != nil {
			return nil, err
		}
		if v != nil {
			if a, err = ledger.DecodeAccountState(v); err != nil {
				return nil, storeErr(fmt.Errorf("account %s: %w", id, err))
			}
		}
		t.l.accts[id] = a
	}
	s := &staged{orig: a, cur: a}
	t.staged[id] = s
	return &s.cur, nil
}

func (t *ledgerTxn) Hold(id peer.ID, job ledger.Hash, provider peer.ID) (ledger.HoldRecord, bool, error) {
	v, err := t.get(holdKey(id, job, provider))
	if err != nil || v == nil {
		return ledger.HoldRecord{}, false, err
	}
	h, err := ledger.DecodeHoldRecord(v)
	if err != nil {
		return ledger.HoldRecord{}, false, storeErr(fmt.Errorf("hold of %s: %w", id, err))
	}
	return h, true, nil
}

func (t *ledgerTxn) PutHold(id peer.ID, job ledger.Hash, provider peer.ID, h ledger.HoldRecord) error {
	return t.set(holdKey(id, job, provider), h.Encode())
}

func (t *ledgerTxn) DeleteHold(id peer.ID, job ledger.Hash, provider peer.ID) error {
	return t.del(holdKey(id, job, provider))
}

func (t *ledgerTxn) Claimed(requester peer.ID, job ledger.Hash, provider peer.ID) (bool, error) {
	v, err := t.get(claimKey(requester, job, provider))
	return v != nil, err
}

func (t *ledgerTxn) PutClaimed(requester peer.ID, job ledger.Hash, provider peer.ID, seq uint64) error {
	return t.set(claimKey(requester, job, provider), binary.BigEndian.AppendUint64(nil, seq))
}

func (t *ledgerTxn) Voters(requester peer.ID, job ledger.Hash) (ledger.Voters, error) {
	v, err := t.get(votersKey(requester, job))
	if err != nil || v == nil {
		return ledger.Voters{}, err
	}
	vs, err := ledger.DecodeVoters(v)
	if err != nil {
		return vs, storeErr(fmt.Errorf("voters of %s: %w", requester, err))
	}
	return vs, nil
}

func (t *ledgerTxn) PutVoters(requester peer.ID, job ledger.Hash, v ledger.Voters) error {
	return t.set(votersKey(requester, job), v.Encode())
}

func (t *ledgerTxn) Reputation(id peer.ID) (ledger.Reputation, error) {
	v, err := t.get(repKey(id))
	if err != nil || v == nil {
		return ledger.Reputation{}, err
	}
	r, err := ledger.DecodeReputation(v)
	if err != nil {
		return r, storeErr(fmt.Errorf("reputation of %s: %w", id, err))
	}
	return r, nil
}

func (t *ledgerTxn) PutReputation(id peer.ID, r ledger.Reputation) error {
	return t.set(repKey(id), r.Encode())
}

func (t *ledgerTxn) Paid(id peer.ID, job ledger.Hash) (bool, error) {
	v, err := t.get(paidKey(id, job))
	return v != nil, err
}

func (t *ledgerTxn) PutPaid(id peer.ID, job ledger.Hash, seq uint64) error {
	return t.set(paidKey(id, job), binary.BigEndian.AppendUint64(nil, seq))
}

func (t *ledgerTxn) Funding(requester peer.ID, job ledger.Hash, provider peer.ID) (uint64, error) {
	return getCount(t.get(fundKey(requester, job, provider)))
}

func (t *ledgerTxn) PutFunding(requester peer.ID, job ledger.Hash, provider peer.ID, n uint64) error {
	return t.set(fundKey(requester, job, provider), binary.BigEndian.AppendUint64(nil, n))
}

func (t *ledgerTxn) Leases(provider peer.ID, job ledger.Hash) (ledger.LeaseRecord, error) {
	v, err := t.get(leaseKey(provider, job))
	if err != nil || v == nil {
		return ledger.LeaseRecord{}, err
	}
	r, err := ledger.DecodeLeaseRecord(v)
	if err != nil {
		return ledger.LeaseRecord{}, storeErr(fmt.Errorf("leases of %s: %w", provider, err))
	}
	return r, nil
}

func (t *ledgerTxn) PutLeases(provider peer.ID, job ledger.Hash, r ledger.LeaseRecord) error {
	return t.set(leaseKey(provider, job), r.Encode())
}

// getCount reads a stored 8-byte count (none: 0).
func getCount(v []byte, err error) (uint64, error) {
	switch {
	case err != nil || v == nil:
		return 0, err
	case len(v) != 8:
		return 0, storeErr(fmt.Errorf("%w: count of %d bytes", ErrInconsistent, len(v)))
	}
	return binary.BigEndian.Uint64(v), nil
}

// storeEntry writes an accepted entry and its hash index.
func (t *ledgerTxn) storeEntry(c *ledger.Candidate) error {
	if err := t.set(entryKey(c.Entry.Account, c.Entry.Seq), c.Raw); err != nil {
		return err
	}
	if err := t.set(hashKey(c.Hash), hashRef(c.Entry.Account, c.Entry.Seq, c.Entry.Time.UnixNano())); err != nil {
		return err
	}
	t.added++
	t.fresh = append(t.fresh, c.Entry)
	return nil
}

// commit writes the changed account records and the entry count, commits,
// and on success makes the staged accounts the cached committed state. It
// does not sync.
func (t *ledgerTxn) commit() error {
	defer t.txn.Discard()
	for id, s := range t.staged {
		if s.cur != s.orig {
			if err := t.set(acctKey(id), s.cur.Encode()); err != nil {
				return err
			}
		}
	}
	if t.added > 0 {
		if err := t.set([]byte(keyLedgerCount), binary.BigEndian.AppendUint64(nil, t.l.count.Load()+t.added)); err != nil {
			return err
		}
	}
	if err := t.l.db.writable(); err != nil {
		return storeErr(err)
	}
	if err := t.txn.Commit(); err != nil {
		return storeErr(fmt.Errorf("commit: %w", err))
	}
	for id, s := range t.staged {
		t.l.accts[id] = s.cur
	}
	t.l.count.Add(t.added)
	return nil
}
