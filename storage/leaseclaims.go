package storage

import (
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol/ledger"
)

// A provider runs a job only if the ledger will take its lease record:
// the lease rule (protocol/ledger) admits a provider's leases of a job
// only as often as the requester's holds back them. A lease is written after the run starts
// (the ledger writer batches it), so the provider claims it first: a
// claim counts as a lease from the moment the provider decides to run
// until its lease entry is written, and a second award that the holds do
// not back is refused even while the first lease waits to be written.

// leaseSlot names a provider's leases of one job.
type leaseSlot struct {
	provider peer.ID
	job      ledger.Hash
}

// LeaseFunding returns how many leases of job by provider the requester's
// holds back, as the lease rule counts them for the leases this build
// writes (version 3): the holds it has written for the job naming
// provider, open or closed since.
func (l *Ledger) LeaseFunding(requester peer.ID, job ledger.Hash, provider peer.ID) (uint64, error) {
	return getCount(l.get(fundKey(requester, job, ledger.V3Holds(provider))))
}

// ClaimLease reserves, for provider's lease of job about to be written,
// one of the leases that requester's holds back. It fails with ErrUnfunded
// when the leases provider has stored and claimed use them all up: the
// ledger would refuse the lease. Each claim is given back with
// UnclaimLease once its lease entry is written (or refused).
func (l *Ledger) ClaimLease(provider, requester peer.ID, job ledger.Hash) error {
	l.claimMu.Lock()
	defer l.claimMu.Unlock()
	backed, err := l.LeaseFunding(requester, job, provider)
	if err != nil {
		return err
	}
	leases, _, err := l.Leases(provider, job)
	if err != nil {
		return err
	}
	slot := leaseSlot{provider, job}
	claimed := l.claims[slot]
	if leases+claimed >= backed {
		return fmt.Errorf("%w: the holds of %s back %d leases of job %s by %s, which has %d written and %d about to be",
			ledger.ErrUnfunded, requester, backed, job, provider, leases, claimed)
	}
	if l.claims == nil {
		l.claims = map[leaseSlot]uint64{}
	}
	l.claims[slot] = claimed + 1
	return nil
}

// UnclaimLease gives back a claim of ClaimLease.
func (l *Ledger) UnclaimLease(provider peer.ID, job ledger.Hash) {
	l.claimMu.Lock()
	defer l.claimMu.Unlock()
	slot := leaseSlot{provider, job}
	switch n := l.claims[slot]; n {
	case 0:
	case 1:
		delete(l.claims, slot)
	default:
		l.claims[slot] = n - 1
	}
}
