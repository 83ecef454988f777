package ledgerd

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pubsubpb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/ledger"
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
		{"limit", many(protocol.MaxGossipEntries), protocol.MaxGossipEntries},
		{"over the limit", many(protocol.MaxGossipEntries + 1), -1},
		{"empty", nil, -1},
		{"zero length", []byte{0}, -1},
		{"truncated", protocol.Frame(b)[:100], -1},
		{"length past the end", join(protocol.Frame(a), []byte{5, 1}), -1},
		{"length not minimally encoded", []byte{0x81, 0x00, 7}, -1},
		{"bad varint", []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, -1},
		{"entry over the size limit", protocol.Frame(make([]byte, ledger.MaxEntrySize+1)), -1},
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
			if len(r) == 0 || len(r) > ledger.MaxEntrySize {
				t.Fatalf("entry of %d bytes", len(r))
			}
			again = append(again, protocol.Frame(r)...)
		}
		if !bytes.Equal(again, msg) {
			t.Fatal("entries do not re-encode to the message")
		}
	})
}

// TestBatchVerdictJudgesOnlyTheBatchsEntries: a batch is forwarded only
// when this node stored every entry of it (or had it already), rejected
// when one of its own entries is refused for a reason an honest sender
// never gives, and otherwise ignored.
func TestBatchVerdictJudgesOnlyTheBatchsEntries(t *testing.T) {
	sign := func(priv crypto.PrivKey, body ledger.Body) ledger.Entry {
		t.Helper()
		id, _ := peer.IDFromPrivateKey(priv)
		e := ledger.Entry{Account: id, Seq: 1, Time: time.Unix(1, 0), Body: body}
		if err := e.Sign("net", priv); err != nil {
			t.Fatal(err)
		}
		return e
	}
	newKey := func() (crypto.PrivKey, peer.ID) {
		priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		id, _ := peer.IDFromPrivateKey(priv)
		return priv, id
	}
	// A lease of the signer's own job, with its grant.
	lease := func(priv crypto.PrivKey, id peer.ID, job ledger.Hash) ledger.Entry {
		grant, err := ledger.LeaseGrant{Job: job, Requester: id, Provider: id, Price: 1, Attempt: 1}.Sign("net", priv)
		if err != nil {
			t.Fatal(err)
		}
		return sign(priv, ledger.LeaseBody{Job: job, Requester: id, Price: 1, Attempt: 1, Grant: grant})
	}
	priv, id := newKey()
	e := lease(priv, id, ledger.Hash{1})
	wpriv, wid := newKey()
	w := lease(wpriv, wid, ledger.Hash{2}) // waits for its hold
	gpriv, gid := newKey()
	g := sign(gpriv, ledger.GrantBody{Amount: 5}) // stored before the verdict, by another ingest
	db, err := storage.Open("", storage.Options{Network: "net", InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	l, err := storage.OpenLedger(db, "net", &ledger.Genesis{Network: "net", Grants: []ledger.GenesisGrant{{Peer: gid, Amount: 5}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Ingest(g.Encode()); err != nil {
		t.Fatal(err)
	}
	other := peer.ID("someone else")
	s := &Service{cfg: Config{Network: "net"}, log: slog.New(slog.DiscardHandler), ledger: l,
		rejected: prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})}
	its := []ledger.Entry{e}
	for _, tc := range []struct {
		name  string
		batch []ledger.Entry
		res   storage.IngestResult
		want  pubsub.ValidationResult
	}{
		{"stored", its, storage.IngestResult{Accepted: []ledger.Entry{e}}, pubsub.ValidationAccept},
		{"nothing new", its, storage.IngestResult{Duplicates: 1}, pubsub.ValidationIgnore},
		{"stored meanwhile by another ingest", []ledger.Entry{g}, storage.IngestResult{Duplicates: 1}, pubsub.ValidationAccept},
		{"one stored, another waits", []ledger.Entry{e, w}, storage.IngestResult{Accepted: []ledger.Entry{e}, Pending: 1}, pubsub.ValidationIgnore},
		{"one stored, another an equivocation", []ledger.Entry{e, w}, storage.IngestResult{Accepted: []ledger.Entry{e},
			Fraud: []ledger.FraudProof{{}}}, pubsub.ValidationIgnore},
		{"its entry refused", its, storage.IngestResult{Rejected: []storage.Rejection{{Account: id, Seq: 1, Err: ledger.ErrBrokenChain}}}, pubsub.ValidationReject},
		{"one stored, another refused", []ledger.Entry{e, w}, storage.IngestResult{Accepted: []ledger.Entry{e},
			Rejected: []storage.Rejection{{Account: wid, Seq: 1, Err: ledger.ErrBrokenChain}}}, pubsub.ValidationReject},
		{"undecodable entry", its, storage.IngestResult{Rejected: []storage.Rejection{{Err: ledger.ErrMalformed}}}, pubsub.ValidationReject},
		{"another account's waiting entry refused", its, storage.IngestResult{Accepted: []ledger.Entry{e},
			Rejected: []storage.Rejection{{Account: other, Seq: 3, Err: ledger.ErrBrokenChain}}}, pubsub.ValidationAccept},
		{"its receipt without a lease", its, storage.IngestResult{Rejected: []storage.Rejection{{Account: id, Seq: 1, Err: ledger.ErrNoLease}}}, pubsub.ValidationReject},
		{"its entry over the rate", its, storage.IngestResult{Rejected: []storage.Rejection{{Account: id, Seq: 1, Err: ledger.ErrRateLimited}}}, pubsub.ValidationReject},
		{"its grant not in the genesis", its, storage.IngestResult{Rejected: []storage.Rejection{{Account: id, Seq: 1, Err: ledger.ErrBadGrant}}}, pubsub.ValidationReject},
		{"its lease waits for its hold", its, storage.IngestResult{Pending: 1}, pubsub.ValidationIgnore},
		{"its lease without a valid grant", its, storage.IngestResult{Rejected: []storage.Rejection{{Account: id, Seq: 1, Err: ledger.ErrBadLeaseGrant}}}, pubsub.ValidationReject},
		{"its entry dated past this node's clock",
			its, storage.IngestResult{Rejected: []storage.Rejection{{Account: id, Seq: 1, Err: ledger.ErrFutureTime}}}, pubsub.ValidationIgnore},
		{"one stored, another dated past this node's clock", []ledger.Entry{e, w}, storage.IngestResult{Accepted: []ledger.Entry{e},
			Rejected: []storage.Rejection{{Account: wid, Seq: 1, Err: ledger.ErrFutureTime}}}, pubsub.ValidationIgnore},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var raws [][]byte
			for _, e := range tc.batch {
				raws = append(raws, e.Encode())
			}
			if got := s.batchVerdict("peer", raws, tc.res); got != tc.want {
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
		{ledger.ErrFrozen, false},
		{ledger.ErrFutureTime, false},
		{ledger.ErrBadTimestamp, true}, // before its predecessor
		{ledger.ErrNoLease, true},
		{ledger.ErrRateLimited, true},
		{ledger.ErrBadSignature, true},
		{ledger.ErrBadGrant, true},
	} {
		if got := senderFault(fmt.Errorf("wrapped: %w", tc.err)); got != tc.want {
			t.Errorf("senderFault(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// A valid fraud proof that this node fails to store (its disk is full) is
// ignored, not rejected: the failure is this node's, and rejecting would
// cost the peer that forwarded a true proof its score. Once there is room
// the same proof is stored and forwarded.
func TestFraudProofStoreFailureIsNotTheSenders(t *testing.T) {
	var full bool
	db, err := storage.Open("", storage.Options{Network: "net", InMemory: true, Room: func() error {
		if full {
			return errors.New("test disk full")
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	l, err := storage.OpenLedger(db, "net", &ledger.Genesis{Network: "net"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rejected := prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})
	s := &Service{cfg: Config{Network: "net"}, log: slog.New(slog.DiscardHandler), ledger: l, rejected: rejected}

	priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := peer.IDFromPrivateKey(priv)
	var raws [2][]byte
	for i := range raws {
		e := ledger.Entry{Account: id, Seq: 1, Time: time.Unix(int64(i+1), 0), Body: ledger.GrantBody{Amount: 1}}
		if err := e.Sign("net", priv); err != nil {
			t.Fatal(err)
		}
		raws[i] = e.Encode()
	}
	proof := ledger.FraudProof{A: raws[0], B: raws[1]}
	forged := ledger.FraudProof{A: raws[0], B: append(bytes.Clone(raws[1][:len(raws[1])-1]), raws[1][len(raws[1])-1]^1)}
	msg := func(p ledger.FraudProof) *pubsub.Message {
		return &pubsub.Message{Message: &pubsubpb.Message{Data: append([]byte{protocol.LedgerGossipFraud}, p.Encode()...)}}
	}
	for _, tc := range []struct {
		name     string
		full     bool
		proof    ledger.FraudProof
		want     pubsub.ValidationResult
		rejected float64 // the counter after the step
	}{
		{"a true proof, the disk full", true, proof, pubsub.ValidationIgnore, 0},
		{"a forged proof, the disk full", true, forged, pubsub.ValidationReject, 1},
		{"the true proof again, room", false, proof, pubsub.ValidationAccept, 1},
		{"the true proof once more", false, proof, pubsub.ValidationIgnore, 1},
	} {
		full = tc.full
		if got := s.validateLedgerMessage("peer", msg(tc.proof)); got != tc.want {
			t.Fatalf("%s: verdict %v, want %v", tc.name, got, tc.want)
		}
		var m dto.Metric
		if err := rejected.Write(&m); err != nil {
			t.Fatal(err)
		}
		if got := m.GetCounter().GetValue(); got != tc.rejected {
			t.Fatalf("%s: %v refusals counted, want %v", tc.name, got, tc.rejected)
		}
	}
	if frozen, err := l.Frozen(id); err != nil || !frozen {
		t.Fatalf("account frozen: %v, %v", frozen, err)
	}
}
