// Package gpu discovers a machine's GPUs: NVIDIA through NVML where the
// library loads, else nvidia-smi; AMD through rocm-smi; and GPUs declared in
// the node's config for machines without them. Model names are normalised
// to stable keys such as "nvidia-h100" that the DHT and job specs use.
package gpu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"regexp"
	"strings"
	"time"
)

// Source says where a GPU entry came from.
const (
	SourceDetected = "detected"
	SourceDeclared = "declared"
)

// Device is one GPU, or several identical declared ones.
type Device struct {
	// Model is the normalised key, e.g. "nvidia-rtx-4090".
	Model string `json:"model"`
	// Name is the vendor's name, e.g. "NVIDIA GeForce RTX 4090".
	Name    string `json:"name,omitempty"`
	VRAMMiB int    `json:"vram_mib"`
	// Count is 1 for a detected GPU; declared entries may stand for several.
	Count  int    `json:"count"`
	UUID   string `json:"uuid,omitempty"`
	Driver string `json:"driver,omitempty"`
	Source string `json:"source"`
}

// Declared is a GPU entry from the config's [[gpu]] tables.
type Declared struct {
	Model   string `toml:"model"`
	VRAMMiB int    `toml:"vram_mib"`
	Count   int    `toml:"count"`
}

// Options configure Detect.
type Options struct {
	// NvidiaSMI and ROCmSMI are the commands to run; empty means the
	// names on PATH.
	NvidiaSMI string
	ROCmSMI   string
	// Timeout bounds each command; a hung driver must not hang the node.
	Timeout time.Duration
	// NoNVML skips the NVML library even where it loads.
	NoNVML bool
	Log    *slog.Logger
}

// Detect finds the machine's GPUs. A missing tool is not an error: the
// machine simply has none of that vendor. A tool that fails or hangs is
// logged and skipped, so a broken driver leaves the node running without
// detected GPUs rather than not running at all.
func Detect(ctx context.Context, opt Options) []Device {
	if opt.Timeout == 0 {
		opt.Timeout = 10 * time.Second
	}
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	if opt.NvidiaSMI == "" {
		opt.NvidiaSMI = "nvidia-smi"
	}
	if opt.ROCmSMI == "" {
		opt.ROCmSMI = "rocm-smi"
	}
	var out []Device
	nv, err := detectNVML()
	if opt.NoNVML || err != nil {
		if err != nil && !opt.NoNVML {
			opt.Log.Debug("NVML unavailable; trying nvidia-smi", "err", err)
		}
		nv, err = NvidiaSMI(ctx, opt.NvidiaSMI, opt.Timeout)
		if err != nil && !errors.Is(err, exec.ErrNotFound) {
			opt.Log.Warn("nvidia-smi failed; no NVIDIA GPUs detected", "err", err)
		}
	}
	out = append(out, nv...)
	amd, err := ROCmSMI(ctx, opt.ROCmSMI, opt.Timeout)
	if err != nil && !errors.Is(err, exec.ErrNotFound) {
		opt.Log.Warn("rocm-smi failed; no AMD GPUs detected", "err", err)
	}
	return append(out, amd...)
}

// FromDeclared turns config entries into devices, checking each.
func FromDeclared(decl []Declared) ([]Device, error) {
	out := make([]Device, 0, len(decl))
	for i, d := range decl {
		model := NormalizeModel(d.Model)
		if model == "" {
			return nil, fmt.Errorf("gpu[%d]: model is empty", i)
		}
		if d.VRAMMiB <= 0 {
			return nil, fmt.Errorf("gpu[%d] (%s): vram_mib must be positive", i, d.Model)
		}
		count := d.Count
		if count == 0 {
			count = 1
		}
		if count < 0 || count > 64 {
			return nil, fmt.Errorf("gpu[%d] (%s): count %d out of range 1..64", i, d.Model, d.Count)
		}
		out = append(out, Device{Model: model, Name: d.Model, VRAMMiB: d.VRAMMiB, Count: count, Source: SourceDeclared})
	}
	return out, nil
}

// run runs a command with a timeout and returns its stdout.
func run(ctx context.Context, timeout time.Duration, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = time.Second // don't wait on pipes a hung child keeps open
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if ctx.Err() == context.DeadlineExceeded {
		return nil, fmt.Errorf("%s: no answer within %v", name, timeout)
	}
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(string(out))
		}
		if len(msg) > 200 {
			msg = msg[:200]
		}
		return nil, fmt.Errorf("%s: %w: %s", name, err, msg)
	}
	return out, nil
}

// vendorOf is the vendor a GPU name names, or "".
func vendorOf(lower string) string {
	for _, t := range strings.FieldsFunc(nonAlnum.ReplaceAllString(lower, " "), func(r rune) bool { return r == ' ' }) {
		switch t {
		case "nvidia", "geforce", "tesla", "quadro":
			return "nvidia"
		case "amd", "ati", "radeon", "instinct":
			return "amd"
		}
	}
	return ""
}

var (
	nonAlnum = regexp.MustCompile(`[^a-z0-9]+`)
	memSize  = regexp.MustCompile(`^[0-9]+(gb|g)$`)
)

// Tokens that name a vendor or brand, a form factor or a memory
// configuration: they distinguish SKUs of one model, not models.
var dropTokens = map[string]bool{
	"nvidia": true, "amd": true, "ati": true, "geforce": true, "tesla": true,
	"quadro": true, "instinct": true, "radeon": true, "gpu": true, "graphics": true,
	"sxm": true, "sxm2": true, "sxm3": true, "sxm4": true, "sxm5": true,
	"pcie": true, "nvl": true, "nvlink": true, "hbm": true, "hbm2": true,
	"hbm2e": true, "hbm3": true, "hbm3e": true, "oam": true, "corporation": true,
}

// NormalizeModel maps a GPU name to a stable key: the vendor, then the
// model's own tokens, lowercased and joined with dashes.
// "NVIDIA GeForce RTX 4090" → "nvidia-rtx-4090",
// "nvidia-h100-80gb-hbm3" → "nvidia-h100",
// "AMD Instinct MI300X" → "amd-mi300x". An empty name gives "".
func NormalizeModel(name string) string {
	lower := strings.ToLower(name)
	// PCI ID names are "Codename [Marketing name]" ("Arcturus GL-XL
	// [Instinct MI100]"): the marketing name is the model; the vendor
	// comes from the whole.
	if open := strings.Index(lower, "["); open >= 0 {
		if end := strings.Index(lower[open:], "]"); end > 1 {
			inner := lower[open+1 : open+end]
			if v := vendorOf(lower); v != "" && !strings.Contains(inner, v) {
				inner = v + " " + inner
			}
			lower = inner
		}
	}
	tokens := strings.FieldsFunc(nonAlnum.ReplaceAllString(lower, " "), func(r rune) bool { return r == ' ' })
	if len(tokens) == 0 {
		return ""
	}
	vendor := ""
	var keep []string
	for _, t := range tokens {
		switch t {
		case "nvidia", "geforce", "tesla", "quadro":
			vendor = "nvidia"
		case "amd", "ati", "radeon", "instinct":
			vendor = "amd"
		}
		if dropTokens[t] || memSize.MatchString(t) {
			continue
		}
		keep = append(keep, t)
	}
	if vendor == "" && len(keep) > 0 && (keep[0] == "rtx" || keep[0] == "gtx") {
		vendor = "nvidia"
	}
	if len(keep) == 0 {
		return vendor
	}
	if vendor == "" {
		return strings.Join(keep, "-")
	}
	return vendor + "-" + strings.Join(keep, "-")
}
