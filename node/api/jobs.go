package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// JobRequest is the body of POST /v1/jobs.
type JobRequest struct {
	Executor  string            `json:"executor"`
	Image     string            `json:"image,omitempty"`
	Module    string            `json:"module,omitempty"`
	Command   []string          `json:"command,omitempty"`
	Args      []string          `json:"args,omitempty"`
	Env       map[string]string `json:"env,omitempty"`
	Resources Resources         `json:"resources"`
	// GPUSource "detected" takes only providers whose GPUs their node
	// detected, never ones only declared in a config; "" takes either.
	GPUSource   string  `json:"gpu_source,omitempty"`
	Tier        string  `json:"tier"`
	MaxPrice    float64 `json:"max_price"`
	MaxDuration string  `json:"max_duration"`
	Deadline    string  `json:"deadline"`
	// Inputs are content IDs of blobs uploaded with POST /v1/blobs; the
	// provider fetches them into the job's working dir under inputs/.
	Inputs []string `json:"inputs,omitempty"`
	// Verify asks for the result to be checked: Replicas k (1..5) runs
	// the job on k distinct providers, and the result a majority of them
	// returned is the job's (docs/TRUST.md).
	Verify *Verify `json:"verify,omitempty"`
}

// Verify is how a job's result is checked.
type Verify struct {
	Replicas int `json:"replicas"`
}

// Resources are what a job needs from one provider.
type Resources struct {
	GPUs      int    `json:"gpus"`
	GPUModel  string `json:"gpu_model,omitempty"`
	VRAMMiB   int    `json:"vram_mib,omitempty"`
	CPUMillis int    `json:"cpu_millis,omitempty"`
	MemoryMiB int    `json:"memory_mib,omitempty"`
}

// ParsedJob is a JobRequest with its times resolved.
type ParsedJob struct {
	JobRequest
	MaxDurationD time.Duration
	DeadlineT    time.Time
}

// Parse checks a job request and resolves its durations; errors name the
// field. Deadline is a duration from now ("30s") or an RFC 3339 time.
func (r JobRequest) Parse(now time.Time) (ParsedJob, error) {
	p := ParsedJob{JobRequest: r}
	if r.Executor == "" {
		return p, errors.New("executor: required (noop, wasm, docker or process)")
	}
	if r.Tier == "" {
		return p, errors.New(`tier: required ("interactive" or "batch")`)
	}
	if r.MaxPrice < 0 || r.MaxPrice > 1e6 {
		return p, errors.New("max_price: credits per GPU-second, between 0 and 1e6")
	}
	if r.Resources.GPUs < 0 || r.Resources.VRAMMiB < 0 || r.Resources.CPUMillis < 0 || r.Resources.MemoryMiB < 0 {
		return p, errors.New("resources: values must not be negative")
	}
	if r.GPUSource != "" && (r.GPUSource != "detected" || r.Resources.GPUs == 0) {
		return p, errors.New(`gpu_source: "detected" (with resources.gpus of at least 1) or empty, for any`)
	}
	if r.Verify != nil && (r.Verify.Replicas < 1 || r.Verify.Replicas > 5) {
		return p, fmt.Errorf("verify.replicas: %d, want 1..5", r.Verify.Replicas)
	}
	d, err := time.ParseDuration(r.MaxDuration)
	if err != nil || d <= 0 {
		return p, fmt.Errorf("max_duration: %q is not a positive Go duration such as \"30s\"", r.MaxDuration)
	}
	p.MaxDurationD = d
	switch dl, derr := time.ParseDuration(r.Deadline); {
	case r.Deadline == "":
		return p, errors.New(`deadline: required, a duration from now ("5m") or an RFC 3339 time`)
	case derr == nil:
		p.DeadlineT = now.Add(dl)
	default:
		t, terr := time.Parse(time.RFC3339, r.Deadline)
		if terr != nil {
			return p, fmt.Errorf("deadline: %q is neither a Go duration nor an RFC 3339 time", r.Deadline)
		}
		p.DeadlineT = t
	}
	if !p.DeadlineT.After(now) {
		return p, errors.New("deadline: already passed")
	}
	return p, nil
}

