package marketd

import (
	"crypto/rand"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/ledger"
)

// A decline's waive goes to the ledger's ingest only if it is a waive of
// the declined job by the decline's signer: a provider cannot use its
// decline to push any other entry (another job's waive, another
// account's entry, a claim) past the requester's checks of a decline.
func TestDeclineWaiveMustBeTheSignersWaiveOfTheJob(t *testing.T) {
	key := func() (crypto.PrivKey, peer.ID) {
		k, _, err := crypto.GenerateEd25519Key(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		id, _ := peer.IDFromPrivateKey(k)
		return k, id
	}
	provKey, prov := key()
	otherKey, _ := key()
	_, req := key()
	job, other := protocol.JobID{1}, protocol.JobID{2}
	entry := func(k crypto.PrivKey, b ledger.Body) []byte {
		e := ledger.Entry{Seq: 1, Time: time.Unix(1, 0), Body: b}
		if err := e.Sign("test", k); err != nil {
			t.Fatal(err)
		}
		return e.Encode()
	}
	waive := func(j protocol.JobID) ledger.WaiveBody {
		return ledger.WaiveBody{Job: ledger.Hash(j), Requester: req, HoldSeq: 3}
	}
	for _, tc := range []struct {
		name string
		raw  []byte
		ok   bool
	}{
		{"the signer's waive of the job", entry(provKey, waive(job)), true},
		{"a waive of another job", entry(provKey, waive(other)), false},
		{"another account's waive of the job", entry(otherKey, waive(job)), false},
		{"a claim, not a waive", entry(provKey, ledger.ClaimBody{Job: ledger.Hash(job), Requester: req, HoldSeq: 3, Amount: 5,
			Acceptance: make([]byte, ledger.AcceptanceSize)}), false},
		{"not an entry", []byte("waive"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := declineWaive(&protocol.Signed{Signer: prov, Job: job}, tc.raw)
			if (err == nil) != tc.ok {
				t.Fatalf("declineWaive: %v, want ok %v", err, tc.ok)
			}
		})
	}
}
