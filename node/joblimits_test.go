package node

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
		p    ProviderConfig
		h    hostInfo
		want jobLimits
		warn string // a substring of one warning; "" for none
	}{
		{"defaults: the host divided by slots", ProviderConfig{Slots: 4, DiskMiB: 1024}, h,
			jobLimits{MemoryMiB: 4096, CPUMillis: 2000, DiskBytes: 1 << 30}, ""},
		{"configured", ProviderConfig{Slots: 2, DiskMiB: 512, MaxMemoryMiB: 2048, MaxCPUMillis: 1500}, h,
			jobLimits{MemoryMiB: 2048, CPUMillis: 1500, DiskBytes: 512 << 20}, ""},
		{"more slots than cores", ProviderConfig{Slots: 1000, DiskMiB: 1}, h,
			jobLimits{MemoryMiB: 16, CPUMillis: 10, DiskBytes: 1 << 20}, ""},
		{"memory over the host", ProviderConfig{Slots: 2, DiskMiB: 1, MaxMemoryMiB: 10000}, h,
			jobLimits{MemoryMiB: 10000, CPUMillis: 4000, DiskBytes: 1 << 20}, "max_memory_mib 10000 × 2 slots"},
		{"CPU over the host is lowered", ProviderConfig{Slots: 1, DiskMiB: 1, MaxCPUMillis: 64000}, h,
			jobLimits{MemoryMiB: 16384, CPUMillis: 8000, DiskBytes: 1 << 20}, "lowered to 8000"},
		{"disk over what is free", ProviderConfig{Slots: 4, DiskMiB: 1 << 20}, h,
			jobLimits{MemoryMiB: 4096, CPUMillis: 2000, DiskBytes: 1 << 40}, "disk_mib 1048576 × 4 slots"},
		{"host memory unknown", ProviderConfig{Slots: 1, DiskMiB: 1}, hostInfo{cpus: 2},
			jobLimits{MemoryMiB: 1024, CPUMillis: 2000, DiskBytes: 1 << 20}, "host memory unknown"},
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

// The limit keys are checked when the config is loaded, each error naming
// its key.
func TestLimitsConfigValidation(t *testing.T) {
	cases := []struct {
		name string
		edit func(p *ProviderConfig)
		want string // "" for valid
	}{
		{"defaults", func(*ProviderConfig) {}, ""},
		{"images and a user", func(p *ProviderConfig) {
			p.DockerImages = []string{"ubuntu", "ubuntu:22.04", "registry.lab:5000/team/train@sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945"}
			p.DockerUser = "1000:1000"
		}, ""},
		{"user by name", func(p *ProviderConfig) { p.DockerUser = "nobody" }, "docker_user"},
		{"user without group", func(p *ProviderConfig) { p.DockerUser = "65534" }, "docker_user"},
		{"no user", func(p *ProviderConfig) { p.DockerUser = "" }, "docker_user"},
		{"an image ID", func(p *ProviderConfig) {
			p.DockerImages = []string{"sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945"}
		}, "docker_images"},
		{"not a reference", func(p *ProviderConfig) { p.DockerImages = []string{"Ubuntu Latest"} }, "docker_images"},
		{"no disk", func(p *ProviderConfig) { p.DiskMiB = 0 }, "disk_mib"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := DefaultConfig(t.TempDir())
			c.edit(&cfg.Provider)
			err := cfg.Validate()
			if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
				t.Fatalf("Validate() = %v, want an error naming %q", err, c.want)
			}
		})
	}
}
