package runner

import (
	"strings"
	"testing"

	"github.com/mira-market/mira/node/executor"
)

func TestDeriveLimits(t *testing.T) {
	gib := uint64(1 << 30)
	h := hostInfo{memory: executor.HostMemory{Total: 16 * gib, Available: 12 * gib}, cpus: 8, diskFree: 100 * gib}
	cases := []struct {
		name string
		p    LimitsConfig
		h    hostInfo
		want Limits
		warn string // a substring of one warning; "" for none
	}{
		{"defaults: the host divided by slots", LimitsConfig{Slots: 4, DiskMiB: 1024}, h,
			Limits{MemoryMiB: 4096, CPUMillis: 2000, DiskBytes: 1 << 30}, ""},
		{"configured", LimitsConfig{Slots: 2, DiskMiB: 512, MaxMemoryMiB: 2048, MaxCPUMillis: 1500}, h,
			Limits{MemoryMiB: 2048, CPUMillis: 1500, DiskBytes: 512 << 20}, ""},
		{"more slots than cores", LimitsConfig{Slots: 1000, DiskMiB: 1}, h,
			Limits{MemoryMiB: 16, CPUMillis: 10, DiskBytes: 1 << 20}, ""},
		{"memory over the host", LimitsConfig{Slots: 2, DiskMiB: 1, MaxMemoryMiB: 10000}, h,
			Limits{MemoryMiB: 10000, CPUMillis: 4000, DiskBytes: 1 << 20}, "max_memory_mib 10000 × 2 slots"},
		{"CPU over the host is lowered", LimitsConfig{Slots: 1, DiskMiB: 1, MaxCPUMillis: 64000}, h,
			Limits{MemoryMiB: 16384, CPUMillis: 8000, DiskBytes: 1 << 20}, "lowered to 8000"},
		{"disk over what is free", LimitsConfig{Slots: 4, DiskMiB: 1 << 20}, h,
			Limits{MemoryMiB: 4096, CPUMillis: 2000, DiskBytes: 1 << 40}, "disk_mib 1048576 × 4 slots"},
		{"host memory unknown", LimitsConfig{Slots: 1, DiskMiB: 1}, hostInfo{cpus: 2},
			Limits{MemoryMiB: 1024, CPUMillis: 2000, DiskBytes: 1 << 20}, "host memory unknown"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, warnings := deriveLimits(c.p, c.h)
			if got != c.want {
				t.Errorf("limits %+v, want %+v", got, c.want)
			}
			joined := strings.Join(warnings, "\n")
			if (c.warn == "") != (len(warnings) == 0) || !strings.Contains(joined, c.warn) {
				t.Errorf("warnings %q, want one with %q", warnings, c.warn)
			}
		})
	}
}
