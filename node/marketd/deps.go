package marketd

import (
	"context"
	"log/slog"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node/clock"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// Config is what the driver is told: the network it trades on, the
// engine's settings and a provider's job slots.
type Config struct {
	Network string
	// Engine configures the engine. Its CheckGrant is the driver's (the
	// ledger's check, with the refusal counted), whatever is set here.
	Engine market.Config
	// Slots are a provider's job slots: what it announces free is Slots
	// less its active leases.
	Slots int
}

// Deps are what the driver works with.
type Deps struct {
	Host   host.Host
	PubSub *pubsub.PubSub
	// Key signs the node's market messages.
	Key      crypto.PrivKey
	Jobs     JobStore
	Ledger   Ledger
	Runner   Runner // nil on a node that is no provider
	Results  Results
	Readers  ResultReaders // nil on a node that is no provider
	Limits   Limits
	Capacity Capacity
	Clock    clock.Clock // nil: the system clock
	Log      *slog.Logger
	Metrics  prometheus.Registerer
}

// JobStore is where the market keeps its job records (the node's
// database): one write per Ready, read back on start.
type JobStore interface {
	PutJobs(records map[string][]byte) error
	Jobs(fn func(id string, record []byte) error) error
	// PutBills stores a provider's open bills' records by key and drops
	// those of drop; Bills reads them back on start.
	PutBills(records map[string][]byte, drop []string) error
	Bills(fn func(key string, record []byte) error) error
}

// Ledger is what the market asks of the node's ledger. The writes it
// queues go in the order queued, each after the earlier ones about the
// same job are on disk; none blocks the caller.
type Ledger interface {
	// HoldPosted queues the hold of a posted job's maximum cost, written
	// once the job is persisted (nothing if the node lacks the credits
	// then: its award holds the winning price instead).
	HoldPosted(job protocol.JobID, spec *pb.JobSpec)
	// WriteHolds queues the holds that back awards (market.PlanHold);
	// done gets each award's hold entry or the error that keeps it from
	// being sent, on the writer's goroutine.
	WriteHolds(reqs []market.HoldRequest, done func(holds [][]byte, errs []error))
	// SignGrant signs an award's grant of the lease its hold backs.
	SignGrant(req market.HoldRequest) ([]byte, error)
	// ChainBefore is the requester's entries after seq after and before
	// the hold, for the award to carry (nil: none, or too many).
	ChainBefore(hold []byte, after uint64) [][]byte
	// CheckGrant checks an award's grant to this provider.
	CheckGrant(requester peer.ID, job protocol.JobID, a *pb.Award) error
	// ReleaseUnawarded queues the release of the posting holds (naming
	// no provider) of the ended ones among jobs: a job that ended without
	// an award. Holds naming a provider are that provider's to claim or
	// waive; the requester releases them only after they expire (the
	// ledger's sweep).
	ReleaseUnawarded(jobs []*market.Job)
	// SignAcceptance signs the requester's acceptance of a bill
	// (ledger.Acceptance), which the provider's claim quotes.
	SignAcceptance(r market.AcceptanceRequest) ([]byte, error)
	// CheckHold makes sure the requester escrowed a lease, in a hold
	// naming this provider that lasts long enough (Lease.MinHoldExpiry),
	// before it runs, and claims the lease; it returns the hold's seq and
	// expiry, which the bill names.
	CheckHold(ctx context.Context, l *market.Lease) (seq uint64, expiry time.Time, err error)
	// RecordLease queues the provider's record of a lease it took.
	RecordLease(l *market.Lease)
	// RecordReceipt queues the provider's receipt entry of a bill it
	// sent.
	RecordReceipt(b *pb.Bill)
	// WriteClaim queues the provider's claim entry of an accepted bill;
	// done gets the refusal, if any, on the writer's goroutine.
	WriteClaim(c market.ClaimRequest, done func(error))
	// WriteWaive gives an award's hold back: it ingests the hold (and its
	// chain) and writes a waive entry, and returns it once written (nil
	// and the error if the hold is not one this provider can waive).
	WriteWaive(ctx context.Context, w market.WaiveRequest) ([]byte, error)
	// WriteMajorityClaim queues the provider's majority claim of a
	// replica's hold, and WriteMajorityRelease the requester's release
	// of the hold of a replica a majority contradicts; done gets
	// market.ErrNoMajorityYet while the ledger does not decide yet (the
	// engine asks again), or another refusal, on the writer's goroutine.
	WriteMajorityClaim(c market.MajorityClaimRequest, done func(error))
	WriteMajorityRelease(r market.MajorityReleaseRequest, done func(error))
	// IngestWaive takes a provider's waive entry that came with its
	// decline into this requester's ledger, so the hold it closes is
	// free before the job's next award.
	IngestWaive(raw []byte) error
	// RequesterHead is the sequence number of the head of a requester's
	// chain that this node holds.
	RequesterHead(requester peer.ID) (uint64, error)
}

// Runner runs a lease's job on its executor (a provider's), and meters,
// pauses and resumes it while it runs (a long lease paid as it goes).
type Runner interface {
	Run(ctx context.Context, l *market.Lease) market.Outcome
	// Usage is the run's usage so far, paused spans left out; ok is
	// false before its job started.
	Usage(job protocol.JobID, attempt uint32) (u *pb.Usage, ok bool)
	Pause(job protocol.JobID, attempt uint32) error
	Resume(job protocol.JobID, attempt uint32) error
}

// Results stores or fetches a finished job's result, off the loop.
type Results interface {
	Collect(j *market.Job)
}

// ResultReaders records who may fetch the results a provider stored
// (the blob store's readers): the driver opens a result's blobs to its
// requester once the engine delivers it (market.Delivery), after the
// claim that pays for it is written.
type ResultReaders interface {
	AllowReader(id string, reader peer.ID) error
}

// Limits are the per-peer rates of market messages: the driver drops
// what a peer sends past them before checking a signature.
type Limits interface {
	AllowMarket(p peer.ID) bool
	AllowGossip(p peer.ID, n int) bool
}

// Capacity is the node's view of providers: the candidates for an
// interactive job, and the free slots it announces as one.
type Capacity interface {
	Candidates(ctx context.Context, r market.Requirements) ([]*protocol.Capacity, error)
	SetFreeSlots(free int)
}
