package ledger

import (
	"crypto/ed25519"
	"crypto/sha256"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
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

// chain writes an account's entries.
type chain struct {
	net  string
	priv crypto.PrivKey
	id   peer.ID
	seq  uint64
	prev Hash
	at   time.Time
	// v2 has the chain write entries of version 2 (and so be judged by
	// version 2's rules), as ledgers stored before version 3 hold.
	v2 bool
}

func newChain(t testing.TB, name string, at time.Time) *chain {
	priv, id := testKey(t, name)
	return &chain{net: testNet, priv: priv, id: id, at: at}
}

// entry signs the chain's next entry without advancing the chain.
func (c *chain) entry(t testing.TB, body Body) Entry {
	t.Helper()
	e := Entry{Account: c.id, Seq: c.seq + 1, Prev: c.prev, Time: c.at, Body: body}
	if c.v2 {
		e = e.AsVersion2()
	}
	if err := e.Sign(c.net, c.priv); err != nil {
		t.Fatal(err)
	}
	return e
}

// next signs the chain's next entry and advances the chain.
func (c *chain) next(t testing.TB, body Body) []byte {
	t.Helper()
	e := c.entry(t, body)
	raw := e.Encode()
	c.seq, c.prev = e.Seq, sha256.Sum256(raw)
	c.at = c.at.Add(time.Millisecond)
	return raw
}

func job(name string) Hash { return sha256.Sum256([]byte("job " + name)) }

// leaseFor is a lease of job j by provider that c, the requester, granted
// at price on the job's first award.
func (c *chain) leaseFor(t testing.TB, provider peer.ID, j Hash, price uint64) LeaseBody {
	t.Helper()
	return grantedLease(t, c.net, c.priv, provider, j, price)
}

// grantedLease is a lease of job j by provider that the owner of priv, the
// requester, granted on network at price on the job's first award.
func grantedLease(t testing.TB, network string, priv crypto.PrivKey, provider peer.ID, j Hash, price uint64) LeaseBody {
	t.Helper()
	requester, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	g := LeaseGrant{Job: j, Requester: requester, Provider: provider, Price: price, Attempt: 1}
	sig, err := g.Sign(network, priv)
	if err != nil {
		t.Fatal(err)
	}
	return LeaseBody{Job: j, Requester: requester, Price: price, Attempt: 1, Grant: sig}
}

// acceptedClaim is claim c by provider with its requester's acceptance,
// signed with priv, the requester's key, on network.
func acceptedClaim(t testing.TB, network string, priv crypto.PrivKey, provider peer.ID, c ClaimBody) ClaimBody {
	t.Helper()
	requester, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	c.Requester = requester
	sig, err := c.acceptanceOf(provider).Sign(network, priv)
	if err != nil {
		t.Fatal(err)
	}
	c.Acceptance = sig
	return c
}
