package storage

import (
	"bytes"
	"fmt"
	"math/bits"
	"sync/atomic"

	"github.com/cespare/xxhash/v2"
	badger "github.com/dgraph-io/badger/v4"
)

// filteredPrefixes are the ledger keys that lookups usually miss: an entry
// arriving from a peer is looked up by hash before its signature is
// checked, a new hold and a payment look for the hold and payment of their
// job, and nearly always find none; a hold counts the holds of its job
// before it, and a lease the leases, and of the two holds a lease looks
// for (naming its provider, naming none) one is usually absent.
var filteredPrefixes = [][]byte{[]byte(keyHashPrefix), []byte(keyHoldPrefix), []byte(keyPaidPrefix),
	[]byte(keyFundPrefix), []byte(keyLeasePrefix), []byte(keyClaimPrefix)}

// keyFilterProbes is how many bits of its word a key sets. At 11 bits a
// key (the size the filter is made for) four give about 1.5 % false
// positives.
const keyFilterProbes = 4

// keyFilter is a Bloom filter over the ledger's keys with a filtered
// prefix, so that a lookup it rules out costs a hash and one memory read
// instead of a Badger read. It is blocked: a key's bits all lie in one
// 64-bit word, so a probe touches one cache line. It only gains keys (a
// deleted hold stays in it): it may say "maybe" of an absent key, never
// "no" of a present one. A key is added before the transaction that writes
// it commits, so a reader that can see the key in Badger sees its bits.
// It is sized when the ledger opens, and past that size it rules out fewer
// keys until the next open. Safe for concurrent use.
type keyFilter struct {
	words []atomic.Uint64
	mask  uint64 // len(words) − 1; len(words) is a power of two
}

// newKeyFilter returns a filter for about keys keys (at least 2^23 bits,
// 1 MiB).
func newKeyFilter(keys uint64) *keyFilter {
	n := max(keys*11/64, 1<<17)
	n = 1 << bits.Len64(n-1) // a power of two, ≥ n
	return &keyFilter{words: make([]atomic.Uint64, n), mask: n - 1}
}

// filtered reports whether k is a key the filter tracks.
func filtered(k []byte) bool {
	for _, p := range filteredPrefixes {
		if bytes.HasPrefix(k, p) {
			return true
		}
	}
	return false
}

// locate returns k's word and the bits it sets there.
func (f *keyFilter) locate(k []byte) (*atomic.Uint64, uint64) {
	h := xxhash.Sum64(k)
	var m uint64
	for i := range keyFilterProbes {
		m |= 1 << (h >> (6 * i) & 63)
	}
	return &f.words[h>>32&f.mask], m
}

func (f *keyFilter) add(k []byte) {
	w, m := f.locate(k)
	w.Or(m)
}

// mayHave reports whether k may be stored: false means it is not.
func (f *keyFilter) mayHave(k []byte) bool {
	w, m := f.locate(k)
	return w.Load()&m == m
}

// fill adds every stored key with a filtered prefix.
func (f *keyFilter) fill(db *badger.DB) error {
	return db.View(func(txn *badger.Txn) error {
		for _, p := range filteredPrefixes {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: p})
			for it.Rewind(); it.Valid(); it.Next() {
				f.add(it.Item().Key())
			}
			it.Close()
		}
		return nil
	})
}

// openKeyFilter sizes a filter for a ledger of count entries (and as many
// again to come) and fills it from the store.
func openKeyFilter(db *badger.DB, count uint64) (*keyFilter, error) {
	f := newKeyFilter(3 * 2 * count)
	if err := f.fill(db); err != nil {
		return nil, fmt.Errorf("ledger key filter: %w", err)
	}
	return f, nil
}
