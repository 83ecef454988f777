package storage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/libp2p/go-libp2p/core/peer"
)

// ErrInconsistent marks an index that does not match the entries.
var ErrInconsistent = errors.New("ledger index inconsistent with entries")

// Problem is one thing Verify found wrong. Account and Seq are zero when
// it is not about one entry.
type Problem struct {
	Account peer.ID
	Seq     uint64
	Err     error
}

// Error describes the problem.
func (p Problem) Error() string {
	if p.Account == "" {
		return p.Err.Error()
	}
	return fmt.Sprintf("%s seq %d: %v", p.Account, p.Seq, p.Err)
}

// Unwrap returns the cause (a sentinel such as ErrBadSignature or
// ErrInconsistent, wrapped).
func (p Problem) Unwrap() error { return p.Err }

type jobKey struct {
	id  peer.ID
	job Hash
}

// fundKeyOf names the holds of a requester's job naming one provider.
type fundKeyOf struct {
	requester, provider peer.ID
	job                 Hash
}

// verifyState is Verify's ruleState, in memory.
type verifyState struct {
	accts  map[peer.ID]*acctState
	holds  map[jobKey]holdRec
	paids  map[jobKey]uint64
	funds  map[fundKeyOf]uint64
	leased map[jobKey]leaseRec
}

func newVerifyState() *verifyState {
	return &verifyState{accts: make(map[peer.ID]*acctState), holds: make(map[jobKey]holdRec),
		paids: make(map[jobKey]uint64), funds: make(map[fundKeyOf]uint64), leased: make(map[jobKey]leaseRec)}
}

func (v *verifyState) account(id peer.ID) (*acctState, error) {
	a, ok := v.accts[id]
	if !ok {
		a = &acctState{}
		v.accts[id] = a
	}
	return a, nil
}

func (v *verifyState) hold(id peer.ID, job Hash) (holdRec, bool, error) {
	h, ok := v.holds[jobKey{id, job}]
	return h, ok, nil
}

func (v *verifyState) putHold(id peer.ID, job Hash, h holdRec) error {
	v.holds[jobKey{id, job}] = h
	return nil
}

func (v *verifyState) delHold(id peer.ID, job Hash) error {
	delete(v.holds, jobKey{id, job})
	return nil
}

func (v *verifyState) paid(id peer.ID, job Hash) (bool, error) {
	_, ok := v.paids[jobKey{id, job}]
	return ok, nil
}

func (v *verifyState) putPaid(id peer.ID, job Hash, seq uint64) error {
	v.paids[jobKey{id, job}] = seq
	return nil
}

func (v *verifyState) funding(requester peer.ID, job Hash, provider peer.ID) (uint64, error) {
	return v.funds[fundKeyOf{requester, provider, job}], nil
}

func (v *verifyState) putFunding(requester peer.ID, job Hash, provider peer.ID, n uint64) error {
	v.funds[fundKeyOf{requester, provider, job}] = n
	return nil
}

func (v *verifyState) leases(provider peer.ID, job Hash) (leaseRec, error) {
	return v.leased[jobKey{provider, job}], nil
}

func (v *verifyState) putLeases(provider peer.ID, job Hash, r leaseRec) error {
	v.leased[jobKey{provider, job}] = r
	return nil
}

// parseFundKey reads a key of the fund index without its prefix: a
// requester, a job and a provider or none.
func parseFundKey(k []byte) (fundKeyOf, bool) {
	const head = ed25519PeerLen + len(Hash{})
	if len(k) != head && len(k) != head+ed25519PeerLen {
		return fundKeyOf{}, false
	}
	return fundKeyOf{requester: peer.ID(k[:ed25519PeerLen]), job: Hash(k[ed25519PeerLen:head]), provider: peer.ID(k[head:])}, true
}

// stored is everything Verify reads, from one snapshot.
type stored struct {
	chains map[peer.ID][]*cand
	nEntry uint64
	hashes map[Hash][]byte
	accts  map[peer.ID]acctState
	holds  map[jobKey][]byte
	paids  map[jobKey][]byte
	funds  map[fundKeyOf][]byte
	leases map[jobKey][]byte
	fraud  map[peer.ID][]byte
	count  []byte
}

