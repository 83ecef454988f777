package ledger

import (
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	voied "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
)

// GrantSize is the size of a lease grant: one Ed25519 signature.
const GrantSize = ed25519.SignatureSize

// grantDomain separates lease grants from every other signature: an entry's
// is over signingDomain, a market message's over a libp2p envelope's
// varint-prefixed domain, neither of which begins with these bytes.
const grantDomain = "mira-lease-grant/1"

// ErrBadLeaseGrant marks a lease whose grant is missing or is not its
// requester's signature of an award of this job to this provider at this
// price and attempt. It is final: nothing that arrives later makes the
// grant valid.
var ErrBadLeaseGrant = errors.New("lease without a valid grant from its requester")

// LeaseGrant is an award as the requester signs it, and a provider's
// lease quotes (LeaseBody.Grant): the requester grants Provider a lease
// of Job at Price, on award number Attempt. (Not to be confused with a
// genesis grant of credits, GrantBody.)
//
// The signature is what makes a lease, and the receipt it backs, tied to
// funded work: a hold naming no provider (the one a job's posting
// writes) backs an award to whoever wins it, and without the grant any
// key could claim to be that winner.
type LeaseGrant struct {
	Job       Hash
	Requester peer.ID
	Provider  peer.ID
	Price     uint64
	Attempt   uint32
}

// signingBytes is what the requester signs: the domain, the network (u16
// length prefixed), the job, the provider (u16 length prefixed), the price
// and the attempt. Each field has a fixed size or a length prefix, so no
// two grants share their bytes.
func (g LeaseGrant) signingBytes(network string) []byte {
	out := make([]byte, 0, len(grantDomain)+1+2+len(network)+len(g.Job)+2+len(g.Provider)+8+4)
	out = append(out, grantDomain...)
	out = append(out, 0)
	out = appendField(out, []byte(network))
	out = append(out, g.Job[:]...)
	out = appendField(out, []byte(g.Provider))
	out = binary.BigEndian.AppendUint64(out, g.Price)
	return binary.BigEndian.AppendUint32(out, g.Attempt)
}

// Sign returns the grant signed with priv, the requester's Ed25519 key,
// for network.
func (g LeaseGrant) Sign(network string, priv crypto.PrivKey) ([]byte, error) {
	return signAsRequester("grant", g.Requester, g.Provider, g.signingBytes(network), priv)
}

// signAsRequester signs msg, what (a grant, an acceptance) requester
// gives provider, with priv, which must be requester's key.
func signAsRequester(what string, requester, provider peer.ID, msg []byte, priv crypto.PrivKey) ([]byte, error) {
	id, err := AccountOf(priv)
	if err != nil {
		return nil, err
	}
	if id != requester {
		return nil, fmt.Errorf("sign a %s of %s with the key of %s", what, requester, id)
	}
	if !isEd25519Peer([]byte(provider)) {
		return nil, fmt.Errorf("%w: provider %q", ErrBadAccount, provider)
	}
	sig, err := priv.Sign(msg)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", what, err)
	}
	return sig, nil
}

// Verify checks that sig is the requester's grant of g for network, under
// the ledger's signature rule (sigRule): a provider checks the grant of an
// award with it, as every node checks the lease that quotes it. The
// requester's key is the one its peer ID embeds; an ID that embeds no
// Ed25519 key cannot grant. Errors wrap ErrBadLeaseGrant.
func (g LeaseGrant) Verify(network string, sig []byte) error {
	pub, err := g.check(sig)
	if err != nil {
		return err
	}
	if !voied.VerifyWithOptions(pub, g.signingBytes(network), sig, sigRule) {
		return g.forged()
	}
	return nil
}

// check returns the requester's key once the grant's shape is right: a
// signature of GrantSize bytes, Ed25519 peer IDs.
func (g LeaseGrant) check(sig []byte) (voied.PublicKey, error) {
	switch {
	case len(sig) == 0:
		return nil, g.bad("none")
	case len(sig) != GrantSize:
		return nil, g.bad(fmt.Sprintf("%d bytes", len(sig)))
	case !isEd25519Peer([]byte(g.Provider)):
		return nil, g.bad("the provider is not an Ed25519 peer ID")
	}
	pub, err := accountKey(g.Requester)
	if err != nil {
		return nil, g.bad("the requester is not an Ed25519 peer ID")
	}
	return voied.PublicKey(pub), nil
}

func (g LeaseGrant) forged() error { return g.bad("not the requester's signature") }

func (g LeaseGrant) bad(why string) error {
	return fmt.Errorf("%w: job %s of %s to %s: %s", ErrBadLeaseGrant, g.Job, g.Requester, g.Provider, why)
}
