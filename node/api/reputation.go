package api

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/market"
)

// ProviderCounters are a peer's ledger reputation counters as a provider,
// exactly as the ledger keeps them (ledger.Reputation): every node that
// holds the same entries holds the same counters.
type ProviderCounters struct {
	Leases   uint64 `json:"leases"`
	Receipts uint64 `json:"receipts"`
	// JobsPaid counts final claims: jobs paid in full.
	JobsPaid uint64 `json:"jobs_paid"`
	// EarnedMicro is what it claimed, in micro-credits.
	EarnedMicro uint64 `json:"earned_micro"`
	// GPUMS and WallMS are what its paid jobs delivered: each final
	// claim's receipt usage, capped at what the claim paid for.
	GPUMS  uint64 `json:"gpu_ms"`
	WallMS uint64 `json:"wall_ms"`
	// Waived counts awards it gave back.
	Waived uint64 `json:"waived"`
	// NotRun counts named holds released at expiry with no receipt: it
	// took the award and ran nothing.
	NotRun uint64 `json:"not_run"`
	// Unclaimed counts named holds released at expiry after it wrote a
	// receipt.
	Unclaimed          uint64 `json:"unclaimed"`
	VerificationLosses uint64 `json:"verification_losses"`
}

// RequesterCounters are a peer's ledger reputation counters as a
// requester.
type RequesterCounters struct {
	// Awards counts the named holds it wrote.
	Awards uint64 `json:"awards"`
	// PaidFor counts final claims against it.
	PaidFor    uint64 `json:"paid_for"`
	SpentMicro uint64 `json:"spent_micro"`
	// LeftUnpaid counts named holds it released at expiry whose provider
	// wrote a receipt.
	LeftUnpaid uint64 `json:"left_unpaid"`
}

// ReputationCounters are a peer's counters, both roles.
type ReputationCounters struct {
	Provider  ProviderCounters  `json:"provider"`
	Requester RequesterCounters `json:"requester"`
}

// ReputationDerived are figures computed from the counters, the same on
// every node whose counters are.
type ReputationDerived struct {
	// Losses is not_run + unclaimed + verification_losses: the outcomes
	// the provider is to blame for.
	Losses uint64 `json:"losses"`
	// SuccessRatio is jobs_paid / (jobs_paid + losses); null while both
	// are 0.
	SuccessRatio *float64 `json:"success_ratio"`
	// Earned and Spent are earned_micro and spent_micro in credits.
	Earned float64 `json:"earned"`
	Spent  float64 `json:"spent"`
	// GPUSeconds and WallSeconds are gpu_ms and wall_ms in seconds.
	GPUSeconds  float64 `json:"gpu_seconds"`
	WallSeconds float64 `json:"wall_seconds"`
	// Standing is how a requester's choice of bid treats the provider:
	// "newcomer" (no job paid, no loss: eligible for the newcomer share),
	// "proven" (more jobs paid than losses: its bids come first) or
	// "unproven" (the rest).
	Standing string `json:"standing"`
	// Risk is the handicap that choice weighs its price with: price ×
	// (1 + reputation_weight × risk); 0 (a long spotless record) to 2.
	Risk float64 `json:"risk"`
	// PaidRatio is paid_for / (paid_for + left_unpaid), as a requester;
	// null while both are 0.
	PaidRatio *float64 `json:"paid_ratio"`
}

// Standing values of ReputationDerived.
const (
	StandingNewcomer = "newcomer"
	StandingProven   = "proven"
	StandingUnproven = "unproven"
)

// Reputation is a peer's counters with the figures derived from them.
type Reputation struct {
	ReputationCounters
	Derived ReputationDerived `json:"derived"`
}

// ReputationInfo is one element of GET /v1/reputation and the body of GET
// /v1/reputation/{peer}.
type ReputationInfo struct {
	PeerID string `json:"peer_id"`
	Reputation
}