// JobInfo is a job as the API shows it.
type JobInfo struct {
	ID             string        `json:"id"`
	State          string        `json:"state"`
	Tier           string        `json:"tier"`
	Provider       string        `json:"provider,omitempty"`
	Price          float64       `json:"price"`
	MaxPrice       float64       `json:"max_price"`
	Attempt        int           `json:"attempt"`
	Leases         int           `json:"leases"`
	Preemptions    int           `json:"preemptions"`
	Bids           []BidInfo     `json:"bids"`
	Declines       []DeclineInfo `json:"declines"`
	ExitCode       int           `json:"exit_code"`
	Output         string        `json:"output,omitempty"`
	Error          string        `json:"error,omitempty"`
	RefusedResults int           `json:"refused_results"`
	// ResultID names the result blob (the job's stdout), ResultSize its
	// size; GET /v1/jobs/{id}/result returns it.
	ResultID   string `json:"result_id,omitempty"`
	ResultSize uint64 `json:"result_size,omitempty"`
	// OutputsID names the tar archive of the files the job left in its
	// out/ directory, OutputsSize its size; GET /v1/jobs/{id}/outputs
	// returns it.
	OutputsID   string     `json:"outputs_id,omitempty"`
	OutputsSize uint64     `json:"outputs_size,omitempty"`
	Usage       *UsageInfo `json:"usage,omitempty"`
	// Cost is what the job was charged, in credits; Payment says how its
	// escrow stands.
	Cost     float64      `json:"cost"`
	Payment  *PaymentInfo `json:"payment,omitempty"`
	Created  time.Time    `json:"created"`
	Updated  time.Time    `json:"updated"`
	Deadline time.Time    `json:"deadline"`
	// Leased is when the current lease began (the provider accepted).
	Leased time.Time `json:"leased,omitzero"`
}

// PaymentInfo is how a job's escrow stands in the requester's ledger:
// "held" (open holds of Amount), "paid" (Amount paid to To: the provider's
// final claim, or before ledger version 3 the requester's payment, in
// Entry), or "released" (the holds were returned). Held is what is still
// held for a paid job: the holds of other awards (a provider that went
// silent, say), which return once they expire.
type PaymentInfo struct {
	State  string  `json:"state"`
	Amount float64 `json:"amount"`
	To     string  `json:"to,omitempty"`
	Entry  string  `json:"entry,omitempty"`
	Held   float64 `json:"held,omitempty"`
}

// UsageInfo is what a run used, as its provider metered it.
type UsageInfo struct {
	WallMS          int64  `json:"wall_ms"`
	GPUMS           int64  `json:"gpu_ms"`
	PeakMemoryBytes uint64 `json:"peak_memory_bytes,omitempty"`
	FirstOutputMS   int64  `json:"first_output_ms"`
}

// BidInfo is a bid a job received.
type BidInfo struct {
	Provider string    `json:"provider"`
	Price    float64   `json:"price"`
	At       time.Time `json:"at"`
}

// DeclineInfo is why a provider did not bid.
type DeclineInfo struct {
	Provider string    `json:"provider"`
	Reason   string    `json:"reason"`
	At       time.Time `json:"at"`
}

// ErrNotFound marks a backend error for a missing resource (404).
var ErrNotFound = errors.New("not found")

// ErrNotReady is returned for what exists but is not there yet, such as the
// result of a running job.
var ErrNotReady = errors.New("not ready")

// ErrTooLarge is returned for an upload over a limit.
var ErrTooLarge = errors.New("too large")

// ErrInsufficientStorage is returned for new work a node refuses because
// its data dir is low on disk space (507).
var ErrInsufficientStorage = errors.New("insufficient storage")

// ErrUnavailable is returned when a peer that holds what was asked for
// cannot be reached.
var ErrUnavailable = errors.New("unavailable")

// ErrNotSigning is returned for a job this node cannot back with credits
// now, because it signs no ledger entries (its account's head is not
// confirmed by any peer yet, or its account is frozen) (503).
var ErrNotSigning = errors.New("not signing")

// JobBackend is the job part of Backend.
type JobBackend interface {
	SubmitJob(ctx context.Context, j ParsedJob) (JobInfo, error)
	Jobs(ctx context.Context) ([]JobInfo, error)
	Job(ctx context.Context, id string) (JobInfo, error)
	CancelJob(ctx context.Context, id string) (JobInfo, error)
	WatchJob(ctx context.Context, id string) (<-chan JobInfo, error)
	// JobLogs sends a job's log to w as it grows; with follow, until the
	// run ends.
	JobLogs(ctx context.Context, id string, follow bool, w func([]byte) error) error
	// JobResult opens a finished job's result, fetching it from the
	// provider if needed. ErrNotReady if the job has not finished.
	JobResult(ctx context.Context, id string) (io.ReadCloser, BlobInfo, error)
	// JobOutputs opens the tar archive of a finished job's out/ files,
	// fetching it from the provider if needed. ErrNotReady if the job has
	// not finished, ErrNotFound if it left none.
	JobOutputs(ctx context.Context, id string) (io.ReadCloser, BlobInfo, error)
	BlobBackend
}

