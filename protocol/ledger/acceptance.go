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

// AcceptanceSize is the size of an acceptance: one Ed25519 signature.
const AcceptanceSize = ed25519.SignatureSize

// acceptanceDomain separates acceptances from every other signature (an
// entry's, a lease grant's, a market message's).
const acceptanceDomain = "mira-acceptance/1"

// ErrBadAcceptance marks a claim whose acceptance is missing or is not its
// requester's signature of this claim: its job, provider, hold, amount,
// finality and receipt. It is final: nothing that arrives later makes the
// acceptance valid.
var ErrBadAcceptance = errors.New("claim without a valid acceptance from its requester")

// Acceptance is a bill as the requester accepts it, and the provider's
// claim quotes (ClaimBody.Acceptance): the requester accepts that Provider
// has claimed Amount in all out of its hold entry HoldSeq for Job, for the
// run whose receipt hash is Receipt, and (Final) that the claim closes the
// hold. Signed, it is what lets the provider be paid without the
// requester: every node checks the claim against it and the hold.
type Acceptance struct {
	Job       Hash
	Requester peer.ID
	Provider  peer.ID
	HoldSeq   uint64
	Amount    uint64 // cumulative
	Final     bool
	Receipt   Hash
}

// signingBytes is what the requester signs: the domain, the network (u16
// length prefixed), then every field, each of fixed size or length
// prefixed, so no two acceptances share their bytes.
func (a Acceptance) signingBytes(network string) []byte {
	out := make([]byte, 0, len(acceptanceDomain)+1+2+len(network)+32+2+len(a.Requester)+2+len(a.Provider)+8+8+1+32)
	out = append(out, acceptanceDomain...)
	out = append(out, 0)
	out = appendField(out, []byte(network))
	out = append(out, a.Job[:]...)
	out = appendField(out, []byte(a.Requester))
	out = appendField(out, []byte(a.Provider))
	out = binary.BigEndian.AppendUint64(out, a.HoldSeq)
	out = binary.BigEndian.AppendUint64(out, a.Amount)
	out = append(out, boolByte(a.Final))
	return append(out, a.Receipt[:]...)
}

// Sign returns the acceptance signed with priv, the requester's Ed25519
// key, for network.
func (a Acceptance) Sign(network string, priv crypto.PrivKey) ([]byte, error) {
	return signAsRequester("acceptance", a.Requester, a.Provider, a.signingBytes(network), priv)
}

// Verify checks that sig is the requester's acceptance a for network,
// under the ledger's signature rule (sigRule), as every node checks the
// claim that quotes it. Errors wrap ErrBadAcceptance.
func (a Acceptance) Verify(network string, sig []byte) error {
	pub, err := a.check(sig)
	if err != nil {
		return err
	}
	if !voied.VerifyWithOptions(pub, a.signingBytes(network), sig, sigRule) {
		return a.forged()
	}
	return nil
}

// check returns the requester's key once the acceptance's shape is right.
func (a Acceptance) check(sig []byte) (voied.PublicKey, error) {
	switch {
	case len(sig) != AcceptanceSize:
		return nil, a.bad(fmt.Sprintf("%d bytes", len(sig)))
	case !isEd25519Peer([]byte(a.Provider)):
		return nil, a.bad("the provider is not an Ed25519 peer ID")
	}
	pub, err := accountKey(a.Requester)
	if err != nil {
		return nil, a.bad("the requester is not an Ed25519 peer ID")
	}
	return voied.PublicKey(pub), nil
}

func (a Acceptance) forged() error { return a.bad("not the requester's signature") }

func (a Acceptance) bad(why string) error {
	return fmt.Errorf("%w: job %s of %s to %s: %s", ErrBadAcceptance, a.Job, a.Requester, a.Provider, why)
}
