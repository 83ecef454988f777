package node

import (
	"github.com/mira-market/mira/node/runner"
)

// runnerConfig is what the provider's job runtime is built from.
func (n *Node) runnerConfig() runner.Config {
	p := n.cfg.Provider
	return runner.Config{
		DataDir: n.cfg.DataDir, Executors: p.Executors,
		DockerNetwork: p.DockerNetwork, DockerUser: p.DockerUser, DockerImages: p.DockerImages,
		WasmCacheDir: p.WasmCacheDir, Owner: n.host.ID().String(), Limits: n.jobLimits, GPUs: n.capacity.GPUs(),
		Blobs: n.blobs.Transfer(), Results: n.blobs, Logs: n.logs, LogStreams: n.logStreams,
		MaxBlobSize: n.cfg.MaxBlobSize, Log: n.log, Clock: n.clock, PauseGrace: n.cfg.Market.pauseGrace(),
	}
}

// providerLimits derives the node's job limits and logs what does not fit.
func (n *Node) providerLimits() runner.Limits {
	p := n.cfg.Provider
	return runner.ProviderLimits(runner.LimitsConfig{
		Slots: p.Slots, DiskMiB: p.DiskMiB, MaxMemoryMiB: p.MaxMemoryMiB, MaxCPUMillis: p.MaxCPUMillis,
	}, n.cfg.DataDir, n.log)
}
