package node

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"log/slog"
	"testing"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/storage"
)

func TestDecodeGossipEntries(t *testing.T) {
	join := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	a, b := []byte("entry a"), bytes.Repeat([]byte{7}, 300)
	many := func(k int) []byte {
		var msg []byte
		for range k {
			msg = append(msg, protocol.Frame(a)...)
		}
		return msg
	}
	for _, tc := range []struct {
		name string
		msg  []byte
		want int // entries, or -1 for an error
	}{
		{"one", protocol.Frame(a), 1},
		{"two", join(protocol.Frame(a), protocol.Frame(b)), 2},
		{"limit", many(maxGossipEntries), maxGossipEntries},
		{"over the limit", many(maxGossipEntries + 1), -1},
		{"empty", nil, -1},
		{"zero length", []byte{0}, -1},
		{"truncated", protocol.Frame(b)[:100], -1},
		{"length past the end", join(protocol.Frame(a), []byte{5, 1}), -1},
		{"length not minimally encoded", []byte{0x81, 0x00, 7}, -1},
		{"bad varint", []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, -1},
		{"entry over the size limit", protocol.Frame(make([]byte, storage.MaxEntrySize+1)), -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raws, err := decodeGossipEntries(tc.msg)
			if tc.want < 0 {
				if err == nil {
					t.Fatalf("decoded %d entries, want an error", len(raws))
				}
				return
			}
			if err != nil || len(raws) != tc.want {
				t.Fatalf("got %d entries, %v; want %d", len(raws), err, tc.want)
			}
		})
	}
}

func FuzzDecodeGossipEntries(f *testing.F) {
	f.Add(protocol.Frame([]byte("x")))
	f.Add([]byte{0x80})
	f.Fuzz(func(t *testing.T, msg []byte) {
		raws, err := decodeGossipEntries(msg)
		if err != nil {
			return
		}
		var again []byte
		for _, r := range raws {
			if len(r) == 0 || len(r) > storage.MaxEntrySize {
				t.Fatalf("entry of %d bytes", len(r))
			}
			again = append(again, protocol.Frame(r)...)
		}
		if !bytes.Equal(again, msg) {
			t.Fatal("entries do not re-encode to the message")
		}
	})
}

func TestBatchVerdictJudgesOnlyTheBatchsEntries(t *testing.T) {
	priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := peer.IDFromPrivateKey(priv)
	grant, err := storage.LeaseGrant{Job: storage.Hash{1}, Requester: id, Provider: id, Price: 1, Attempt: 1}.Sign("net", priv)
	if err != nil {
		t.Fatal(err)
	}
	e := storage.Entry{Account: id, Seq: 1, Time: time.Unix(1, 0),
		Body: storage.LeaseBody{Job: storage.Hash{1}, Requester: id, Price: 1, Attempt: 1, Grant: grant}}
	if err := e.Sign("net", priv); err != nil {
		t.Fatal(err)
	}
	raws := [][]byte{e.Encode()}
	if _, err := storage.DecodeEntry(raws[0]); err != nil {
		t.Fatal(err)
	}
	other := peer.ID("someone else")
	n := &Node{cfg: Config{Network: "net"}, log: slog.New(slog.DiscardHandler),
		ledgerRejected: prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})}
	for _, tc := range []struct {
		name string
		res  storage.IngestResult
		want pubsub.ValidationResult
	}{
		{"stored", storage.IngestResult{Accepted: []storage.Entry{e}}, pubsub.ValidationAccept},
		{"nothing new", storage.IngestResult{Duplicates: 1}, pubsub.ValidationIgnore},
		{"its entry refused", storage.IngestResult{Rejected: []storage.Rejection{{Account: id, Seq: 1, Err: storage.ErrBrokenChain}}}, pubsub.ValidationReject},
		{"undecodable entry", storage.IngestResult{Rejected: []storage.Rejection{{Err: storage.ErrMalformed}}}, pubsub.ValidationReject},
		{"another account's waiting entry refused", storage.IngestResult{Accepted: []storage.Entry{e},
			Rejected: []storage.Rejection{{Account: other, Seq: 3, Err: storage.ErrBrokenChain}}}, pubsub.ValidationAccept},
		{"its receipt without a lease", storage.IngestResult{Rejected: []storage.Rejection{{Account: id, Seq: 1, Err: storage.ErrNoLease}}}, pubsub.ValidationReject},
		{"its entry over the rate", storage.IngestResult{Rejected: []storage.Rejection{{Account: id, Seq: 1, Err: storage.ErrRateLimited}}}, pubsub.ValidationReject},
		{"its grant not in the genesis", storage.IngestResult{Rejected: []storage.Rejection{{Account: id, Seq: 1, Err: storage.ErrBadGrant}}}, pubsub.ValidationReject},
		{"its lease waits for its hold", storage.IngestResult{Pending: 1}, pubsub.ValidationIgnore},
		{"its lease without a valid grant", storage.IngestResult{Rejected: []storage.Rejection{{Account: id, Seq: 1, Err: storage.ErrBadLeaseGrant}}}, pubsub.ValidationReject},
		{"its entry dated past this node's clock",
			storage.IngestResult{Rejected: []storage.Rejection{{Account: id, Seq: 1, Err: storage.ErrFutureTime}}}, pubsub.ValidationIgnore},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := n.batchVerdict("peer", raws, tc.res); got != tc.want {
				t.Fatalf("verdict %v, want %v", got, tc.want)
			}
		})
	}
}

// TestSenderFault: of the refusals, only those an honest peer can cause
// (it lacks a fraud proof, its clock is ahead) do not count against it.
func TestSenderFault(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{storage.ErrFrozen, false},
		{storage.ErrFutureTime, false},
		{storage.ErrBadTimestamp, true}, // before its predecessor
		{storage.ErrNoLease, true},
		{storage.ErrRateLimited, true},
		{storage.ErrBadSignature, true},
		{storage.ErrBadGrant, true},
	} {
		if got := senderFault(fmt.Errorf("wrapped: %w", tc.err)); got != tc.want {
			t.Errorf("senderFault(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
