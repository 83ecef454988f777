package ledgerd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/storage"
)

// A fraud proof spreads by gossip once. A node that missed it (it was
// away, or partitioned) learns of the fraud only when a peer that has the
// proof sees it offer the frozen account's entries: in a reconciliation or
// a chain fetch, or by gossip. That peer then sends it the proof directly,
// once: the peer answers for each proof when it holds it.

const (
	// proofRetryAfter is how long a proof that did not arrive waits before
	// it is sent to the same peer again.
	proofRetryAfter = time.Minute
	// maxProofsTracked bounds the record of proofs sent; past it the record
	// starts afresh (at worst a proof goes twice).
	maxProofsTracked = 4096
	// maxProofsPerPush bounds the proofs sent, and taken, on one stream.
	maxProofsPerPush = 64
	// maxPushesInFlight bounds the streams that carry proofs at once; a push
	// beyond it waits for the next time the peer offers the entries.
	maxPushesInFlight = 4
)

// accountPeer names a frozen account and a peer to tell of it.
type accountPeer struct {
	account, peer peer.ID
}

// proofPush is what this node knows of a proof's way to a peer.
type proofPush struct {
	tried     time.Time // the last attempt
	delivered bool      // the peer holds the proof: it is not sent again
}

// sendFraudProofs sends p, in the background and on one stream, the proof
// against each frozen account among the entries p offered and this node
// refused: one that p does not hold yet, or that did not arrive a minute
// ago. It never waits for the push.
func (s *Service) sendFraudProofs(p peer.ID, rejected []storage.Rejection) {
	if p == "" || p == s.self {
		return
	}
	var frozen []peer.ID
	for _, r := range rejected {
		if errors.Is(r.Err, ledger.ErrFrozen) && !slices.Contains(frozen, r.Account) {
			frozen = append(frozen, r.Account)
		}
	}
	if len(frozen) == 0 {
		return
	}
	s.post(func() { s.startPush(p, frozen) })
}

// startPush starts a push to p of the proofs against those of frozen that
// are due (on run's goroutine, which owns the record of proofs sent).
func (s *Service) startPush(p peer.ID, frozen []peer.ID) {
	now := s.clock.Now()
	var due []peer.ID
	for _, a := range frozen {
		sent := s.st.proofsSent[accountPeer{a, p}]
		if sent.delivered || now.Sub(sent.tried) < proofRetryAfter || len(due) == maxProofsPerPush {
			continue
		}
		due = append(due, a)
	}
	if len(due) == 0 || s.st.proofPushes >= maxPushesInFlight || s.ctx.Err() != nil {
		return
	}
	if len(s.st.proofsSent)+len(due) > maxProofsTracked {
		clear(s.st.proofsSent)
	}
	for _, a := range due {
		s.st.proofsSent[accountPeer{a, p}] = proofPush{tried: now}
	}
	s.st.proofPushes++
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		delivered, err := s.pushFraudProofs(s.ctx, p, due)
		if err != nil {
			s.log.Debug("send fraud proofs", "peer", p, "err", err)
		}
		s.post(func() {
			s.st.proofPushes--
			for _, a := range delivered {
				s.st.proofsSent[accountPeer{a, p}] = proofPush{tried: now, delivered: true}
			}
		})
	}()
}

// pushFraudProofs sends p this node's proofs against accounts and returns
// the accounts whose proof p acknowledged.
func (s *Service) pushFraudProofs(ctx context.Context, p peer.ID, accounts []peer.ID) ([]peer.ID, error) {
	var proofs [][]byte
	var sent []peer.ID
	for _, a := range accounts {
		var (
			proof ledger.FraudProof
			ok    bool
			err   error
		)
		if !s.withDB(func() { proof, ok, err = s.ledger.FraudProofFor(a) }) {
			return nil, errDBClosed
		}
		if err != nil {
			return nil, err
		}
		if ok {
			proofs, sent = append(proofs, proof.Encode()), append(sent, a)
		}
	}
	if len(proofs) == 0 {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	st, br, bw, err := s.openSync(ctx, p, protocol.SyncFraud)
	if err != nil {
		return nil, err
	}
	defer s.closeSync(st)
	for _, b := range append(proofs, nil) { // an empty frame ends the list
		if err := protocol.WriteFrame(bw, b); err != nil {
			return nil, err
		}
	}
	if err := bw.Flush(); err != nil {
		return nil, err
	}
	// The peer answers each proof, in order, once it holds it.
	for i := range sent {
		if _, err := br.ReadByte(); err != nil {
			return sent[:i], fmt.Errorf("fraud proof %d of %d: %w", i+1, len(sent), err)
		}
	}
	return sent, nil
}

// serveFraudProofs takes the proofs that pushFraudProofs sends, answering
// each once this node holds it: a new one freezes its account and is
// gossiped on; one against an account already frozen is not checked again.
func (s *Service) serveFraudProofs(br *bufio.Reader, bw *bufio.Writer) error {
	for range maxProofsPerPush + 1 {
		frame, err := protocol.ReadFrame(br, protocol.MaxSyncFrame)
		if err != nil {
			return err
		}
		if len(frame) == 0 {
			return nil
		}
		if err := s.takeFraudProof(frame); err != nil {
			return err
		}
		if err := bw.WriteByte(0); err != nil {
			return err
		}
	}
	s.rejected.Inc()
	return fmt.Errorf("more than %d fraud proofs", maxProofsPerPush)
}

// takeFraudProof ingests one pushed proof.
func (s *Service) takeFraudProof(frame []byte) error {
	proof, err := ledger.DecodeFraudProof(frame)
	var a ledger.Entry
	if err == nil {
		a, err = ledger.DecodeEntry(proof.A)
	}
	if err != nil {
		s.rejected.Inc()
		return fmt.Errorf("fraud proof: %w", err)
	}
	if frozen, err := s.ledger.Frozen(a.Account); err != nil || frozen {
		return err
	}
	switch err := s.ledger.IngestFraudProof(proof); {
	case err == nil:
		s.spreadFraud(proof)
		return nil
	case errors.Is(err, ledger.ErrDuplicate):
		return nil
	case errors.Is(err, ledger.ErrBadFraudProof):
		s.rejected.Inc()
		return fmt.Errorf("fraud proof: %w", err)
	default:
		return fmt.Errorf("fraud proof: %w", err) // our store, not the sender
	}
}
