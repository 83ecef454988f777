package node

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/node/blob"
	"github.com/mira-market/mira/protocol"
)

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
	return n.market != nil && n.market.LeaseNeeds(n.runCtx, p, id.String())
}

// JobResult opens a finished job's result blob, fetching it from the
// provider if this node does not hold it yet.
func (n *Node) JobResult(ctx context.Context, id protocol.JobID) (io.ReadCloser, api.BlobInfo, error) {
	j, err := n.endedJob(ctx, id)
	if err != nil {
		return nil, api.BlobInfo{}, err
	}
	return n.results.OpenResult(ctx, j)
}

// JobOutputs opens the tar archive of the files a finished job left in
// its out/ directory, fetching it from the provider if this node does not
// hold it yet.
func (n *Node) JobOutputs(ctx context.Context, id protocol.JobID) (io.ReadCloser, api.BlobInfo, error) {
	j, err := n.endedJob(ctx, id)
	if err != nil {
		return nil, api.BlobInfo{}, err
	}
	return n.results.OpenOutputs(ctx, j)
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

// JobLogs sends the log of a job's current run to w; with follow, as it
// grows, until the run's log is complete or the job has ended.
func (n *Node) JobLogs(ctx context.Context, id protocol.JobID, follow bool, w func([]byte) error) error {
	return n.logs.Read(ctx, n, id, follow, w)
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
