package runner

import (
	"fmt"
	"log/slog"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/mira-market/mira/node/executor"
)

// Limits are what one job may use on this provider, whatever it asks:
// the market declines a job that asks more, the executors enforce them.
type Limits struct {
	MemoryMiB uint32 // most memory a job may ask for
	CPUMillis uint32 // most CPU a job may ask for; a container asking none gets it
	DiskBytes int64  // scratch-disk quota: what a job may write beyond its inputs
}

// LimitsConfig is what the provider's config says of job limits (its
// provider section's keys of the same names).
type LimitsConfig struct {
	Slots        int
	DiskMiB      uint32
	MaxMemoryMiB uint32 // 0: the host's memory divided by slots
	MaxCPUMillis uint32 // 0: the host's cores divided by slots
}

// hostInfo is what limits are derived from and checked against.
type hostInfo struct {
	memory   executor.HostMemory // zero when unknown
	cpus     int
	diskFree uint64 // bytes free in the data dir's filesystem; 0 when unknown
}

// deriveLimits computes a provider's job limits from its config: a limit
// the config leaves at zero is the host's memory or cores divided by
// slots. It returns what the operator should hear about: configured
// limits that slots jobs at once would take past what the host has.
func deriveLimits(p LimitsConfig, h hostInfo) (Limits, []string) {
	slots := uint64(max(p.Slots, 1))
	l := Limits{MemoryMiB: p.MaxMemoryMiB, CPUMillis: p.MaxCPUMillis, DiskBytes: int64(p.DiskMiB) << 20}
	var warnings []string
	hostMiB := h.memory.Total >> 20
	switch {
	case l.MemoryMiB == 0 && hostMiB == 0:
		l.MemoryMiB = 1024
		warnings = append(warnings, "host memory unknown: max_memory_mib defaults to 1024")
	case l.MemoryMiB == 0:
		l.MemoryMiB = uint32(min(max(hostMiB/slots, 1), 1<<31))
	case hostMiB > 0 && uint64(l.MemoryMiB)*slots > hostMiB:
		warnings = append(warnings, fmt.Sprintf("max_memory_mib %d × %d slots is more than the host's %d MiB", l.MemoryMiB, slots, hostMiB))
	}
	cores := uint64(max(h.cpus, 1)) * 1000
	switch {
	case l.CPUMillis == 0:
		// Docker's smallest quota is a hundredth of a CPU.
		l.CPUMillis = uint32(max(cores/slots, 10))
	case uint64(l.CPUMillis) > cores:
		warnings = append(warnings, fmt.Sprintf("max_cpu_millis %d is more than the host's %d cores: lowered to %d", l.CPUMillis, cores/1000, cores))
		l.CPUMillis = uint32(cores)
	case uint64(l.CPUMillis)*slots > cores:
		warnings = append(warnings, fmt.Sprintf("max_cpu_millis %d × %d slots is more than the host's %d cores", l.CPUMillis, slots, cores/1000))
	}
	if h.diskFree > 0 && uint64(l.DiskBytes)*slots > h.diskFree {
		warnings = append(warnings, fmt.Sprintf("disk_mib %d × %d slots is more than the %d MiB free in the data dir", p.DiskMiB, slots, h.diskFree>>20))
	}
	return l, warnings
}

// measureHost reads this host's memory, cores and the space free where
// dataDir lies; what it cannot read stays zero.
func measureHost(dataDir string) hostInfo {
	h := hostInfo{cpus: runtime.NumCPU()}
	h.memory, _ = executor.ReadHostMemory()
	var st unix.Statfs_t
	if err := unix.Statfs(dataDir, &st); err == nil {
		h.diskFree = st.Bavail * uint64(st.Bsize)
	}
	return h
}

// ProviderLimits derives a provider's job limits from its config and the
// host its data dir is on, and logs what does not fit.
func ProviderLimits(p LimitsConfig, dataDir string, log *slog.Logger) Limits {
	l, warnings := deriveLimits(p, measureHost(dataDir))
	for _, w := range warnings {
		log.Warn("provider limits: " + w)
	}
	log.Info("job limits", "max_memory_mib", l.MemoryMiB, "max_cpu_millis", l.CPUMillis, "disk_mib", l.DiskBytes>>20)
	return l
}
