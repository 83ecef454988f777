package storage

import (
	"crypto/sha256"
	"encoding/binary"
	"testing"

	"github.com/mira-market/mira/protocol/ledger"
)

// TestKeyFilter checks that the filter never rules out a key it was given,
// rules out nearly every other key at the load it is sized for (11 bits a
// key), and only tracks the prefixes that lookups usually miss.
func TestKeyFilter(t *testing.T) {
	f := newKeyFilter(0)
	n := len(f.words) * 64 / 11
	key := func(i int) []byte {
		h := sha256.Sum256(binary.BigEndian.AppendUint64(nil, uint64(i)))
		return hashKey(h)
	}
	for i := range n {
		f.add(key(i))
	}
	for i := range n {
		if !f.mayHave(key(i)) {
			t.Fatalf("key %d added, then ruled out", i)
		}
	}
	maybe := 0
	for i := n; i < 2*n; i++ {
		if f.mayHave(key(i)) {
			maybe++
		}
	}
	if rate := float64(maybe) / float64(n); rate > 0.03 {
		t.Errorf("false positives %.2f %% of %d keys at the sized load, want about 2 %%", 100*rate, n)
	} else {
		t.Logf("false positives %.2f %% of %d keys", 100*rate, n)
	}
	for _, tt := range []struct {
		key  []byte
		want bool
	}{
		{hashKey(ledger.Hash{}), true},
		{holdKey("p", ledger.Hash{}, ""), true},
		{claimKey("p", ledger.Hash{}, "q"), true},
		{repKey("p"), false},
		{paidKey("p", ledger.Hash{}), true},
		{acctKey("p"), false},
		{entryKey("p", 1), false},
		{[]byte(keyLedgerCount), false},
	} {
		if got := filtered(tt.key); got != tt.want {
			t.Errorf("filtered(%q) = %v, want %v", tt.key, got, tt.want)
		}
	}
}
