package storage

import (
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol/ledger"
)

// IngestFraudProof verifies a proof received from a peer and, if it
// convicts an account not yet frozen, stores it and freezes the account:
// its past entries stay, later ones are refused with ErrFrozen. A proof
// against an account already frozen returns an error wrapping
// ErrDuplicate (no need to gossip it again).
func (l *Ledger) IngestFraudProof(p ledger.FraudProof) error {
	id, err := p.Verify(l.network)
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.newRun()
	defer func() { r.t.txn.Discard() }()
	a, err := r.t.Account(id)
	if err != nil {
		return err
	}
	if a.Frozen {
		return fmt.Errorf("%w: %s is already frozen", ledger.ErrDuplicate, id)
	}
	if err := r.t.set(fraudKey(id), ledger.NewFraudProof(p.A, p.B).Encode()); err != nil {
		return err
	}
	a.Frozen = true
	l.pending.DropAccount(id)
	return r.finish()
}

// FraudProofFor returns the stored proof against account, if any.
func (l *Ledger) FraudProofFor(account peer.ID) (ledger.FraudProof, bool, error) {
	v, err := l.get(fraudKey(account))
	if err != nil || v == nil {
		return ledger.FraudProof{}, false, err
	}
	p, err := ledger.DecodeFraudProof(v)
	if err != nil {
		return ledger.FraudProof{}, false, fmt.Errorf("stored fraud proof of %s: %w", account, err)
	}
	return p, true, nil
}
