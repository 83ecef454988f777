package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/node/blob"
	"github.com/mira-market/mira/protocol"
)

// logLinger is how long a follower of a finished job's log waits for the
// provider's last bytes before it stops.
const logLinger = 2 * time.Second

// inlineResult returns a job's result when it came inline in the signed
// result: the job record holds it, and nothing is fetched from the
// provider (which keeps no copy). The bytes are checked against the
// content ID the receipt names.
func inlineResult(j *market.Job) ([]byte, bool) {
	if j.ResultID == "" || j.ResultSize > protocol.MaxResultOutput || uint64(len(j.Output)) != j.ResultSize {
		return nil, false
	}
	return j.Output, protocol.IsBlob(j.Output, j.ResultID)
}

// collectResult keeps a finished job's result and outputs in the blob
// store, in the background, so they can be read as blobs (`GET
// /v1/blobs/{id}`, or inputs of a later job) even once the provider is
// gone: an inline result is stored from the job record; the rest is
// fetched from the provider.
func (d *marketDriver) collectResult(j *market.Job) {
	if !j.State.Terminal() || d.collecting[j.ID] {
		return
	}
	// What to keep: the result (inline, or from the provider) and the
	// outputs (from the provider), unless already here.
	type blobOfJob struct {
		id       cid.Cid
		inline   []byte
		isInline bool
	}
	var keep []blobOfJob
	// A blob here already (the node cached it as a provider, say) is kept
	// too, as this node's own: the collector must not evict a result.
	ownHere := func(id cid.Cid) bool {
		k, ok := d.n.blobs.Store().KindOf(id)
		return ok && k&blob.Own != 0
	}
	if id, _, err := protocol.ParseBlobID(j.ResultID); err == nil && !ownHere(id) {
		out, ok := inlineResult(j)
		keep = append(keep, blobOfJob{id: id, inline: out, isInline: ok})
	}
	if id, _, err := protocol.ParseBlobID(j.OutputsID); err == nil && !ownHere(id) {
		keep = append(keep, blobOfJob{id: id})
	}
	if len(keep) == 0 {
		return
	}
	// Storing (a synced write) or fetching happens off the market loop.
	d.collecting[j.ID] = true
	job, provider := j.ID, j.Provider
	d.n.wg.Add(1)
	go func() {
		defer d.n.wg.Done()
		ctx, cancel := context.WithTimeout(d.n.runCtx, 10*time.Minute)
		defer cancel()
		for _, b := range keep {
			if b.isInline {
				if _, err := d.n.blobs.Store().PutBytes(b.inline, blob.Own); err != nil {
					d.n.log.Warn("store inline result", "job", job, "err", err)
				}
			} else if _, err := d.n.blobs.Fetch(ctx, b.id, blob.Own, provider); err != nil {
				d.n.log.Warn("fetch a job's blob", "job", job, "blob", b.id, "provider", provider, "err", err)
			}
		}
		d.do(d.n.runCtx, func() { delete(d.collecting, job) })
	}()
}

// blobAllowed decides who may fetch a blob from this node: a job's
// requester its result, from the provider that produced it (recorded in
// the database, so also after a restart); a lease holder the module and
// inputs of the job it holds, from the job's requester.
// Nothing else is shared: a content ID alone (the ledger's receipts name
// results) is not a right to the content.
func (n *Node) blobAllowed(p peer.ID, id cid.Cid) bool {
	if n.mayReadResult(id, p) {
		return true
	}
	allowed := false
	if n.market == nil {
		return false
	}
	n.market.do(n.runCtx, func() {
		for _, j := range n.market.eng.Jobs() {
			if j.Provider != p || j.State.Terminal() {
				continue
			}
			spec := j.Spec()
			if spec.GetModule() == id.String() || slices.Contains(spec.GetInputs(), id.String()) {
				allowed = true
				return
			}
		}
	})
	return allowed
}

