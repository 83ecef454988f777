package ledger

import (
	"errors"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
)

// TestSeqErrorReadsLikeTheOthers checks that the lazily built refusals of
// duplicates and gaps wrap their sentinel and read as formatted errors do.
func TestSeqErrorReadsLikeTheOthers(t *testing.T) {
	id := peer.ID("\x00\x24\x08\x01\x12\x20" + string(make([]byte, 32)))
	for _, tt := range []struct {
		err  *seqError
		kind error
		want string
	}{
		{&seqError{kind: ErrDuplicate, account: id, seq: 3}, ErrDuplicate, ErrDuplicate.Error() + ": " + id.String() + " seq 3"},
		{&seqError{kind: ErrGap, account: id, seq: 9, have: 4, known: true}, ErrGap, ErrGap.Error() + ": " + id.String() + " seq 9, have up to 4"},
	} {
		if !errors.Is(tt.err, tt.kind) || tt.err.Error() != tt.want {
			t.Errorf("%q (is %v: %v), want %q", tt.err.Error(), tt.kind, errors.Is(tt.err, tt.kind), tt.want)
		}
	}
}
