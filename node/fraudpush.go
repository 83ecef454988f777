package node

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/storage"
)

// A fraud proof spreads by gossip once. A node that missed it (it was
// away, or partitioned) learns of the fraud only when a peer that has the
// proof sees it offer the frozen account's entries: in a reconciliation or
// a chain fetch, or by gossip. That peer then sends it the proof directly.

const (
	// proofResendAfter is how long a peer is not sent the same proof again.
	proofResendAfter = time.Minute
	// maxProofsSent bounds the record of proofs sent.
	maxProofsSent = 4096
)

// accountPeer names a frozen account and a peer told of it.
type accountPeer struct {
	account, peer peer.ID
}

// sendFraudProofs sends p the proof against each frozen account among the
// entries p offered and this node refused, once a minute at most per
// account, in the background.
func (n *Node) sendFraudProofs(p peer.ID, rejected []storage.Rejection) {
	now := time.Now()
	for _, r := range rejected {
		if !errors.Is(r.Err, storage.ErrFrozen) || p == "" || p == n.host.ID() || n.runCtx.Err() != nil {
			continue
		}
		key := accountPeer{r.Account, p}
		n.proofsMu.Lock()
		due := now.Sub(n.proofsSent[key]) >= proofResendAfter
		if due {
			if len(n.proofsSent) >= maxProofsSent {
				clear(n.proofsSent) // bounded; at worst a proof goes twice
			}
			n.proofsSent[key] = now
		}
		n.proofsMu.Unlock()
		if !due {
			continue
		}
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			if err := n.sendFraudProof(n.runCtx, p, r.Account); err != nil {
				n.log.Debug("send fraud proof", "peer", p, "account", r.Account, "err", err)
			}
		}()
	}
}

// sendFraudProof sends p this node's proof against account.
func (n *Node) sendFraudProof(ctx context.Context, p, account peer.ID) error {
	var (
		proof storage.FraudProof
		ok    bool
		err   error
	)
	if !n.withDB(func() { proof, ok, err = n.ledger.FraudProofFor(account) }) {
		return errDBClosed
	}
	if err != nil || !ok {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	st, _, bw, err := n.openSync(ctx, p, syncFraud)
	if err != nil {
		return err
	}
	defer n.closeSync(st)
	if err := writeFrame(bw, proof.Encode()); err != nil {
		return err
	}
	return bw.Flush()
}

// serveFraudProof takes a proof sent by sendFraudProof: a new one freezes
// its account and is gossiped on; one already known is dropped.
func (n *Node) serveFraudProof(br *bufio.Reader) error {
	frame, err := readFrame(br)
	if err != nil {
		return err
	}
	proof, err := storage.DecodeFraudProof(frame)
	if err == nil {
		err = n.ledger.IngestFraudProof(proof)
	}
	switch {
	case err == nil:
		account, _ := proof.Verify(n.cfg.Network)
		n.log.Warn("equivocation: account frozen", "account", account)
		n.publishLedger(ledgerMsgFraud, frame)
		return nil
	case errors.Is(err, storage.ErrDuplicate):
		return nil
	default:
		n.ledgerRejected.Inc()
		return fmt.Errorf("fraud proof: %w", err)
	}
}
