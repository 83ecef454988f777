package gpu

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// nvidiaSMIArgs asks for one CSV line per GPU.
var nvidiaSMIArgs = []string{"--query-gpu=index,uuid,name,memory.total,driver_version", "--format=csv,noheader,nounits"}

// NvidiaSMI runs nvidia-smi and parses its answer.
func NvidiaSMI(ctx context.Context, path string, timeout time.Duration) ([]Device, error) {
	out, err := run(ctx, timeout, path, nvidiaSMIArgs...)
	if err != nil {
		return nil, err
	}
	return ParseNvidiaSMI(out)
}

// ParseNvidiaSMI parses the output of
// `nvidia-smi --query-gpu=index,uuid,name,memory.total,driver_version --format=csv,noheader,nounits`:
// one line per GPU, fields separated by ", ". Fields nvidia-smi cannot read
// show as "[N/A]" or "[Not Supported]": an unknown memory size becomes 0, an
// unknown name is an error for that line.
func ParseNvidiaSMI(out []byte) ([]Device, error) {
	var devs []Device
	for n, line := range strings.Split(string(out), "\n") {
		line = strings.TrimSpace(strings.TrimSuffix(line, "\r"))
		if line == "" {
			continue
		}
		f := strings.Split(line, ",")
		if len(f) != 5 {
			return nil, fmt.Errorf("nvidia-smi line %d: want 5 comma-separated fields, got %d: %q", n+1, len(f), line)
		}
		for i := range f {
			f[i] = strings.TrimSpace(f[i])
		}
		if _, err := strconv.Atoi(f[0]); err != nil {
			return nil, fmt.Errorf("nvidia-smi line %d: index %q is not a number", n+1, f[0])
		}
		name := naToEmpty(f[2])
		if name == "" {
			return nil, fmt.Errorf("nvidia-smi line %d: GPU %s has no name", n+1, f[0])
		}
		mem := 0
		if m := naToEmpty(f[3]); m != "" {
			v, err := strconv.Atoi(strings.TrimSuffix(m, " MiB"))
			if err != nil || v < 0 {
				return nil, fmt.Errorf("nvidia-smi line %d: memory.total %q is not a number of MiB", n+1, f[3])
			}
			mem = v
		}
		devs = append(devs, Device{
			Model:   NormalizeModel(name),
			Name:    name,
			VRAMMiB: mem,
			Count:   1,
			UUID:    naToEmpty(f[1]),
			Driver:  naToEmpty(f[4]),
			Source:  SourceDetected,
		})
	}
	return devs, nil
}

// naToEmpty maps nvidia-smi's placeholders for unreadable fields to "":
// "[N/A]", "[Not Supported]", "[Unknown Error]", ... and, from older
// drivers (440), a bare "N/A".
func naToEmpty(s string) string {
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") || s == "N/A" {
		return ""
	}
	return s
}
