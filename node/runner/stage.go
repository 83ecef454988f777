package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/market"
	"github.com/mira-market/mira/node/blob"
	"github.com/mira-market/mira/node/executor"
	"github.com/mira-market/mira/protocol"
)

// stage fetches what the job needs from its requester: the wasm module (a
// content ID, or the name of a sample module this binary ships) and the
// inputs, which land in the scratch dir under inputs/. A blob the
// provider holds already serves only a requester that delivered it (see
// stageBlob); the copies in the scratch dir go with it after the run,
// and the blobs stay as evictable cache.
func (r *Runner) stage(ctx context.Context, l *market.Lease, job *executor.Job) error {
	if l.Spec.Executor == "wasm" {
		mod, err := r.module(ctx, l)
		if err != nil {
			return fmt.Errorf("module: %w", err)
		}
		if c, ok := r.executors[l.Spec.Executor].(compiler); ok {
			if err := c.Compile(ctx, mod); err != nil {
				return fmt.Errorf("module: %w", err)
			}
		}
		job.Module = mod
	}
	if len(l.Spec.Inputs) == 0 {
		return nil
	}
	dir := filepath.Join(job.Dir, "inputs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return r.providerFault(l, "inputs", err)
	}
	for _, in := range l.Spec.Inputs {
		id, _, err := protocol.ParseBlobID(in)
		if err != nil {
			return fmt.Errorf("input: %w", err)
		}
		release, err := r.stageBlob(ctx, id, l.Requester)
		if err != nil {
			return fmt.Errorf("input %s: %w", id, err)
		}
		// A copy, not a link: the job may write to its inputs.
		err = r.copyBlob(id, filepath.Join(dir, id.String()))
		release()
		if err != nil {
			return r.providerFault(l, "input "+id.String(), err)
		}
	}
	return nil
}

func (r *Runner) module(ctx context.Context, l *market.Lease) ([]byte, error) {
	id, _, err := protocol.ParseBlobID(l.Spec.Module)
	if err != nil {
		return executor.SampleModule(l.Spec.Module)
	}
	release, err := r.stageBlob(ctx, id, l.Requester)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", id, err)
	}
	defer release()
	mod, err := r.cfg.Blobs.Store().ReadAll(id)
	if err != nil {
		return nil, r.providerFault(l, id.String(), err)
	}
	return mod, nil
}

func (r *Runner) copyBlob(id cid.Cid, dst string) error {
	src, _, err := r.cfg.Blobs.Store().Open(id)
	if err != nil {
		return err
	}
	defer src.Close()
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, src.File)
	return errors.Join(err, f.Close())
}

// stageBlob makes blob id ready for a run of requester's job and keeps it
// from the collector until release. The provider's copy serves only a
// requester entitled to it: one that delivered its bytes (now, or for an
// earlier job), or the requester of the job whose result it is. Anyone
// else must send the bytes, checked against id: a content ID is public
// (gossiped offers and the ledger's receipts name them), so naming one
// proves nothing.
func (r *Runner) stageBlob(ctx context.Context, id cid.Cid, requester peer.ID) (release func(), err error) {
	store := r.cfg.Blobs.Store()
	release = store.Use(id)
	// The common case first: the requester's own cached module or input
	// (a look-up in memory; the result readers are in the database).
	if store.HeldBy(id, requester) || store.Has(id) && r.cfg.Results.MayRead(id, requester) {
		store.Mark(id, 0, "") // used now
		return release, nil
	}
	if err := r.cfg.Blobs.FetchFor(ctx, id, requester); err != nil {
		release()
		return nil, r.stagingError(id, requester, err)
	}
	return release, nil
}

// stagingError says why a requester's blob could not be staged, in words
// for the requester (the job's error), which name nothing of the
// provider's: what is not one of the known causes is a fixed text, its
// details logged.
func (r *Runner) stagingError(id cid.Cid, requester peer.ID, err error) error {
	switch {
	case errors.Is(err, blob.ErrNotFound):
		return errors.New("requester does not hold it")
	case errors.Is(err, blob.ErrMismatch):
		return errors.New("the requester sent bytes that do not match its content ID")
	case errors.Is(err, blob.ErrFull):
		return errors.New("the provider's blob store is full")
	case errors.Is(err, blob.ErrTooLarge):
		return fmt.Errorf("over the provider's limit of %d bytes", r.cfg.MaxBlobSize)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return errors.New("cancelled while fetching it from the requester")
	}
	r.log.Warn("stage a job's blob", "blob", id, "requester", requester, "err", err)
	return errors.New("the provider could not fetch it from the requester (details in its log)")
}