func (s *server) routeJobs() {
	s.mux.Handle("POST /v1/jobs", s.auth(http.HandlerFunc(s.postJob)))
	s.mux.Handle("GET /v1/jobs", s.auth(http.HandlerFunc(s.getJobs)))
	s.mux.Handle("GET /v1/jobs/{id}", s.auth(http.HandlerFunc(s.getJob)))
	s.mux.Handle("DELETE /v1/jobs/{id}", s.auth(http.HandlerFunc(s.deleteJob)))
	s.mux.Handle("GET /v1/jobs/{id}/events", s.auth(http.HandlerFunc(s.jobEvents)))
	s.mux.Handle("GET /v1/jobs/{id}/logs", s.auth(http.HandlerFunc(s.jobLogs)))
	s.mux.Handle("GET /v1/jobs/{id}/result", s.auth(http.HandlerFunc(s.jobResult)))
	s.mux.Handle("GET /v1/jobs/{id}/outputs", s.auth(http.HandlerFunc(s.jobOutputs)))
	s.routeBlobs()
	s.routeLedger()
}

func (s *server) postJob(w http.ResponseWriter, r *http.Request) {
	var req JobRequest
	if !decodeJSON(w, r, &req) {
		return
	}
	parsed, err := req.Parse(time.Now())
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	job, err := s.cfg.Backend.SubmitJob(r.Context(), parsed)
	if errors.Is(err, ErrNotSigning) {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	if err != nil {
		s.jobError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]string{"id": job.ID, "state": job.State})
}

func (s *server) getJobs(w http.ResponseWriter, r *http.Request) {
	jobs, err := s.cfg.Backend.Jobs(r.Context())
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	if jobs == nil {
		jobs = []JobInfo{}
	}
	writeJSON(w, http.StatusOK, jobs)
}

func (s *server) jobError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, ErrNotReady):
		writeError(w, http.StatusConflict, err.Error())
	case errors.Is(err, ErrTooLarge):
		writeError(w, http.StatusRequestEntityTooLarge, err.Error())
	case errors.Is(err, ErrUnavailable):
		writeError(w, http.StatusBadGateway, err.Error())
	case errors.Is(err, ErrInsufficientStorage):
		writeError(w, http.StatusInsufficientStorage, err.Error())
	default:
		writeError(w, http.StatusBadRequest, err.Error())
	}
}

// jobLogs sends a job's log as plain text; ?follow=1 keeps the response
// open and streams the log until the run ends.
func (s *server) jobLogs(w http.ResponseWriter, r *http.Request) {
	follow := r.URL.Query().Get("follow")
	if follow != "" && follow != "0" && follow != "1" && follow != "true" && follow != "false" {
		writeError(w, http.StatusBadRequest, "follow: 1 or 0")
		return
	}
	started := false
	flusher, _ := w.(http.Flusher)
	err := s.cfg.Backend.JobLogs(r.Context(), r.PathValue("id"), follow == "1" || follow == "true", func(b []byte) error {
		if !started {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusOK)
			started = true
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
		if flusher != nil {
			flusher.Flush()
		}
		return nil
	})
	switch {
	case err != nil && !started:
		s.jobError(w, err)
	case !started:
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusOK)
	}
}

// jobResult sends a finished job's result blob.
func (s *server) jobResult(w http.ResponseWriter, r *http.Request) {
	rc, info, err := s.cfg.Backend.JobResult(r.Context(), r.PathValue("id"))
	if err != nil {
		s.jobError(w, err)
		return
	}
	defer rc.Close()
	sendBlob(w, rc, info)
}

// jobOutputs sends the tar archive of a finished job's out/ files.
func (s *server) jobOutputs(w http.ResponseWriter, r *http.Request) {
	rc, info, err := s.cfg.Backend.JobOutputs(r.Context(), r.PathValue("id"))
	if err != nil {
		s.jobError(w, err)
		return
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "application/x-tar")
	sendBlob(w, rc, info)
}

func (s *server) getJob(w http.ResponseWriter, r *http.Request) {
	job, err := s.cfg.Backend.Job(r.Context(), r.PathValue("id"))
	if err != nil {
		s.jobError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, job)
}

func (s *server) deleteJob(w http.ResponseWriter, r *http.Request) {
	job, err := s.cfg.Backend.CancelJob(r.Context(), r.PathValue("id"))
	if err != nil {
		s.jobError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, job)
}

// jobEvents streams a job's states as server-sent events until it ends.
func (s *server) jobEvents(w http.ResponseWriter, r *http.Request) {
	ch, err := s.cfg.Backend.WatchJob(r.Context(), r.PathValue("id"))
	if err != nil {
		s.jobError(w, err)
		return
	}
	flusher, _ := w.(http.Flusher)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	for {
		select {
		case <-r.Context().Done():
			return
		case job, ok := <-ch:
			if !ok {
				return
			}
			b, _ := json.Marshal(job)
			fmt.Fprintf(w, "event: state\ndata: %s\n\n", b)
			if flusher != nil {
				flusher.Flush()
			}
		}
	}
}
