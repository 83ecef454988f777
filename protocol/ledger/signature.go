package ledger

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"
	voied "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"

	"github.com/mira-market/mira/protocol/parallel"
)

// sigRule is the rule of every check of a ledger entry's signature, alone
// (VerifySignature) or in a batch (VerifyBatch): ZIP-215, that is the
// cofactored equation [8][S]B = [8]R + [8][k]A, S below the group order,
// encodings of A and R that are not canonical accepted. Under ZIP-215
// single and batch verification agree on every input, so two nodes that
// check the same entry in different ways (alone, or in a batch of any
// size) can never disagree on it; CometBFT checks its validators'
// signatures the same way. Every signature valid under RFC 8032 as Go's
// crypto/ed25519 checks it (cofactorless, canonical R) is valid under
// ZIP-215; the converse fails only for signatures built from points
// outside the prime-order subgroup or non-canonical encodings, which no
// honest signer produces. Signing is unchanged (libp2p's Ed25519).
var sigRule = &voied.Options{Verify: voied.VerifyOptionsZIP_215}

// VerifySignature checks the signatures an entry carries, for network: the
// account's over the entry and, in a lease, the requester's grant, in a
// claim the requester's acceptance (a lease or claim without a valid one
// is not an entry anyone may write, whatever the state of the ledger).
// The error wraps ErrBadSignature (or ErrBadAccount) for the first,
// ErrBadLeaseGrant or ErrBadAcceptance for the second.
func (e Entry) VerifySignature(network string) error {
	if err := e.verifyAccountSignature(network); err != nil {
		return err
	}
	return e.VerifyGrant(network)
}

// verifyAccountSignature checks the account's signature alone: all that a
// fraud proof needs, since two entries of one seq that the account signed
// prove it equivocated, whatever else they carry.
func (e *Entry) verifyAccountSignature(network string) error {
	pub, err := accountKey(e.Account)
	if err != nil {
		return err
	}
	if len(e.Signature) != ed25519.SignatureSize || !voied.VerifyWithOptions(voied.PublicKey(pub), e.SigningBytes(network), e.Signature, sigRule) {
		return e.badSignature()
	}
	return nil
}

// VerifyGrant checks the requester's signature an entry quotes: a lease's
// grant, a claim's acceptance (of any other kind, nothing).
func (e *Entry) VerifyGrant(network string) error {
	cs, ok := e.coSignature(network)
	if !ok {
		return nil
	}
	pub, err := cs.check()
	if err == nil && !voied.VerifyWithOptions(pub, cs.msg, cs.sig, sigRule) {
		err = cs.forged()
	}
	if err != nil {
		return e.badGrant(err)
	}
	return nil
}

// coSig is a signature by another account than the entry's that the
// entry quotes, with how to check it.
type coSig struct {
	msg, sig []byte
	check    func() (voied.PublicKey, error)
	forged   func() error
}

// coSignature returns the requester's signature that e quotes, if e is a
// lease (its grant) or a claim (its acceptance).
func (e *Entry) coSignature(network string) (coSig, bool) {
	switch b := e.Body.(type) {
	case LeaseBody:
		g := b.grantOf(e.Account)
		return coSig{msg: g.signingBytes(network), sig: b.Grant,
			check: func() (voied.PublicKey, error) { return g.check(b.Grant) }, forged: g.forged}, true
	case ClaimBody:
		a := b.acceptanceOf(e.Account)
		return coSig{msg: a.signingBytes(network), sig: b.Acceptance,
			check: func() (voied.PublicKey, error) { return a.check(b.Acceptance) }, forged: a.forged}, true
	}
	return coSig{}, false
}

func (e *Entry) badSignature() error {
	return fmt.Errorf("%w: %s seq %d", ErrBadSignature, e.Account, e.Seq)
}

func (e *Entry) badGrant(err error) error {
	return fmt.Errorf("seq %d: %w", e.Seq, err)
}

