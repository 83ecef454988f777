package runner

import (
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// Usage is the usage so far of the run of job's attempt, metered as its
// outcome will be (wall time, and GPU time for the lease's GPUs, one unit
// for a job without), paused spans left out: what a long lease's interim
// bills charge (market's interim.go). ok is false for a run that has not
// started its job (staging) and one the runner does not have.
func (r *Runner) Usage(job protocol.JobID, attempt uint32) (u *pb.Usage, ok bool) {
	a, err := r.lookup(job, attempt)
	if err != nil {
		return nil, false
	}
	d, ok := a.ctl.Ran()
	if !ok {
		return nil, false
	}
	ms := d.Milliseconds()
	return &pb.Usage{WallMs: ms, GpuMs: a.gpus * ms}, true
}
