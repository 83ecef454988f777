package ledgerd

import (
	"context"
	"encoding/hex"
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/protocol/ledger"
)

// IngestEntry validates a ledger entry from elsewhere (a tool, a test) and,
// if this node stores it, gossips it like its own; an entry that convicts
// its account of equivocation has the proof gossiped instead.
func (s *Service) IngestEntry(raw []byte) error {
	if err := s.ingestOne(raw); err != nil {
		return err
	}
	s.publishEntries([][]byte{raw})
	return nil
}

func credits(micro uint64) float64 { return float64(micro) / 1e6 }

// account names an account by its peer ID; "" is this node's.
func (s *Service) account(name string) (peer.ID, error) {
	if name == "" {
		return s.self, nil
	}
	id, err := peer.Decode(name)
	if err != nil {
		return "", fmt.Errorf("account: %w", err)
	}
	return id, nil
}

// Balance answers GET /v1/ledger/balance.
func (s *Service) Balance(_ context.Context, account string) (api.BalanceInfo, error) {
	id, err := s.account(account)
	if err != nil {
		return api.BalanceInfo{}, err
	}
	bal, err := s.ledger.Balance(id)
	if err != nil {
		return api.BalanceInfo{}, err
	}
	frozen, err := s.ledger.Frozen(id)
	return api.BalanceInfo{
		Account: id.String(), Balance: credits(bal.Balance), Held: credits(bal.Held),
		Available: credits(bal.Available()), Frozen: frozen,
	}, err
}

// Entries answers GET /v1/ledger/entries.
func (s *Service) Entries(_ context.Context, account string, after uint64, limit int) ([]api.EntryInfo, error) {
	id, err := s.account(account)
	if err != nil {
		return nil, err
	}
	es, err := s.ledger.Entries(id, after, limit)
	if err != nil {
		return nil, err
	}
	out := make([]api.EntryInfo, 0, len(es))
	for _, e := range es {
		out = append(out, entryInfo(e))
	}
	return out, nil
}

func entryInfo(e ledger.Entry) api.EntryInfo {
	info := api.EntryInfo{
		Account: e.Account.String(), Seq: e.Seq, Hash: e.Hash().String(), Prev: e.Prev.String(),
		Kind: e.Kind().String(), Time: e.Time.UTC(), Body: map[string]any{},
	}
	switch b := e.Body.(type) {
	case ledger.GrantBody:
		info.Body["amount"] = credits(b.Amount)
	case ledger.HoldBody:
		info.Body["job"], info.Body["provider"], info.Body["amount"] = b.Job.String(), b.Provider.String(), credits(b.Amount)
	case ledger.ReleaseBody:
		info.Body["job"] = b.Job.String()
	case ledger.PaymentBody:
		info.Body["job"], info.Body["to"], info.Body["receipt"], info.Body["amount"] = b.Job.String(), b.To.String(), b.Receipt.String(), credits(b.Amount)
	case ledger.LeaseBody:
		info.Body["job"], info.Body["requester"], info.Body["price"] = b.Job.String(), b.Requester.String(), credits(b.Price)
		info.Body["attempt"], info.Body["grant"] = b.Attempt, hex.EncodeToString(b.Grant)
	case ledger.ReceiptBody:
		info.Body["job"], info.Body["receipt"], info.Body["result"] = b.Job.String(), b.Receipt.String(), b.Result
		info.Body["wall_ms"], info.Body["gpu_ms"], info.Body["exit_code"] = b.Usage.WallMS, b.Usage.GPUMS, b.Usage.ExitCode
	}
	return info
}

// Verify answers GET /v1/ledger/verify.
func (s *Service) Verify(ctx context.Context) (api.VerifyInfo, error) {
	probs, err := s.ledger.Verify(ctx)
	if err != nil {
		return api.VerifyInfo{}, err
	}
	digest, err := s.ledger.Digest()
	if err != nil {
		return api.VerifyInfo{}, err
	}
	total, err := s.ledger.Total()
	if err != nil {
		return api.VerifyInfo{}, err
	}
	v := api.VerifyInfo{OK: len(probs) == 0, Entries: s.ledger.Count(), Digest: digest.String(), Total: credits(total), Problems: []string{}}
	for _, p := range probs {
		v.Problems = append(v.Problems, p.Error())
	}
	return v, nil
}

// Payment describes how a job's escrow stands in this node's ledger: what
// was paid for it, and the escrow's state (nil if it has none). A job is
// paid by its providers' final claims (the one of the provider whose
// result the job took is the one shown), or, on a ledger written before
// version 3, by the requester's payment.
func (s *Service) Payment(j market.Job) (float64, *api.PaymentInfo) {
	if s == nil || s.ledger == nil {
		return 0, nil
	}
	es, err := s.ledger.EscrowFor(s.self, ledger.Hash(j.ID))
	if err != nil {
		return 0, nil
	}
	var held, cost uint64
	if es.Hold != nil {
		held += es.Hold.Amount
	}
	for _, h := range es.Named {
		held += h.Amount - h.Claimed
		cost += h.Claimed // drawn by claims that did not close the hold
	}
	var shown *ledger.Entry
	var shownAmount uint64
	for i, e := range es.Claims {
		if c, ok := finalClaimOf(e); ok {
			cost += c.Amount
			if shown == nil || e.Account == j.Provider {
				shown, shownAmount = &es.Claims[i], c.Amount
			}
		}
	}
	if shown != nil {
		return credits(cost), &api.PaymentInfo{State: "paid", Amount: credits(shownAmount),
			To: shown.Account.String(), Entry: shown.Hash().String(), Held: credits(held)}
	}
	if e := es.Payment; e != nil {
		if p, ok := e.Body.(ledger.PaymentBody); ok {
			return credits(p.Amount), &api.PaymentInfo{State: "paid", Amount: credits(p.Amount), To: p.To.String(),
				Entry: e.Hash().String(), Held: credits(held)}
		}
	}
	if es.Hold != nil || len(es.Named) > 0 {
		return credits(cost), &api.PaymentInfo{State: "held", Amount: credits(held)}
	}
	if j.State.Terminal() && j.Attempt > 0 {
		return 0, &api.PaymentInfo{State: "released"}
	}
	return 0, nil
}

// finalClaim is what a final claim of either kind (by acceptance, or by
// a replicas' majority) says of its job: both close the hold at HoldSeq
// having drawn Amount in all, and both mean the job ran to its end.
type finalClaim struct {
	Job       ledger.Hash
	Requester peer.ID
	HoldSeq   uint64
	Amount    uint64
	Majority  bool // a majority claim: the requester signed no acceptance
}

// finalClaimOf reads e as a final claim, if it is one.
func finalClaimOf(e ledger.Entry) (finalClaim, bool) {
	switch c := e.Body.(type) {
	case ledger.ClaimBody:
		return finalClaim{Job: c.Job, Requester: c.Requester, HoldSeq: c.HoldSeq, Amount: c.Amount}, c.Final
	case ledger.MajorityClaimBody:
		return finalClaim{Job: c.Job, Requester: c.Requester, HoldSeq: c.HoldSeq, Amount: c.Amount, Majority: true}, true
	}
	return finalClaim{}, false
}