// VerifyBatch checks the signatures of the cands in cs without an error
// yet, for network, as one batch (one or two alone), and sets the error of
// each that fails to what VerifySignature returns for it: the verdicts are
// VerifySignature's. A lease's grant goes into the same batch as the
// entries' signatures. A batch of 64 where all are valid costs about 60 %
// of checking each alone; one with a bad signature costs the failed batch
// check more than that (each is then checked alone, to find which).
func VerifyBatch(network string, cs []*Candidate) {
	n := 0
	for _, c := range cs {
		if c.Err == nil {
			n++
			if k := c.Entry.Kind(); k == KindLease || k == KindClaim {
				n++
			}
		}
	}
	if n <= 2 {
		// One or two signatures check faster alone than as a batch.
		for _, c := range cs {
			if c.Err == nil {
				c.Err = c.Entry.VerifySignature(network)
			}
		}
		return
	}
	bv := voied.NewBatchVerifierWithCapacity(n)
	// in is what the batch checks of each Candidate: its signature at index
	// sig, and the requester's signature it quotes (coSignature) at index
	// grant (-1: none, or grantErr already refuses it).
	type item struct {
		c          *Candidate
		sig, grant int
		grantErr   error
		forged     func() error
	}
	in := make([]item, 0, n)
	added := 0
	// The batch uses each account's public key in expanded form (tables
	// that speed up the multiplication). Entries come sorted by account,
	// so consecutive ones share a key: it is expanded once for them.
	var (
		lastAcct peer.ID
		lastKey  *voied.ExpandedPublicKey
	)
	for _, c := range cs {
		if c.Err != nil {
			continue
		}
		pub, err := accountKey(c.Entry.Account)
		if err != nil {
			c.Err = err
			continue
		}
		if len(c.Entry.Signature) != ed25519.SignatureSize {
			c.Err = c.Entry.badSignature()
			continue
		}
		if lastKey == nil || c.Entry.Account != lastAcct {
			lastAcct, lastKey = c.Entry.Account, nil
			if x, err := voied.NewExpandedPublicKey(voied.PublicKey(pub)); err == nil {
				lastKey = x
			}
		}
		if lastKey != nil {
			bv.AddExpandedWithOptions(lastKey, c.Entry.SigningBytes(network), c.Entry.Signature, sigRule)
		} else {
			// Not a point: the batch marks it invalid, as
			// VerifySignature finds it.
			bv.AddWithOptions(voied.PublicKey(pub), c.Entry.SigningBytes(network), c.Entry.Signature, sigRule)
		}
		it := item{c: c, sig: added, grant: -1}
		added++
		if cs, ok := c.Entry.coSignature(network); ok {
			if rpub, err := cs.check(); err != nil {
				it.grantErr = err
			} else {
				bv.AddWithOptions(rpub, cs.msg, cs.sig, sigRule)
				it.grant, it.forged = added, cs.forged
				added++
			}
		}
		in = append(in, it)
	}
	if len(in) == 0 {
		return
	}
	// The random scalars only have to be unpredictable to whoever signed
	// the entries.
	_, valid := bv.Verify(rand.Reader)
	for _, it := range in {
		switch {
		case !valid[it.sig]:
			it.c.Err = it.c.Entry.badSignature()
		case it.grantErr != nil:
			it.c.Err = it.c.Entry.badGrant(it.grantErr)
		case it.grant >= 0 && !valid[it.grant]:
			it.c.Err = it.c.Entry.badGrant(it.forged())
		}
	}
}

// SignatureBatch is how many signatures VerifyAll (and storage's
// IngestMany) check as one batch, on one worker. Larger batches cost less
// per signature but make IngestMany wait longer for its first checked
// entries; curve25519-voi uses its faster expanded public keys only in
// batches below 94. In `mira bench ledger` on 2 cores, 64 ingested as
// fast as 16 or faster, and faster than 32 and 90.
const SignatureBatch = 64

// VerifyAll checks the signatures of cs as VerifyBatch does, in batches of
// SignatureBatch, on up to workers goroutines.
func VerifyAll(network string, workers int, cs []*Candidate) {
	parallel.For(workers, (len(cs)+SignatureBatch-1)/SignatureBatch, func(k int) {
		VerifyBatch(network, cs[k*SignatureBatch:min((k+1)*SignatureBatch, len(cs))])
	})
}
