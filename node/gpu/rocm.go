package gpu

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"regexp"
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
// an object with one "cardN" object per GPU whose values are strings.
// Other top-level keys ("system") are ignored. The key names changed
// case in ROCm 6.1 ("Card series" became "Card Series", "Card model" "Card
// Model"), so keys are matched without regard to case. rocm-smi may write
// warnings to stdout ahead of the JSON ("WARNING: AMD GPU device(s) is/are
// in a low-power state..." whenever a card sleeps): the answer starts at
// the first line that opens an object.
func ParseROCmSMI(out []byte) ([]Device, error) {
	cards, err := decodeROCmJSON(out)
	if err != nil {
		return nil, err
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
		d, err := rocmDevice(k, fold(cards[k]))
		if err != nil {
			return nil, err
		}
		devs = append(devs, d)
	}
	return devs, nil
}

// decodeROCmJSON decodes the first JSON object in out, skipping the lines
// of text before it.
func decodeROCmJSON(out []byte) (map[string]map[string]any, error) {
	start := -1
	for off := 0; off < len(out); {
		line, _, _ := bytes.Cut(out[off:], []byte("\n"))
		if bytes.HasPrefix(bytes.TrimSpace(line), []byte("{")) {
			start = off
			break
		}
		off += len(line) + 1
	}
	if start < 0 {
		return nil, fmt.Errorf("rocm-smi: no JSON in its answer: %q", truncate(string(out), 200))
	}
	var cards map[string]map[string]any
	if err := json.NewDecoder(bytes.NewReader(out[start:])).Decode(&cards); err != nil {
		return nil, fmt.Errorf("rocm-smi: invalid JSON: %w", err)
	}
	return cards, nil
}

// rocmDevice makes the device of card k from its keys, lowercased.
func rocmDevice(k string, c map[string]string) (Device, error) {
	name := rocmName(c)
	if name == "" {
		return Device{}, fmt.Errorf("rocm-smi: %s has no product name", k)
	}
	lower := strings.ToLower(name)
	if !strings.Contains(lower, "amd") && !strings.Contains(lower, "radeon") && !strings.Contains(lower, "instinct") {
		name = "AMD " + name
	}
	mem := 0
	if b := c["vram total memory (b)"]; b != "" {
		v, err := strconv.ParseInt(b, 10, 64)
		if err != nil || v < 0 {
			return Device{}, fmt.Errorf("rocm-smi: %s: VRAM Total Memory %q is not a number of bytes", k, b)
		}
		mem = int(v >> 20)
	}
	return Device{
		Model:   NormalizeModel(name),
		Name:    name,
		VRAMMiB: mem,
		Count:   1,
		UUID:    c["unique id"],
		Source:  SourceDetected,
	}, nil
}

// rocmName is a card's product name: its series ("Navi 22 [Radeon RX
// 6700/6700 XT / 6800M]", "AMD Instinct MI300X"), else its device name
// (newer releases, with --showid), else its model. Old releases wrote bare
// PCI IDs ("0x738c") for some cards: a name is preferred to an ID, and an
// ID is still better than dropping the card.
func rocmName(c map[string]string) string {
	var id string
	for _, key := range []string{"card series", "device name", "card model"} {
		v := c[key]
		switch {
		case v == "":
		case hexID.MatchString(v):
			if id == "" {
				id = v
			}
		default:
			return v
		}
	}
	return id
}

var hexID = regexp.MustCompile(`^0[xX][0-9a-fA-F]+$`)

// fold maps a card's keys to lower case and its values to trimmed strings,
// with rocm-smi's "N/A" as "".
func fold(c map[string]any) map[string]string {
	out := make(map[string]string, len(c))
	for k, v := range c {
		s := str(v)
		if strings.EqualFold(s, "N/A") {
			s = ""
		}
		out[strings.ToLower(k)] = s
	}
	return out
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
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
