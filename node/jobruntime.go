package node

import (
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/node/runner"
)

// runnerConfig is what the provider's job runtime is built from.
func (n *Node) runnerConfig() runner.Config {
	p := n.cfg.Provider
	return runner.Config{
		DataDir: n.cfg.DataDir, Executors: p.Executors,
		DockerNetwork: p.DockerNetwork, DockerUser: p.DockerUser, DockerImages: p.DockerImages,
		WasmCacheDir: p.WasmCacheDir, Owner: n.host.ID().String(), Limits: n.jobLimits, GPUs: n.capacity.GPUs(),
		Blobs: n.blobs, Results: resultReaders{n}, Logs: n.logs, LogStreams: n.logStreams,
		MaxBlobSize: n.cfg.MaxBlobSize, Log: n.log,
	}
}

// providerLimits derives the node's job limits and logs what does not fit.
func (n *Node) providerLimits() runner.Limits {
	p := n.cfg.Provider
	return runner.ProviderLimits(runner.LimitsConfig{
		Slots: p.Slots, DiskMiB: p.DiskMiB, MaxMemoryMiB: p.MaxMemoryMiB, MaxCPUMillis: p.MaxCPUMillis,
	}, n.cfg.DataDir, n.log)
}

// resultReaders keeps, in the node's database, who may fetch the results
// and outputs the provider stored: each job's requester.
type resultReaders struct{ n *Node }

func (r resultReaders) AllowReader(id string, reader peer.ID) error {
	return r.n.db.PutResultReader(id, []byte(reader))
}

func (r resultReaders) MayRead(id cid.Cid, reader peer.ID) bool { return r.n.mayReadResult(id, reader) }
