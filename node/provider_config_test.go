package node

import (
	"strings"
	"testing"
)

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
