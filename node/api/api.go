// Package api is a mira node's local HTTP API: JSON in and out, bearer-token
// authentication, JSON errors for every failure, and /metrics for
// Prometheus. It also holds the Go client that the CLI and scripts use.
package api

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mira-market/mira/node/gpu"
)

// MaxBodyBytes bounds every request body.
const MaxBodyBytes = 1 << 20

// NodeInfo is the body of GET /v1/node.
type NodeInfo struct {
	PeerID  string   `json:"peer_id"`
	Network string   `json:"network"`
	Addrs   []string `json:"addrs"`
	Version string   `json:"version"`
	Private bool     `json:"private"`
	// GPUs are the node's own GPUs, detected or declared.
	GPUs []gpu.Device `json:"gpus"`
	// Provider says whether the node sells capacity.
	Provider bool `json:"provider"`
	// Disk is the data dir's free space as the node last measured it.
	Disk DiskInfo `json:"disk"`
	// Ledger is where the node stands with its own ledger account.
	Ledger LedgerStatus `json:"ledger"`
}

// DiskInfo is the data dir's free space: while Low, the node refuses new
// work (jobs, blobs, bids) and keeps serving reads and settling.
type DiskInfo struct {
	FreeBytes     uint64 `json:"free_bytes"`
	MinFreeBytes  uint64 `json:"min_free_bytes"`
	ReservedBytes uint64 `json:"reserved_bytes"`
	Low           bool   `json:"low"`
}

// LedgerStatus says whether a node may sign ledger entries: after a start
// it signs nothing until peers have shown it its own account's head, so
// that a node restored from an old copy of its data dir cannot sign a seq
// the network already holds.
type LedgerStatus struct {
	// Head is "confirming" (asking peers; jobs wait), "unreachable" (no
	// peer answered within head_wait; jobs are refused), or "confirmed".
	Head string `json:"head"`
	// Detail says why, in words.
	Detail string `json:"detail,omitempty"`
	// Seq is the node's own head: the last seq it knows of its account.
	Seq uint64 `json:"seq"`
	// Learned counts the entries of its own account the node took from
	// its peers at start: what its data dir lacked.
	Learned int `json:"learned"`
	// Frozen says the network holds two different entries this node signed
	// with the same seq: its account is frozen for good.
	Frozen bool `json:"frozen"`
}

// ProviderQuery is the query of GET /v1/providers.
type ProviderQuery struct {
	GPU     string // model key or "any"
	Count   int
	VRAMMiB int
	// Source "detected" counts only GPUs the provider's node detected
	// (query parameter gpu_source); "" counts declared ones too.
	Source string
}

// ProviderInfo is one element of GET /v1/providers.
type ProviderInfo struct {
	PeerID    string             `json:"peer_id"`
	GPUs      []ProviderGPU      `json:"gpus"`
	Prices    map[string]float64 `json:"prices"`
	FreeSlots int                `json:"free_slots"`
	Executors []string           `json:"executors"`
	CPUCores  int                `json:"cpu_cores"`
	MemoryMiB int64              `json:"memory_mib"`
	ExpiresAt time.Time          `json:"expires_at"`
	// Reputation is the provider's record in this node's ledger.
	Reputation Reputation `json:"reputation"`
}

// ProviderGPU is a GPU entry of ProviderInfo.
type ProviderGPU struct {
	Model   string `json:"model"`
	VRAMMiB int    `json:"vram_mib"`
	Count   int    `json:"count"`
	// Source is "detected" (the provider's node found the device) or
	// "declared" (its operator's config says so; nothing checks it).
	Source string `json:"source"`
}

// PeerInfo is one element of GET /v1/peers.
type PeerInfo struct {
	PeerID    string   `json:"peer_id"`
	Addrs     []string `json:"addrs"`
	LatencyMS float64  `json:"latency_ms"`
}

// ConnectRequest is the body of POST /v1/peers.
type ConnectRequest struct {
	Addr string `json:"addr"`
}

// Backend is what the API serves; a node implements it.
type Backend interface {
	Ready() bool
	NodeInfo() NodeInfo
	Peers() []PeerInfo
	Connect(ctx context.Context, addr string) (string, error)
	Providers(ctx context.Context, q ProviderQuery) ([]ProviderInfo, error)
	JobBackend
	LedgerBackend
	ReputationBackend
}

// Config configures NewServer.
type Config struct {
	Backend Backend
	// Token is the bearer token every request but /healthz must carry.
	Token string
	// Metrics is served at /metrics; nil serves an empty registry.
	Metrics *prometheus.Registry
	Log     *slog.Logger
}

