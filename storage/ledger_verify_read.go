package storage

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"slices"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol/ledger"
)

// stored is everything Verify reads, from one snapshot.
type stored struct {
	chains map[peer.ID][]*ledger.Candidate
	nEntry uint64
	hashes map[ledger.Hash][]byte
	accts  map[peer.ID]ledger.AccountState
	holds  map[ledger.FundKey][]byte
	paids  map[ledger.JobKey][]byte
	claims map[ledger.FundKey][]byte
	reps   map[peer.ID]ledger.Reputation
	funds  map[ledger.FundKey][]byte
	leases map[ledger.JobKey][]byte
	voters map[ledger.JobKey][]byte
	fraud  map[peer.ID][]byte
	count  []byte
}

// sortedAccounts returns the accounts of chains in order.
func sortedAccounts(chains map[peer.ID][]*ledger.Candidate) []peer.ID {
	ids := make([]peer.ID, 0, len(chains))
	for id := range chains {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// parseFundKey reads a key of the hold, fund or claim index without its
// prefix: a requester, a job and a provider or none (or, in the fund
// index, a provider as ledger.V3Holds names it).
func parseFundKey(k []byte) (ledger.FundKey, bool) {
	const head = ledger.AccountIDLen + len(ledger.Hash{})
	v3 := ledger.V3Holds("")
	named := head + ledger.AccountIDLen
	if len(k) != head && len(k) != named && (len(k) != named+len(v3) || string(k[named:]) != string(v3)) {
		return ledger.FundKey{}, false
	}
	return ledger.FundKey{Requester: peer.ID(k[:ledger.AccountIDLen]), Job: ledger.Hash(k[ledger.AccountIDLen:head]), Provider: peer.ID(k[head:])}, true
}

// parseJobKey reads a key of the payment or lease index without its
// prefix: an account and a job.
func parseJobKey(k []byte) (ledger.JobKey, bool) {
	if len(k) != ledger.AccountIDLen+len(ledger.Hash{}) {
		return ledger.JobKey{}, false
	}
	return ledger.JobKey{Account: peer.ID(k[:ledger.AccountIDLen]), Job: ledger.Hash(k[ledger.AccountIDLen:])}, true
}

// snapshotReader reads the ledger's keys from one transaction, noting as
// problems the keys and values it cannot parse.
type snapshotReader struct {
	ctx   context.Context
	txn   *badger.Txn
	s     *stored
	probs []ledger.Problem
}

// readAll reads the ledger's keys from one snapshot. Entries that do not
// decode or sit under the wrong key are problems (their candidate has Err
// set and no account).
func (l *Ledger) readAll(ctx context.Context) (*stored, []ledger.Problem, error) {
	s := &stored{
		chains: make(map[peer.ID][]*ledger.Candidate), hashes: make(map[ledger.Hash][]byte),
		accts: make(map[peer.ID]ledger.AccountState), holds: make(map[ledger.FundKey][]byte), paids: make(map[ledger.JobKey][]byte),
		claims: make(map[ledger.FundKey][]byte), reps: make(map[peer.ID]ledger.Reputation),
		funds: make(map[ledger.FundKey][]byte), leases: make(map[ledger.JobKey][]byte), voters: make(map[ledger.JobKey][]byte), fraud: make(map[peer.ID][]byte),
	}
	var probs []ledger.Problem
	err := l.db.bdb.View(func(txn *badger.Txn) error {
		r := &snapshotReader{ctx: ctx, txn: txn, s: s}
		for _, step := range []func() error{r.entries, r.hashes, r.accounts, r.jobIndexes, r.threeKeyed, r.reputations, r.fraud} {
			if err := step(); err != nil {
				return err
			}
		}
		probs = r.probs
		var err error
		s.count, err = getValue(txn, []byte(keyLedgerCount))
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("verify ledger: %w", err)
	}
	return s, probs, nil
}

// scan calls f with the key (without prefix) and value of every key under
// prefix, checking ctx now and then.
func (r *snapshotReader) scan(prefix string, f func(k, v []byte)) error {
	it := r.txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefix), PrefetchValues: true, PrefetchSize: 256})
	defer it.Close()
	n := 0
	for it.Rewind(); it.Valid(); it.Next() {
		if n++; n%4096 == 0 {
			if err := r.ctx.Err(); err != nil {
				return err
			}
		}
		v, err := it.Item().ValueCopy(nil)
		if err != nil {
			return err
		}
		f(it.Item().KeyCopy(nil)[len(prefix):], v)
	}
	return nil
}

