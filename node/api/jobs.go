package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// JobRequest is the body of POST /v1/jobs.
type JobRequest struct {
	Executor    string            `json:"executor"`
	Image       string            `json:"image,omitempty"`
	Module      string            `json:"module,omitempty"`
	Command     []string          `json:"command,omitempty"`
	Args        []string          `json:"args,omitempty"`
	Env         map[string]string `json:"env,omitempty"`
	Resources   Resources         `json:"resources"`
	Tier        string            `json:"tier"`
	MaxPrice    float64           `json:"max_price"`
	MaxDuration string            `json:"max_duration"`
	Deadline    string            `json:"deadline"`
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
	Created        time.Time     `json:"created"`
	Updated        time.Time     `json:"updated"`
	Deadline       time.Time     `json:"deadline"`
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

// JobBackend is the job part of Backend.
type JobBackend interface {
	SubmitJob(ctx context.Context, j ParsedJob) (JobInfo, error)
	Jobs(ctx context.Context) ([]JobInfo, error)
	Job(ctx context.Context, id string) (JobInfo, error)
	CancelJob(ctx context.Context, id string) (JobInfo, error)
	WatchJob(ctx context.Context, id string) (<-chan JobInfo, error)
}

func (s *server) routeJobs() {
	s.mux.Handle("POST /v1/jobs", s.auth(http.HandlerFunc(s.postJob)))
	s.mux.Handle("GET /v1/jobs", s.auth(http.HandlerFunc(s.getJobs)))
	s.mux.Handle("GET /v1/jobs/{id}", s.auth(http.HandlerFunc(s.getJob)))
	s.mux.Handle("DELETE /v1/jobs/{id}", s.auth(http.HandlerFunc(s.deleteJob)))
	s.mux.Handle("GET /v1/jobs/{id}/events", s.auth(http.HandlerFunc(s.jobEvents)))
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
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
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
	if errors.Is(err, ErrNotFound) {
		writeError(w, http.StatusNotFound, err.Error())
		return
	}
	writeError(w, http.StatusBadRequest, err.Error())
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
