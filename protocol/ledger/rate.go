package ledger

import "time"

// RateLimit is a per-account limit on entries, in the entries' own times,
// as a generic cell rate algorithm (a token bucket): an account may write
// burst entries at once, then one per interval nanoseconds of entry time.
// Every node computes it alike from the chain alone, so it is a rule like
// the others: an entry over it is refused everywhere, for good.
type RateLimit struct {
	interval uint64 // nanoseconds of entry time per entry
	slack    uint64 // (burst − 1) × interval
}

// NewRateLimit is the limit of burst entries at once, then perSecond a
// second (both ≥ 1).
func NewRateLimit(burst, perSecond uint64) RateLimit {
	iv := uint64(time.Second) / perSecond
	return RateLimit{interval: iv, slack: (burst - 1) * iv}
}

// Admit returns the account's new paced time if an entry dated t (Unix
// nanoseconds) is within the limit given the old one.
func (r RateLimit) Admit(paced uint64, t int64) (uint64, bool) {
	now := uint64(max(t, 0))
	paced = max(paced, now) // a bucket refilled past full stays full
	if paced-now > r.slack {
		return 0, false
	}
	return paced + r.interval, true
}

// Charge returns the account's new paced time after an entry dated t
// (Unix nanoseconds), admitted or not: an entry stored under an older
// format is history, and paces the ones after it as if admitted.
func (r RateLimit) Charge(paced uint64, t int64) uint64 {
	return max(paced, uint64(max(t, 0))) + r.interval
}