// JobResult opens a finished job's result blob, fetching it from the
// provider if this node does not hold it yet.
func (n *Node) JobResult(ctx context.Context, id protocol.JobID) (io.ReadCloser, api.BlobInfo, error) {
	j, err := n.endedJob(ctx, id)
	if err != nil {
		return nil, api.BlobInfo{}, err
	}
	if j.ResultID == "" {
		return nil, api.BlobInfo{}, fmt.Errorf("%w: job %s ended %s without a result", api.ErrNotFound, id, j.State)
	}
	if out, ok := inlineResult(&j); ok {
		c, _, err := protocol.ParseBlobID(j.ResultID)
		if err != nil {
			return nil, api.BlobInfo{}, err
		}
		return io.NopCloser(bytes.NewReader(out)), api.BlobInfo{ID: c.String(), Size: int64(len(out))}, nil
	}
	return n.openJobBlob(ctx, j.ResultID, j.Provider)
}

// JobOutputs opens the tar archive of the files a finished job left in
// its out/ directory, fetching it from the provider if this node does not
// hold it yet.
func (n *Node) JobOutputs(ctx context.Context, id protocol.JobID) (io.ReadCloser, api.BlobInfo, error) {
	j, err := n.endedJob(ctx, id)
	if err != nil {
		return nil, api.BlobInfo{}, err
	}
	if j.OutputsID == "" {
		return nil, api.BlobInfo{}, fmt.Errorf("%w: job %s ended %s without outputs", api.ErrNotFound, id, j.State)
	}
	return n.openJobBlob(ctx, j.OutputsID, j.Provider)
}

// endedJob returns a job that has ended; one still on its way is
// api.ErrNotReady.
func (n *Node) endedJob(ctx context.Context, id protocol.JobID) (market.Job, error) {
	j, err := n.Job(ctx, id)
	if err == nil && !j.State.Terminal() {
		err = fmt.Errorf("%w: job is %s", api.ErrNotReady, j.State)
	}
	return j, err
}

// openJobBlob opens a blob a job's provider produced, fetched from it
// (and checked against the ID its receipt names) unless already here.
func (n *Node) openJobBlob(ctx context.Context, id string, provider peer.ID) (io.ReadCloser, api.BlobInfo, error) {
	c, _, err := protocol.ParseBlobID(id)
	if err != nil {
		return nil, api.BlobInfo{}, err
	}
	// Not evicted between the fetch and the open.
	defer n.blobs.Store().Use(c)()
	if _, err := n.blobs.Fetch(ctx, c, blob.Own, provider); err != nil {
		return nil, api.BlobInfo{}, fmt.Errorf("%w: %s: %w", api.ErrUnavailable, c, err)
	}
	f, size, err := n.blobs.Store().Open(c)
	if err != nil {
		return nil, api.BlobInfo{}, err
	}
	return f, api.BlobInfo{ID: c.String(), Size: size}, nil
}

// JobLogs sends the log of a job's current run to w; with follow, as it
// grows, until the run's log is complete or the job has ended. A short
// run's log comes in its result instead of a stream: it is sent when the
// job ends.
func (n *Node) JobLogs(ctx context.Context, id protocol.JobID, follow bool, w func([]byte) error) error {
	j, err := n.Job(ctx, id)
	if err != nil {
		return err
	}
	if j.Attempt == 0 {
		return nil // never awarded: no run, no log
	}
	if len(j.Log) > 0 {
		return w(j.Log)
	}
	l, err := n.logs.get(id, j.Attempt)
	if err != nil {
		return err
	}
	if !follow {
		_, err := l.follow(ctx, 0, false, w)
		return err
	}
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if states, err := n.WatchJob(fctx, id); err == nil {
		go func() {
			defer cancel()
			for {
				select {
				case s, ok := <-states:
					if ok {
						if s.State.Terminal() && len(s.Log) > 0 {
							return // the log came in the result
						}
						continue
					}
					// The job ended: give the provider's last bytes a moment.
					select {
					case <-time.After(logLinger):
					case <-fctx.Done():
					}
					return
				case <-fctx.Done():
					return
				}
			}
		}()
	}
	_, err = l.follow(fctx, 0, true, w)
	if end, jerr := n.Job(ctx, id); jerr == nil && len(end.Log) > 0 && end.Attempt == j.Attempt {
		// The run's log came in its result: no stream will fill or end
		// the one waited on, so it leaves the book.
		l.finish()
		return w(end.Log)
	}
	if errors.Is(err, context.Canceled) && ctx.Err() == nil {
		return nil
	}
	return err
}

