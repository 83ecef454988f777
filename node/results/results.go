// Package results is the requester's side of its jobs' results: it keeps
// a finished job's result and outputs in the node's blob store (from the
// signed result when the result came inline, else fetched from the
// provider), and opens them for the API.
package results

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/node/blob"
	"github.com/mira-market/mira/protocol"
)

// collectTimeout bounds the fetches of one job's result and outputs.
const collectTimeout = 10 * time.Minute

// Collector keeps and opens the results of the node's own jobs.
type Collector struct {
	ctx   context.Context // the node's lifetime
	blobs *blob.Service
	log   *slog.Logger
	wg    sync.WaitGroup

	mu         sync.Mutex
	collecting map[protocol.JobID]bool // finished jobs whose results are being kept
}

// New returns a Collector that keeps results in blobs; ctx is its
// lifetime, and Close waits for the collections it started.
func New(ctx context.Context, blobs *blob.Service, log *slog.Logger) *Collector {
	return &Collector{ctx: ctx, blobs: blobs, log: log, collecting: map[protocol.JobID]bool{}}
}

// Close waits for the collections under way, which end with the
// Collector's context.
func (c *Collector) Close() { c.wg.Wait() }

// Inline returns a job's result when it came inline in the signed
// result: the job record holds it, and nothing is fetched from the
// provider (which keeps no copy). The bytes are checked against the
// content ID the receipt names.
func Inline(j *market.Job) ([]byte, bool) {
	if j.ResultID == "" || j.ResultSize > protocol.MaxResultOutput || uint64(len(j.Output)) != j.ResultSize {
		return nil, false
	}
	return j.Output, protocol.IsBlob(j.Output, j.ResultID)
}

// blobOfJob is a blob of a finished job to keep.
type blobOfJob struct {
	id       cid.Cid
	inline   []byte
	isInline bool
}

// Collect keeps a finished job's result and outputs in the blob store,
// in the background, so they can be read as blobs (`GET /v1/blobs/{id}`,
// or inputs of a later job) even once the provider is gone: an inline
// result is stored from the job record; the rest is fetched from the
// provider. A job not ended, or being collected, is left alone.
func (c *Collector) Collect(j *market.Job) {
	if !j.State.Terminal() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.collecting[j.ID] {
		return
	}
	keep := c.toKeep(j)
	if len(keep) == 0 {
		return
	}
	// Storing (a synced write) or fetching happens off the caller (the
	// market loop).
	c.collecting[j.ID] = true
	job, provider := j.ID, j.Provider
	c.wg.Go(func() {
		c.keep(job, provider, keep)
		c.mu.Lock()
		delete(c.collecting, job)
		c.mu.Unlock()
	})
}

// toKeep is what of a job to keep: the result (inline, or from the
// provider) and the outputs (from the provider), unless already here.
func (c *Collector) toKeep(j *market.Job) []blobOfJob {
	var keep []blobOfJob
	// A blob here already (the node cached it as a provider, say) is kept
	// too, as this node's own: the collector must not evict a result.
	ownHere := func(id cid.Cid) bool {
		k, ok := c.blobs.Store().KindOf(id)
		return ok && k&blob.Own != 0
	}
	if id, _, err := protocol.ParseBlobID(j.ResultID); err == nil && !ownHere(id) {
		out, ok := Inline(j)
		keep = append(keep, blobOfJob{id: id, inline: out, isInline: ok})
	}
	if id, _, err := protocol.ParseBlobID(j.OutputsID); err == nil && !ownHere(id) {
		keep = append(keep, blobOfJob{id: id})
	}
	return keep
}

func (c *Collector) keep(job protocol.JobID, provider peer.ID, keep []blobOfJob) {
	ctx, cancel := context.WithTimeout(c.ctx, collectTimeout)
	defer cancel()
	for _, b := range keep {
		if b.isInline {
			if _, err := c.blobs.Store().PutBytes(b.inline, blob.Own); err != nil {
				c.log.Warn("store inline result", "job", job, "err", err)
			}
		} else if _, err := c.blobs.Fetch(ctx, b.id, blob.Own, provider); err != nil {
			c.log.Warn("fetch a job's blob", "job", job, "blob", b.id, "provider", provider, "err", err)
		}
	}
}

// OpenResult opens a finished job's result blob, fetching it from the
// provider if this node does not hold it yet.
func (c *Collector) OpenResult(ctx context.Context, j market.Job) (io.ReadCloser, api.BlobInfo, error) {
	if j.ResultID == "" {
		return nil, api.BlobInfo{}, fmt.Errorf("%w: job %s ended %s without a result", api.ErrNotFound, j.ID, j.State)
	}
	if out, ok := Inline(&j); ok {
		id, _, err := protocol.ParseBlobID(j.ResultID)
		if err != nil {
			return nil, api.BlobInfo{}, err
		}
		return io.NopCloser(bytes.NewReader(out)), api.BlobInfo{ID: id.String(), Size: int64(len(out))}, nil
	}
	return c.open(ctx, j.ResultID, j.Provider)
}

// OpenOutputs opens the tar archive of the files a finished job left in
// its out/ directory, fetching it from the provider if this node does
// not hold it yet.
func (c *Collector) OpenOutputs(ctx context.Context, j market.Job) (io.ReadCloser, api.BlobInfo, error) {
	if j.OutputsID == "" {
		return nil, api.BlobInfo{}, fmt.Errorf("%w: job %s ended %s without outputs", api.ErrNotFound, j.ID, j.State)
	}
	return c.open(ctx, j.OutputsID, j.Provider)
}

// open opens a blob a job's provider produced, fetched from it (and
// checked against the ID its receipt names) unless already here.
func (c *Collector) open(ctx context.Context, id string, provider peer.ID) (io.ReadCloser, api.BlobInfo, error) {
	b, _, err := protocol.ParseBlobID(id)
	if err != nil {
		return nil, api.BlobInfo{}, err
	}
	// Not evicted between the fetch and the open.
	defer c.blobs.Store().Use(b)()
	if _, err := c.blobs.Fetch(ctx, b, blob.Own, provider); err != nil {
		return nil, api.BlobInfo{}, fmt.Errorf("%w: %s: %w", api.ErrUnavailable, b, err)
	}
	f, size, err := c.blobs.Store().Open(b)
	if err != nil {
		return nil, api.BlobInfo{}, err
	}
	return f, api.BlobInfo{ID: b.String(), Size: size}, nil
}
