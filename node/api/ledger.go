package api

import (
	"context"
	"net/http"
	"strconv"
	"time"
)

// BalanceInfo is an account's balance, in credits.
type BalanceInfo struct {
	Account string  `json:"account"`
	Balance float64 `json:"balance"`
	Held    float64 `json:"held"`
	// Available is balance minus held: what the account can still escrow.
	Available float64 `json:"available"`
	Frozen    bool    `json:"frozen,omitempty"`
}

// EntryInfo is one ledger entry.
type EntryInfo struct {
	Account string    `json:"account"`
	Seq     uint64    `json:"seq"`
	Hash    string    `json:"hash"`
	Prev    string    `json:"prev_hash"`
	Kind    string    `json:"kind"`
	Time    time.Time `json:"timestamp"`
	// Body is the kind's content: job, provider, to, amount (in credits),
	// receipt, result, usage.
	Body map[string]any `json:"body"`
}

// VerifyInfo is the result of re-validating the whole local ledger.
type VerifyInfo struct {
	OK       bool     `json:"ok"`
	Entries  uint64   `json:"entries"`
	Digest   string   `json:"digest"`
	Total    float64  `json:"total"`
	Problems []string `json:"problems"`
}

// LedgerBackend answers the ledger routes.
type LedgerBackend interface {
	// Balance of an account; "" means this node's.
	Balance(ctx context.Context, account string) (BalanceInfo, error)
	// Entries of an account ("" means this node's) after seq, at most limit.
	Entries(ctx context.Context, account string, after uint64, limit int) ([]EntryInfo, error)
	Verify(ctx context.Context) (VerifyInfo, error)
}

func (s *server) routeLedger() {
	s.mux.Handle("GET /v1/ledger/balance", s.auth(http.HandlerFunc(s.getBalance)))
	s.mux.Handle("GET /v1/ledger/entries", s.auth(http.HandlerFunc(s.getEntries)))
	s.mux.Handle("GET /v1/ledger/verify", s.auth(http.HandlerFunc(s.getVerify)))
}

func (s *server) getBalance(w http.ResponseWriter, r *http.Request) {
	b, err := s.cfg.Backend.Balance(r.Context(), r.URL.Query().Get("account"))
	if err != nil {
		s.jobError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, b)
}

func (s *server) getEntries(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var after uint64
	if v := q.Get("after"); v != "" {
		var err error
		if after, err = strconv.ParseUint(v, 10, 64); err != nil {
			writeError(w, http.StatusBadRequest, "after: a sequence number (0 or more)")
			return
		}
	}
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			writeError(w, http.StatusBadRequest, "limit: between 1 and 1000")
			return
		}
		limit = n
	}
	es, err := s.cfg.Backend.Entries(r.Context(), q.Get("account"), after, limit)
	if err != nil {
		s.jobError(w, err)
		return
	}
	if es == nil {
		es = []EntryInfo{}
	}
	writeJSON(w, http.StatusOK, es)
}

func (s *server) getVerify(w http.ResponseWriter, r *http.Request) {
	v, err := s.cfg.Backend.Verify(r.Context())
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, v)
}
