package gpu

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// ROCmSMI runs rocm-smi and parses its answer.
func ROCmSMI(ctx context.Context, path string, timeout time.Duration) ([]Device, error) {
	out, err := run(ctx, timeout, path, "--showproductname", "--showmeminfo", "vram", "--json")
	if err != nil {
		return nil, err
	}
	return ParseROCmSMI(out)
}

// ParseROCmSMI parses `rocm-smi --showproductname --showmeminfo vram --json`:
// an object with one "cardN" object per GPU whose values are strings, such
// as "Card series", "Card model" and "VRAM Total Memory (B)". Other
// top-level keys ("system") are ignored.
func ParseROCmSMI(out []byte) ([]Device, error) {
	var cards map[string]map[string]any
	if err := json.Unmarshal(out, &cards); err != nil {
		return nil, fmt.Errorf("rocm-smi: invalid JSON: %w", err)
	}
	names := make([]string, 0, len(cards))
	for k := range cards {
		if strings.HasPrefix(k, "card") {
			names = append(names, k)
		}
	}
	sort.Slice(names, func(i, j int) bool { return cardIndex(names[i]) < cardIndex(names[j]) })
	var devs []Device
	for _, k := range names {
		c := cards[k]
		name := str(c["Card series"])
		if name == "" || strings.EqualFold(name, "N/A") {
			name = str(c["Card model"])
		}
		if name == "" {
			return nil, fmt.Errorf("rocm-smi: %s has no product name", k)
		}
		if !strings.Contains(strings.ToLower(name), "amd") && !strings.Contains(strings.ToLower(name), "radeon") &&
			!strings.Contains(strings.ToLower(name), "instinct") {
			name = "AMD " + name
		}
		mem := 0
		if b := str(c["VRAM Total Memory (B)"]); b != "" {
			v, err := strconv.ParseInt(b, 10, 64)
			if err != nil || v < 0 {
				return nil, fmt.Errorf("rocm-smi: %s: VRAM Total Memory %q is not a number of bytes", k, b)
			}
			mem = int(v >> 20)
		}
		devs = append(devs, Device{
			Model:   NormalizeModel(name),
			Name:    name,
			VRAMMiB: mem,
			Count:   1,
			UUID:    str(c["Unique ID"]),
			Source:  SourceDetected,
		})
	}
	return devs, nil
}

func cardIndex(name string) int {
	n, err := strconv.Atoi(strings.TrimPrefix(name, "card"))
	if err != nil {
		return 1 << 30
	}
	return n
}

func str(v any) string {
	s, _ := v.(string)
	return strings.TrimSpace(s)
}
