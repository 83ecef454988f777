package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/mira-market/mira/node/api"
)

// TestBurstLeases checks that a burst's rate runs from its start to the
// last job's own lease time, whatever order the jobs ended in.
func TestBurstLeases(t *testing.T) {
	start := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return start.Add(time.Duration(ms) * time.Millisecond) }
	job := func(posted, leased, leases int) burstJob {
		j := burstJob{posted: at(posted), final: api.JobInfo{Leases: leases}}
		if leases > 0 {
			j.final.Leased = at(leased)
		}
		return j
	}
	cases := []struct {
		name        string
		jobs        []burstJob
		count, more int
		last        time.Duration
		rate        float64
	}{
		{"in order", []burstJob{job(0, 100, 1), job(10, 200, 1), job(20, 500, 1)}, 3, 0, 500 * time.Millisecond, 6},
		// The last lease counts, not the last job posted.
		{"out of order", []burstJob{job(0, 1000, 1), job(10, 200, 1)}, 2, 0, time.Second, 2},
		{"one never leased", []burstJob{job(0, 250, 1), job(10, 0, 0)}, 1, 0, 250 * time.Millisecond, 4},
		{"leased again", []burstJob{job(0, 400, 2), job(10, 100, 1)}, 2, 1, 400 * time.Millisecond, 5},
		{"none leased", []burstJob{job(0, 0, 0)}, 0, 0, 0, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := burstLeases(start, c.jobs)
			if l.count != c.count || l.again != c.more || l.last != c.last || l.rate() != c.rate {
				t.Errorf("count %d, again %d, last %v, rate %v; want %d, %d, %v, %v", l.count, l.again, l.last, l.rate(), c.count, c.more, c.last, c.rate)
			}
			if len(l.perJob) != c.count {
				t.Errorf("%d per-job lease times, want %d", len(l.perJob), c.count)
			}
		})
	}
}

// TestReadJobEvents checks that the event stream's states reach the
// caller in order, the last one returned, and that an error status is an
// error.
func TestReadJobEvents(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" || r.URL.Path != "/v1/jobs/j1/events" {
			http.Error(w, `{"error":"no such job"}`, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for _, s := range []string{"bidding", "running", "succeeded"} {
			fmt.Fprintf(w, "event: state\ndata: {\"id\":\"j1\",\"state\":%q}\n\n", s)
		}
	}))
	defer srv.Close()
	cases := []struct {
		name, id, token string
		want            []string
		wantErr         bool
	}{
		{"whole stream", "j1", "tok", []string{"bidding", "running", "succeeded"}, false},
		{"unknown job", "j2", "tok", nil, true},
		{"wrong token", "j1", "bad", nil, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var seen []string
			last, err := readJobEvents(context.Background(), &api.Client{BaseURL: srv.URL, Token: c.token}, c.id, func(j api.JobInfo) {
				seen = append(seen, j.State)
			})
			if (err != nil) != c.wantErr {
				t.Fatalf("err %v, want error %v", err, c.wantErr)
			}
			if fmt.Sprint(seen) != fmt.Sprint(c.want) {
				t.Errorf("states %v, want %v", seen, c.want)
			}
			if len(c.want) > 0 && last.State != c.want[len(c.want)-1] {
				t.Errorf("last %q, want %q", last.State, c.want[len(c.want)-1])
			}
		})
	}
}
