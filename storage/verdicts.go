package storage

import (
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol/ledger"
)

// Reads for verdicts among a job's replicas (the market's majority claims
// and releases): who votes on a job, and what each voted.

// Voters returns the replicas and voters of requester's job (zero if no
// hold of version 3 named a provider yet).
func (l *Ledger) Voters(requester peer.ID, job ledger.Hash) (ledger.Voters, error) {
	v, err := l.get(votersKey(requester, job))
	if err != nil || v == nil {
		return ledger.Voters{}, err
	}
	vs, err := ledger.DecodeVoters(v)
	if err != nil {
		return vs, fmt.Errorf("voters of %s: %w", requester, err)
	}
	return vs, nil
}

// Vote returns provider's vote on job (its first receipt of version 3;
// Seq 0: none here yet).
func (l *Ledger) Vote(provider peer.ID, job ledger.Hash) (ledger.Vote, error) {
	v, err := l.get(leaseKey(provider, job))
	if err != nil || v == nil {
		return ledger.Vote{}, err
	}
	r, err := ledger.DecodeLeaseRecord(v)
	if err != nil {
		return ledger.Vote{}, fmt.Errorf("leases of %s: %w", provider, err)
	}
	return r.Vote, nil
}