// MarketRecord is the part of the counters the requester's choice of bid
// weighs (market.Record).
func (c ReputationCounters) MarketRecord() market.Record {
	p := c.Provider
	return market.Record{JobsPaid: p.JobsPaid, Losses: p.NotRun + p.Unclaimed + p.VerificationLosses}
}

// NewReputation derives a peer's figures from its counters.
func NewReputation(c ReputationCounters) Reputation {
	rec := c.MarketRecord()
	d := ReputationDerived{
		Losses:     rec.Losses,
		Earned:     float64(c.Provider.EarnedMicro) / 1e6,
		Spent:      float64(c.Requester.SpentMicro) / 1e6,
		GPUSeconds: float64(c.Provider.GPUMS) / 1e3, WallSeconds: float64(c.Provider.WallMS) / 1e3,
		Standing:     StandingUnproven,
		Risk:         rec.Risk(),
		SuccessRatio: ratio(rec.JobsPaid, rec.Losses),
		PaidRatio:    ratio(c.Requester.PaidFor, c.Requester.LeftUnpaid),
	}
	switch {
	case rec.Newcomer():
		d.Standing = StandingNewcomer
	case rec.Proven():
		d.Standing = StandingProven
	}
	return Reputation{ReputationCounters: c, Derived: d}
}

// ratio is good / (good + bad), nil when both are 0.
func ratio(good, bad uint64) *float64 {
	if good == 0 && bad == 0 {
		return nil
	}
	r := float64(good) / (float64(good) + float64(bad))
	return &r
}

// ReputationBackend answers the reputation routes from the node's ledger.
type ReputationBackend interface {
	// Reputation returns p's counters; a peer the ledger knows nothing of
	// has all zero (a newcomer).
	Reputation(ctx context.Context, p peer.ID) (ReputationCounters, error)
	// Reputations calls fn with every peer that has a record.
	Reputations(ctx context.Context, fn func(peer.ID, ReputationCounters) error) error
}

func (s *server) routeReputation() {
	s.mux.Handle("GET /v1/reputation", s.auth(http.HandlerFunc(s.getReputations)))
	s.mux.Handle("GET /v1/reputation/{peer}", s.auth(http.HandlerFunc(s.getReputation)))
}

// getReputations lists every peer with a record, by peer ID: the body is
// the same bytes on every node whose ledger holds the same entries.
func (s *server) getReputations(w http.ResponseWriter, r *http.Request) {
	out := []ReputationInfo{}
	err := s.cfg.Backend.Reputations(r.Context(), func(p peer.ID, c ReputationCounters) error {
		out = append(out, ReputationInfo{PeerID: p.String(), Reputation: NewReputation(c)})
		return nil
	})
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	slices.SortFunc(out, func(a, b ReputationInfo) int { return cmp.Compare(a.PeerID, b.PeerID) })
	writeJSON(w, http.StatusOK, out)
}

func (s *server) getReputation(w http.ResponseWriter, r *http.Request) {
	p, err := peer.Decode(r.PathValue("peer"))
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("peer: %q is not a peer ID: %v", r.PathValue("peer"), err))
		return
	}
	c, err := s.cfg.Backend.Reputation(r.Context(), p)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, ReputationInfo{PeerID: p.String(), Reputation: NewReputation(c)})
}

// Reputations returns every peer's record that the node's ledger holds,
// by peer ID.
func (c *Client) Reputations(ctx context.Context) ([]ReputationInfo, error) {
	var out []ReputationInfo
	err := c.Do(ctx, http.MethodGet, "/v1/reputation", nil, &out)
	return out, err
}

// Reputation returns one peer's record.
func (c *Client) Reputation(ctx context.Context, p string) (ReputationInfo, error) {
	var out ReputationInfo
	err := c.Do(ctx, http.MethodGet, "/v1/reputation/"+url.PathEscape(p), nil, &out)
	return out, err
}
