package storage

import (
	"crypto/ed25519"
	"crypto/sha256"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol/ledger"
)

const testNet = "test"

// testKey returns a deterministic Ed25519 key for name.
func testKey(t testing.TB, name string) (crypto.PrivKey, peer.ID) {
	t.Helper()
	seed := sha256.Sum256([]byte("mira test key " + name))
	priv, err := crypto.UnmarshalEd25519PrivateKey(ed25519.NewKeyFromSeed(seed[:]))
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return priv, id
}

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// openTestLedger opens a ledger over an in-memory database.
func openTestLedger(t testing.TB, g *ledger.Genesis, clock func() time.Time, opts ...LedgerOption) *Ledger {
	t.Helper()
	db, err := Open("", Options{Network: g.Network, InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	l, err := OpenLedger(db, g.Network, g, clock, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// chain writes an account's entries outside any ledger, for ingesting.
type chain struct {
	net  string
	priv crypto.PrivKey
	id   peer.ID
	seq  uint64
	prev ledger.Hash
	at   time.Time
	// v2 has the chain write entries of version 2, judged by version 2's
	// rules (payments by the requester, holds without expiry).
	v2 bool
}

// newChain returns a chain that writes entries of version 2: the tests
// written before version 3 check that its rules still hold for them.
func newChain(t testing.TB, name string, at time.Time) *chain {
	priv, id := testKey(t, name)
	return &chain{net: testNet, priv: priv, id: id, at: at, v2: true}
}

// newChainV3 returns a chain that writes entries of the current version.
func newChainV3(t testing.TB, name string, at time.Time) *chain {
	c := newChain(t, name, at)
	c.v2 = false
	return c
}

// entry signs the chain's next entry without advancing the chain.
func (c *chain) entry(t testing.TB, body ledger.Body) ledger.Entry {
	t.Helper()
	e := ledger.Entry{Account: c.id, Seq: c.seq + 1, Prev: c.prev, Time: c.at, Body: body}
	if c.v2 {
		e = e.AsVersion2()
	}
	if err := e.Sign(c.net, c.priv); err != nil {
		t.Fatal(err)
	}
	return e
}

// next signs the chain's next entry and advances the chain.
func (c *chain) next(t testing.TB, body ledger.Body) []byte {
	t.Helper()
	return c.advance(c.entry(t, body))
}

// nextV1 signs the chain's next entry in the encoding of version 1 (as
// ledgers stored before leases carried grants) and advances the chain.
func (c *chain) nextV1(t testing.TB, body ledger.Body) []byte {
	t.Helper()
	e := ledger.Entry{Account: c.id, Seq: c.seq + 1, Prev: c.prev, Time: c.at, Body: body}.AsVersion1()
	if err := e.Sign(c.net, c.priv); err != nil {
		t.Fatal(err)
	}
	return c.advance(e)
}

func (c *chain) advance(e ledger.Entry) []byte {
	raw := e.Encode()
	c.seq, c.prev = e.Seq, sha256.Sum256(raw)
	c.at = c.at.Add(time.Millisecond)
	return raw
}

func job(name string) ledger.Hash { return sha256.Sum256([]byte("job " + name)) }

// cycleGrant is what cycleBody's accounts need granted.
const cycleGrant = 1000

// cycleBody is a valid body for entry seq of an account granted
// cycleGrant: its grant, then holds of one micro-credit for jobs of its
// own, each released by the entry after it.
func cycleBody(id peer.ID, seq int) ledger.Body {
	switch {
	case seq == 1:
		return ledger.GrantBody{Amount: cycleGrant}
	case seq%2 == 0:
		return ledger.HoldBody{Job: job(fmt.Sprint(id, "/", seq)), Amount: 1}
	}
	return ledger.ReleaseBody{Job: job(fmt.Sprint(id, "/", seq-1))}
}

// leaseFor is a lease of job j by provider that c, the requester, granted
// at price on the job's first award.
func (c *chain) leaseFor(t testing.TB, provider peer.ID, j ledger.Hash, price uint64) ledger.LeaseBody {
	t.Helper()
	return grantedLease(t, c.net, c.priv, provider, j, price)
}

// grantedLease is a lease of job j by provider that the owner of priv, the
// requester, granted on network at price on the job's first award.
func grantedLease(t testing.TB, network string, priv crypto.PrivKey, provider peer.ID, j ledger.Hash, price uint64) ledger.LeaseBody {
	t.Helper()
	requester, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	g := ledger.LeaseGrant{Job: j, Requester: requester, Provider: provider, Price: price, Attempt: 1}
	sig, err := g.Sign(network, priv)
	if err != nil {
		t.Fatal(err)
	}
	return ledger.LeaseBody{Job: j, Requester: requester, Price: price, Attempt: 1, Grant: sig}
}

// acceptedClaim is claim c by provider with its requester's acceptance,
// signed with priv, the requester's key.
func acceptedClaim(t testing.TB, priv crypto.PrivKey, provider peer.ID, c ledger.ClaimBody) ledger.ClaimBody {
	t.Helper()
	requester, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	c.Requester = requester
	a := ledger.Acceptance{Job: c.Job, Requester: requester, Provider: provider, HoldSeq: c.HoldSeq, Amount: c.Amount, Final: c.Final, Receipt: c.Receipt}
	if c.Acceptance, err = a.Sign(testNet, priv); err != nil {
		t.Fatal(err)
	}
	return c
}