// Verify re-validates the whole ledger from scratch: every entry's
// encoding, signature, chain, rate and kind rules (in an order that lets
// holds see the payments they rely on, and leases the holds), and every
// index (hashes, accounts, holds, payments, holds ever written, leases,
// count, fraud proofs) against the entries. It returns
// the problems found; the error is for failing to read. It reads
// one snapshot and holds it in memory. Times are not checked against the
// clock: an entry valid when stored stays valid.
func (l *Ledger) Verify(ctx context.Context) ([]Problem, error) {
	s, probs, err := l.readAll(ctx)
	if err != nil {
		return nil, err
	}
	add := func(id peer.ID, seq uint64, err error) { probs = append(probs, Problem{id, seq, err}) }

	// Signatures, in parallel, in batches as IngestMany checks them.
	var all []*cand
	for _, ch := range s.chains {
		all = append(all, ch...)
	}
	parallel(l.workers, (len(all)+SignatureBatch-1)/SignatureBatch, func(k int) {
		verifyBatch(l.network, all[k*SignatureBatch:min((k+1)*SignatureBatch, len(all))])
	})
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	// Replay. A hold refused for want of funds, or a lease for want of its
	// hold, is retried after the other chains have moved on; a chain stops
	// at its first problem.
	vs := newVerifyState()
	ids := make([]peer.ID, 0, len(s.chains))
	for id := range s.chains {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	next := make(map[peer.ID]int, len(ids))
	broken := make(map[peer.ID]bool)
	for progress := true; progress; {
		progress = false
		for _, id := range ids {
			for ch := s.chains[id]; !broken[id] && next[id] < len(ch); {
				c := ch[next[id]]
				err := c.err
				if err == nil {
					err = rules(vs, l.params, &c.e, c.hash)
				}
				if errors.Is(err, ErrOverdraft) || errors.Is(err, ErrUnfunded) {
					break
				}
				if err != nil {
					add(id, c.e.Seq, err)
					broken[id] = true
					break
				}
				next[id]++
				progress = true
			}
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
	for _, id := range ids {
		if ch := s.chains[id]; !broken[id] && next[id] < len(ch) {
			c := ch[next[id]]
			add(id, c.e.Seq, rules(vs, l.params, &c.e, c.hash))
			broken[id] = true
		}
	}

	// Fraud proofs.
	for id, v := range s.fraud {
		p, err := DecodeFraudProof(v)
		var who peer.ID
		if err == nil {
			who, err = p.Verify(l.network)
		}
		if err == nil && who != id {
			err = fmt.Errorf("%w: proof against %s stored under %s", ErrBadFraudProof, who, id)
		}
		if err != nil {
			add(id, 0, err)
			continue
		}
		a, _ := vs.account(id)
		a.frozen = true
	}

	// Indexes against the replay.
	bad := func(id peer.ID, seq uint64, format string, a ...any) {
		add(id, seq, fmt.Errorf("%w: %s", ErrInconsistent, fmt.Sprintf(format, a...)))
	}
	seen := make(map[peer.ID]bool)
	for id, want := range vs.accts {
		seen[id] = true
		if !broken[id] && s.accts[id] != *want {
			bad(id, 0, "account record %+v, entries give %+v", s.accts[id], *want)
		}
	}
	for id, got := range s.accts {
		if !seen[id] && !broken[id] && got != (acctState{}) {
			bad(id, 0, "account record %+v without entries", got)
		}
	}
	for k, hr := range vs.holds {
		if v, ok := s.holds[k]; !broken[k.id] && (!ok || !bytes.Equal(v, hr.encode())) {
			bad(k.id, hr.seq, "open hold for job %s not indexed as such", k.job)
		}
	}
	for k := range s.holds {
		if _, ok := vs.holds[k]; !ok && !broken[k.id] {
			bad(k.id, 0, "hold index for job %s without an open hold", k.job)
		}
	}
	for k, seq := range vs.paids {
		if v, ok := s.paids[k]; !broken[k.id] && (!ok || !bytes.Equal(v, binary.BigEndian.AppendUint64(nil, seq))) {
			bad(k.id, seq, "payment for job %s not indexed", k.job)
		}
	}
	for k := range s.paids {
		if _, ok := vs.paids[k]; !ok && !broken[k.id] {
			bad(k.id, 0, "payment index for job %s without a payment", k.job)
		}
	}
	for k, n := range vs.funds {
		if v, ok := s.funds[k]; !broken[k.requester] && (!ok || !bytes.Equal(v, binary.BigEndian.AppendUint64(nil, n))) {
			bad(k.requester, 0, "holds of job %s naming %q: %d written, index says %x", k.job, k.provider, n, v)
		}
	}
	for k := range s.funds {
		if _, ok := vs.funds[k]; !ok && !broken[k.requester] {
			bad(k.requester, 0, "hold index for job %s naming %q without a hold", k.job, k.provider)
		}
	}
	for k, r := range vs.leased {
		if v, ok := s.leases[k]; !broken[k.id] && (!ok || !bytes.Equal(v, r.encode())) {
			bad(k.id, 0, "leases of job %s: %+v written, index says %x", k.job, r, v)
		}
	}
	for k := range s.leases {
		if _, ok := vs.leased[k]; !ok && !broken[k.id] {
			bad(k.id, 0, "lease index for job %s without a lease", k.job)
		}
	}
	hashes := 0
	for _, id := range ids {
		for _, c := range s.chains[id] {
			if c.e.Account == "" { // undecodable, reported
				continue
			}
			if ref, ok := s.hashes[c.hash]; !ok || !bytes.Equal(ref, hashRef(c.e.Account, c.e.Seq, c.e.Time.UnixNano())) {
				bad(id, c.e.Seq, "hash index misses the entry")
			} else {
				hashes++
			}
		}
	}
	if hashes != len(s.hashes) {
		bad("", 0, "%d hash index keys, %d entries they index", len(s.hashes), hashes)
	}
	if s.nEntry > 0 || s.count != nil {
		if len(s.count) != 8 || binary.BigEndian.Uint64(s.count) != s.nEntry {
			bad("", 0, "entry count %x, %d entries stored", s.count, s.nEntry)
		}
	}
	return probs, nil
}

// readAll reads the ledger's keys from one snapshot. Entries that do not
// decode or sit under the wrong key are problems (their cand has err set
// and no account).
func (l *Ledger) readAll(ctx context.Context) (*stored, []Problem, error) {
	s := &stored{
		chains: make(map[peer.ID][]*cand), hashes: make(map[Hash][]byte),
		accts: make(map[peer.ID]acctState), holds: make(map[jobKey][]byte), paids: make(map[jobKey][]byte),
		funds: make(map[fundKeyOf][]byte), leases: make(map[jobKey][]byte), fraud: make(map[peer.ID][]byte),
	}
	var probs []Problem
	scan := func(txn *badger.Txn, prefix string, f func(k, v []byte) error) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefix), PrefetchValues: true, PrefetchSize: 256})
		defer it.Close()
		n := 0
		for it.Rewind(); it.Valid(); it.Next() {
			if n++; n%4096 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			if err := f(it.Item().KeyCopy(nil)[len(prefix):], v); err != nil {
				return err
			}
		}
		return nil
	}
	jobKeyOf := func(k []byte) (jobKey, bool) {
		if len(k) != ed25519PeerLen+len(Hash{}) {
			return jobKey{}, false
		}
		return jobKey{peer.ID(k[:ed25519PeerLen]), Hash(k[ed25519PeerLen:])}, true
	}
	err := l.db.bdb.View(func(txn *badger.Txn) error {
		err := scan(txn, keyEntryPrefix, func(k, v []byte) error {
			s.nEntry++
			if len(k) <= 8 {
				probs = append(probs, Problem{Err: fmt.Errorf("%w: entry key %x", ErrInconsistent, k)})
				return nil
			}
			id, seq := peer.ID(k[:len(k)-8]), binary.BigEndian.Uint64(k[len(k)-8:])
			c := &cand{raw: v, hash: sha256.Sum256(v)}
			c.e, c.err = DecodeEntry(v)
			if c.err == nil && (c.e.Account != id || c.e.Seq != seq) {
				c.err = fmt.Errorf("%w: entry of %s seq %d stored as seq %d of %s", ErrInconsistent, c.e.Account, c.e.Seq, seq, id)
			}
			if c.err != nil {
				c.e = Entry{Seq: seq}
			}
			s.chains[id] = append(s.chains[id], c)
			return nil
		})
		if err != nil {
			return err
		}
		err = scan(txn, keyHashPrefix, func(k, v []byte) error {
			if len(k) != len(Hash{}) {
				probs = append(probs, Problem{Err: fmt.Errorf("%w: hash index key %x", ErrInconsistent, k)})
				return nil
			}
			s.hashes[Hash(k)] = v
			return nil
		})
		if err != nil {
			return err
		}
		err = scan(txn, keyAcctPrefix, func(k, v []byte) error {
			a, err := decodeAcctState(v)
			if err != nil {
				probs = append(probs, Problem{Account: peer.ID(k), Err: err})
				return nil
			}
			s.accts[peer.ID(k)] = a
			return nil
		})
		if err != nil {
			return err
		}
		for _, idx := range []struct {
			prefix string
			m      map[jobKey][]byte
		}{{keyHoldPrefix, s.holds}, {keyPaidPrefix, s.paids}, {keyLeasePrefix, s.leases}} {
			err = scan(txn, idx.prefix, func(k, v []byte) error {
				jk, ok := jobKeyOf(k)
				if !ok {
					probs = append(probs, Problem{Err: fmt.Errorf("%w: key %s%x", ErrInconsistent, idx.prefix, k)})
					return nil
				}
				idx.m[jk] = v
				return nil
			})
			if err != nil {
				return err
			}
		}
		err = scan(txn, keyFundPrefix, func(k, v []byte) error {
			fk, ok := parseFundKey(k)
			if !ok {
				probs = append(probs, Problem{Err: fmt.Errorf("%w: key %s%x", ErrInconsistent, keyFundPrefix, k)})
				return nil
			}
			s.funds[fk] = v
			return nil
		})
		if err != nil {
			return err
		}
		err = scan(txn, keyFraudPrefix, func(k, v []byte) error {
			s.fraud[peer.ID(k)] = v
			return nil
		})
		if err != nil {
			return err
		}
		s.count, err = getValue(txn, []byte(keyLedgerCount))
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("verify ledger: %w", err)
	}
	return s, probs, nil
}
