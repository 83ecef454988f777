package node

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/node/blobd"
	"github.com/mira-market/mira/protocol"
)

// blobsConfig is what the node's blob store is built from.
func (n *Node) blobsConfig() blobd.Config {
	return blobd.Config{
		Dir: filepath.Join(n.cfg.DataDir, blobsDir), MaxSize: n.cfg.MaxBlobSize, Budget: n.cfg.BlobCacheMiB << 20,
		HeldFor: time.Duration(n.cfg.BlobResultRetention), DB: n.db, WithDB: n.withDB,
		Host: n.host, Network: n.cfg.Network, Allow: n.blobAllowed,
		Wrap:    func(h network.StreamHandler) network.StreamHandler { return n.limits.limitStreams("blob", h) },
		Metrics: n.metrics, Clock: n.clock, Log: n.log,
	}
}

// blobAllowed decides who may fetch a blob from this node: a job's
// requester its result, from the provider that produced it (recorded in
// the database, so also after a restart); a lease holder the module and
// inputs of the job it holds, from the job's requester.
// Nothing else is shared: a content ID alone (the ledger's receipts name
// results) is not a right to the content.
func (n *Node) blobAllowed(p peer.ID, id cid.Cid) bool {
	if n.blobs.MayRead(id, p) {
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
	return n.blobs.Put(r)
}

// OpenBlob opens a stored blob.
func (n *Node) OpenBlob(id string) (io.ReadCloser, api.BlobInfo, error) { return n.blobs.Open(id) }

// DeleteBlob is the operator's removal of a blob (see blobd.Service.Delete).
func (n *Node) DeleteBlob(id string) (api.BlobDeleted, error) { return n.blobs.Delete(id) }

// BlobStats returns what the blob store holds and what it has done.
func (n *Node) BlobStats() blobd.Stats { return n.blobs.Stats() }

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