// NewToken makes a random API token.
func NewToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("api token: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// Error is the JSON body of every error response.
type Error struct {
	Error string `json:"error"`
}

// server routes requests; see NewServer.
type server struct {
	cfg Config
	mux *http.ServeMux
}

// NewServer returns the API handler.
func NewServer(cfg Config) http.Handler {
	if cfg.Metrics == nil {
		cfg.Metrics = prometheus.NewRegistry()
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	s := &server{cfg: cfg, mux: http.NewServeMux()}
	s.mux.HandleFunc("GET /healthz", s.healthz)
	s.mux.Handle("GET /metrics", s.auth(promhttp.HandlerFor(cfg.Metrics, promhttp.HandlerOpts{})))
	s.mux.Handle("GET /v1/node", s.auth(http.HandlerFunc(s.getNode)))
	s.mux.Handle("GET /v1/peers", s.auth(http.HandlerFunc(s.getPeers)))
	s.mux.Handle("POST /v1/peers", s.auth(http.HandlerFunc(s.postPeers)))
	s.mux.Handle("GET /v1/providers", s.auth(http.HandlerFunc(s.getProviders)))
	s.routeJobs()
	s.routeReputation()
	return s
}

// ServeHTTP routes a request. Requests that match no route get the mux's
// status (404, or 405 with Allow) but as a JSON error.
func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h, pattern := s.mux.Handler(r)
	if pattern == "" {
		rec := &statusRecorder{header: http.Header{}}
		h.ServeHTTP(rec, r)
		if allow := rec.header.Get("Allow"); allow != "" {
			w.Header().Set("Allow", allow)
		}
		msg := fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path)
		if rec.code == http.StatusMethodNotAllowed {
			msg = fmt.Sprintf("method %s not allowed on %s (allowed: %s)", r.Method, r.URL.Path, rec.header.Get("Allow"))
		}
		writeError(w, rec.code, msg)
		return
	}
	if r.URL.Path != blobsPath { // a blob upload is bounded by the blob store
		r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	}
	s.mux.ServeHTTP(w, r)
}

func (s *server) auth(next http.Handler) http.Handler {
	want := []byte("Bearer " + s.cfg.Token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		if s.cfg.Token == "" || subtle.ConstantTimeCompare(got, want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="mira"`)
			writeError(w, http.StatusUnauthorized, "missing or wrong API token: send 'Authorization: Bearer <token>' with the token from the node's api.token file")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *server) healthz(w http.ResponseWriter, r *http.Request) {
	if !s.cfg.Backend.Ready() {
		writeError(w, http.StatusServiceUnavailable, "node is not ready")
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *server) getNode(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.cfg.Backend.NodeInfo())
}

func (s *server) getPeers(w http.ResponseWriter, r *http.Request) {
	peers := s.cfg.Backend.Peers()
	if peers == nil {
		peers = []PeerInfo{}
	}
	writeJSON(w, http.StatusOK, peers)
}

func (s *server) postPeers(w http.ResponseWriter, r *http.Request) {
	var req ConnectRequest
	if !decodeJSON(w, r, &req) {
		return
	}
	if req.Addr == "" {
		writeError(w, http.StatusBadRequest, "addr: required (a multiaddr ending in /p2p/<peer id>)")
		return
	}
	id, err := s.cfg.Backend.Connect(r.Context(), req.Addr)
	if err != nil {
		writeError(w, http.StatusBadGateway, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"peer_id": id})
}

func (s *server) getProviders(w http.ResponseWriter, r *http.Request) {
	q := ProviderQuery{GPU: r.URL.Query().Get("gpu"), Source: r.URL.Query().Get("gpu_source")}
	if q.Source != "" && q.Source != "detected" {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("gpu_source: %q is not \"detected\" (or empty, for any)", q.Source))
		return
	}
	for _, p := range []struct {
		name string
		dst  *int
	}{{"count", &q.Count}, {"vram_mib", &q.VRAMMiB}} {
		v := r.URL.Query().Get(p.name)
		if v == "" {
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("%s: %q is not a non-negative integer", p.name, v))
			return
		}
		*p.dst = n
	}
	if q.GPU != "" && q.Count == 0 {
		q.Count = 1
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	providers, err := s.cfg.Backend.Providers(ctx, q)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if providers == nil {
		providers = []ProviderInfo{}
	}
	writeJSON(w, http.StatusOK, providers)
}

// decodeJSON decodes one JSON object from the body into v, rejecting unknown
// fields and trailing data. On failure it writes a 4xx and returns false.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		writeError(w, http.StatusUnsupportedMediaType, "Content-Type must be application/json")
		return false
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body over %d bytes", tooBig.Limit))
			return false
		}
		writeError(w, http.StatusBadRequest, "invalid JSON body: "+err.Error())
		return false
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		writeError(w, http.StatusBadRequest, "invalid JSON body: trailing data after the object")
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, Error{Error: msg})
}

// statusRecorder captures the status and headers the mux would have sent
// for an unmatched request, so they can be resent with a JSON body.
type statusRecorder struct {
	header http.Header
	code   int
}

func (r *statusRecorder) Header() http.Header         { return r.header }
func (r *statusRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *statusRecorder) WriteHeader(code int)        { r.code = code }