// PutBlob stores an uploaded blob: the operator's, pinned until deleted.
func (n *Node) PutBlob(r io.Reader) (api.BlobInfo, error) {
	if err := n.diskLow(); err != nil {
		return api.BlobInfo{}, err
	}
	c, size, err := n.blobs.Store().Put(r, blob.Operator)
	if errors.Is(err, blob.ErrTooLarge) {
		return api.BlobInfo{}, fmt.Errorf("%w: %w", api.ErrTooLarge, err)
	}
	if errors.Is(err, blob.ErrFull) {
		return api.BlobInfo{}, fmt.Errorf("%w: %w (blob_cache_mib)", api.ErrInsufficientStorage, err)
	}
	if err != nil {
		return api.BlobInfo{}, err
	}
	return api.BlobInfo{ID: c.String(), Size: size}, nil
}

// OpenBlob opens a stored blob.
func (n *Node) OpenBlob(id string) (io.ReadCloser, api.BlobInfo, error) {
	c, _, err := protocol.ParseBlobID(id)
	if err != nil {
		return nil, api.BlobInfo{}, fmt.Errorf("%w: %w", api.ErrNotFound, err)
	}
	f, size, err := n.blobs.Store().Open(c)
	if errors.Is(err, blob.ErrNotFound) {
		return nil, api.BlobInfo{}, fmt.Errorf("%w: %w", api.ErrNotFound, err)
	}
	if err != nil {
		return nil, api.BlobInfo{}, err
	}
	return f, api.BlobInfo{ID: c.String(), Size: size}, nil
}

// JobLogs answers GET /v1/jobs/{id}/logs.
func (b apiBackend) JobLogs(ctx context.Context, id string, follow bool, w func([]byte) error) error {
	jid, err := b.jobID(ctx, id)
	if err != nil {
		return err
	}
	return notFound(b.Node.JobLogs(ctx, jid, follow, w))
}

// JobResult answers GET /v1/jobs/{id}/result.
func (b apiBackend) JobResult(ctx context.Context, id string) (io.ReadCloser, api.BlobInfo, error) {
	jid, err := b.jobID(ctx, id)
	if err != nil {
		return nil, api.BlobInfo{}, err
	}
	rc, info, err := b.Node.JobResult(ctx, jid)
	return rc, info, notFound(err)
}

// JobOutputs answers GET /v1/jobs/{id}/outputs.
func (b apiBackend) JobOutputs(ctx context.Context, id string) (io.ReadCloser, api.BlobInfo, error) {
	jid, err := b.jobID(ctx, id)
	if err != nil {
		return nil, api.BlobInfo{}, err
	}
	rc, info, err := b.Node.JobOutputs(ctx, jid)
	return rc, info, notFound(err)
}

// PutBlob answers POST /v1/blobs.
func (b apiBackend) PutBlob(_ context.Context, r io.Reader) (api.BlobInfo, error) {
	return b.Node.PutBlob(r)
}

// DeleteBlob answers DELETE /v1/blobs/{id}.
func (b apiBackend) DeleteBlob(_ context.Context, id string) (api.BlobDeleted, error) {
	return b.Node.DeleteBlob(id)
}

// OpenBlob answers GET /v1/blobs/{id}.
func (b apiBackend) OpenBlob(_ context.Context, id string) (io.ReadCloser, api.BlobInfo, error) {
	return b.Node.OpenBlob(id)
}