func (r *snapshotReader) problem(p ledger.Problem) { r.probs = append(r.probs, p) }

func (r *snapshotReader) entries() error {
	return r.scan(keyEntryPrefix, func(k, v []byte) {
		r.s.nEntry++
		if len(k) <= 8 {
			r.problem(ledger.Problem{Err: fmt.Errorf("%w: entry key %x", ErrInconsistent, k)})
			return
		}
		id, seq := peer.ID(k[:len(k)-8]), binary.BigEndian.Uint64(k[len(k)-8:])
		c := &ledger.Candidate{Raw: v, Hash: sha256.Sum256(v)}
		c.Entry, c.Err = ledger.DecodeEntry(v)
		if c.Err == nil && (c.Entry.Account != id || c.Entry.Seq != seq) {
			c.Err = fmt.Errorf("%w: entry of %s seq %d stored as seq %d of %s", ErrInconsistent, c.Entry.Account, c.Entry.Seq, seq, id)
		}
		if c.Err != nil {
			c.Entry = ledger.Entry{Seq: seq}
		}
		r.s.chains[id] = append(r.s.chains[id], c)
	})
}

func (r *snapshotReader) hashes() error {
	return r.scan(keyHashPrefix, func(k, v []byte) {
		if len(k) != len(ledger.Hash{}) {
			r.problem(ledger.Problem{Err: fmt.Errorf("%w: hash index key %x", ErrInconsistent, k)})
			return
		}
		r.s.hashes[ledger.Hash(k)] = v
	})
}

func (r *snapshotReader) accounts() error {
	return r.scan(keyAcctPrefix, func(k, v []byte) {
		a, err := ledger.DecodeAccountState(v)
		if err != nil {
			r.problem(ledger.Problem{Account: peer.ID(k), Err: err})
			return
		}
		r.s.accts[peer.ID(k)] = a
	})
}

func (r *snapshotReader) jobIndexes() error {
	for _, idx := range []struct {
		prefix string
		m      map[ledger.JobKey][]byte
	}{{keyPaidPrefix, r.s.paids}, {keyLeasePrefix, r.s.leases}, {keyVotersPrefix, r.s.voters}} {
		err := r.scan(idx.prefix, func(k, v []byte) {
			jk, ok := parseJobKey(k)
			if !ok {
				r.problem(ledger.Problem{Err: fmt.Errorf("%w: key %s%x", ErrInconsistent, idx.prefix, k)})
				return
			}
			idx.m[jk] = v
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// threeKeyed reads the indexes keyed by an account, a job and another
// account or none: holds, holds ever written, final claims.
func (r *snapshotReader) threeKeyed() error {
	for _, idx := range []struct {
		prefix string
		m      map[ledger.FundKey][]byte
	}{{keyHoldPrefix, r.s.holds}, {keyFundPrefix, r.s.funds}, {keyClaimPrefix, r.s.claims}} {
		err := r.scan(idx.prefix, func(k, v []byte) {
			fk, ok := parseFundKey(k)
			if !ok || idx.prefix == keyClaimPrefix && fk.Provider == "" {
				r.problem(ledger.Problem{Err: fmt.Errorf("%w: key %s%x", ErrInconsistent, idx.prefix, k)})
				return
			}
			idx.m[fk] = v
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func (r *snapshotReader) reputations() error {
	return r.scan(keyRepPrefix, func(k, v []byte) {
		rep, err := ledger.DecodeReputation(v)
		if err != nil {
			r.problem(ledger.Problem{Account: peer.ID(k), Err: err})
			return
		}
		r.s.reps[peer.ID(k)] = rep
	})
}

func (r *snapshotReader) fraud() error {
	return r.scan(keyFraudPrefix, func(k, v []byte) { r.s.fraud[peer.ID(k)] = v })
}
