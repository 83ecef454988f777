package joblogs

import "sync"

// Route decides, once, how a run's log reaches the requester: streamed,
// or inside the run's result.
type Route struct {
	mu     sync.Mutex
	chosen Way
}

// Way is how a run's log reaches its requester.
type Way int

const (
	// Streamed: over the logs protocol while the job runs.
	Streamed Way = iota + 1
	// InResult: inside the run's signed result.
	InResult
)

// Take chooses way unless the other was chosen first, and reports whether
// way is the route.
func (r *Route) Take(way Way) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.chosen == 0 {
		r.chosen = way
	}
	return r.chosen == way
}
