package gpu

import (
	"cmp"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestNormalizeModel(t *testing.T) {
	for in, want := range map[string]string{
		"nvidia-h100-80gb-hbm3":                "nvidia-h100",
		"NVIDIA H100 80GB HBM3":                "nvidia-h100",
		"NVIDIA H100 PCIe":                     "nvidia-h100",
		"NVIDIA H100 NVL":                      "nvidia-h100",
		"NVIDIA GeForce RTX 4090":              "nvidia-rtx-4090",
		"NVIDIA GeForce RTX 3090 Ti":           "nvidia-rtx-3090-ti",
		"NVIDIA A100-SXM4-40GB":                "nvidia-a100",
		"Tesla V100-SXM2-16GB":                 "nvidia-v100",
		"NVIDIA RTX A6000":                     "nvidia-rtx-a6000",
		"NVIDIA L4":                            "nvidia-l4",
		"RTX 4090":                             "nvidia-rtx-4090",
		"nvidia-rtx-4090":                      "nvidia-rtx-4090",
		"AMD Instinct MI300X":                  "amd-mi300x",
		"AMD Radeon RX 7900 XTX":               "amd-rx-7900-xtx",
		"  ":                                   "",
		"Arcturus GL-XL [Instinct MI100]":      "amd-mi100",
		"Navi 31 [Radeon RX 7900 XT/7900 XTX]": "amd-rx-7900-xt-7900-xtx",
		"AMD 0x738c":                           "amd-0x738c",
		"NVIDIA GeForce RTX 4090 Laptop GPU":   "nvidia-rtx-4090-laptop",
	} {
		if got := NormalizeModel(in); got != want {
			t.Errorf("NormalizeModel(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseNvidiaSMI(t *testing.T) {
	for _, tc := range []struct {
		file    string
		want    []Device
		wantErr string
	}{
		{file: "nvidia-smi-2xh100.csv", want: []Device{
			{Model: "nvidia-h100", Name: "NVIDIA H100 80GB HBM3", VRAMMiB: 81559, Count: 1, UUID: "GPU-8f6f8d4c-3c1e-5e5b-9a8b-2f7d1c4e6a01", Driver: "550.54.15", Source: SourceDetected},
			{Model: "nvidia-h100", Name: "NVIDIA H100 80GB HBM3", VRAMMiB: 81559, Count: 1, UUID: "GPU-1d2c3b4a-5e6f-7a8b-9c0d-e1f2a3b4c5d6", Driver: "550.54.15", Source: SourceDetected},
		}},
		{file: "nvidia-smi-rtx4090.csv", want: []Device{
			{Model: "nvidia-rtx-4090", Name: "NVIDIA GeForce RTX 4090", VRAMMiB: 24564, Count: 1, UUID: "GPU-a1b2c3d4-0000-1111-2222-333344445555", Driver: "560.35.03", Source: SourceDetected},
		}},
		{file: "nvidia-smi-odd-spacing.csv", want: []Device{
			{Model: "nvidia-v100", Name: "Tesla V100-SXM2-16GB", VRAMMiB: 16160, Count: 1, UUID: "GPU-0f0f0f0f-aaaa-bbbb-cccc-dddddddddddd", Driver: "470.82.01", Source: SourceDetected},
			{Model: "nvidia-a100", Name: "NVIDIA A100-SXM4-40GB", VRAMMiB: 40960, Count: 1, UUID: "GPU-1e1e1e1e-aaaa-bbbb-cccc-dddddddddddd", Driver: "470.82.01", Source: SourceDetected},
		}},
		// An old driver: no "NVIDIA" in names, bare N/A for what it cannot read.
		{file: "nvidia-smi-geforce-440.csv", want: []Device{
			{Model: "nvidia-rtx-2080", Name: "GeForce RTX 2080", VRAMMiB: 7979, Count: 1, UUID: "GPU-22b2c6ac-2d49-4863-197c-9c469071178a", Driver: "440.64", Source: SourceDetected},
			{Model: "nvidia-rtx-2080", Name: "GeForce RTX 2080", VRAMMiB: 0, Count: 1, UUID: "GPU-089608fe-cba5-4711-bf68-085fd0711d8c", Driver: "440.64", Source: SourceDetected},
		}},
		{file: "nvidia-smi-na-fields.csv", want: []Device{
			{Model: "nvidia-l4", Name: "NVIDIA L4", VRAMMiB: 0, Count: 1, Driver: "535.104.05", Source: SourceDetected},
		}},
		{file: "nvidia-smi-missing-field.csv", wantErr: "want 5 comma-separated fields"},
		{file: "nvidia-smi-bad-index.csv", wantErr: "index"},
		{file: "nvidia-smi-no-name.csv", wantErr: "no name"},
		{file: "nvidia-smi-bad-memory.csv", wantErr: "memory.total"},
		{file: "nvidia-smi-no-driver.txt", wantErr: "fields"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("testdata", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			got, err := ParseNvidiaSMI(b)
			checkParse(t, got, err, tc.want, tc.wantErr)
		})
	}
}

func TestParseROCmSMI(t *testing.T) {
	rx6700 := Device{Model: "amd-rx-6700-6700-xt-6800m", Name: "Navi 22 [Radeon RX 6700/6700 XT / 6800M]", VRAMMiB: 12272, Count: 1, Source: SourceDetected}
	mi100 := func(uuid string) Device {
		return Device{Model: "amd-mi100", Name: "Arcturus GL-XL [Instinct MI100]", VRAMMiB: 32752, Count: 1, UUID: uuid, Source: SourceDetected}
	}
	for _, tc := range []struct {
		file    string
		want    []Device
		wantErr string
	}{
		// ROCm >= 6.1 capitalises the keys; every AMD card was dropped.
		{file: "rocm-smi-6.1.2-rx6700xt.json", want: []Device{rx6700}},
		{file: "rocm-smi-6.0.2-mi100.json", want: []Device{mi100("0x79ccd55167a2124a"), mi100("0x4edfb117a17a07d")}},
		{file: "rocm-smi-6.x-mi250x-product-only.json", want: []Device{
			{Model: "amd-mi200-mcm-lc-mba-hpe-c2", Name: "AMD INSTINCT MI200 (MCM) OAM LC MBA HPE C2", Count: 1, Source: SourceDetected},
		}},
		// A sleeping GPU makes rocm-smi write a warning to stdout first.
		{file: "rocm-smi-low-power-warning.json", want: []Device{rx6700}},
		{file: "rocm-smi-hex-only.json", want: []Device{
			{Model: "amd-0x738c", Name: "AMD 0x738c", VRAMMiB: 32752, Count: 1, Source: SourceDetected},
		}},
		{file: "rocm-smi-bad-memory.json", wantErr: "not a number"},
		{file: "rocm-smi-not-json.txt", wantErr: "no JSON"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("testdata", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			got, err := ParseROCmSMI(b)
			checkParse(t, got, err, tc.want, tc.wantErr)
		})
	}
}

func checkParse(t *testing.T, got []Device, err error, want []Device, wantErr string) {
	t.Helper()
	if wantErr != "" {
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("err = %v, want one mentioning %q", err, wantErr)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("got %d devices %+v, want %d", len(got), got, len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("device %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

// fakeTool writes an executable shell script standing in for a vendor tool.
func fakeTool(t *testing.T, script string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tool")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+script+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestNvidiaSMICommand(t *testing.T) {
	ctx := context.Background()
	fixture, _ := filepath.Abs("testdata/nvidia-smi-rtx4090.csv")

	devs, err := NvidiaSMI(ctx, fakeTool(t, `[ "$1" = "--query-gpu=index,uuid,name,memory.total,driver_version" ] || exit 9; cat `+fixture), time.Second*5)
	if err != nil || len(devs) != 1 || devs[0].Model != "nvidia-rtx-4090" {
		t.Fatalf("working tool: %v, %v", devs, err)
	}

	_, err = NvidiaSMI(ctx, filepath.Join(t.TempDir(), "absent"), time.Second)
	if !errors.Is(err, exec.ErrNotFound) && !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing tool: err = %v", err)
	}

	_, err = NvidiaSMI(ctx, fakeTool(t, `echo "NVIDIA-SMI has failed" >&2; exit 9`), time.Second*5)
	if err == nil || !strings.Contains(err.Error(), "NVIDIA-SMI has failed") {
		t.Fatalf("failing tool: err = %v, want its message", err)
	}

	start := time.Now()
	_, err = NvidiaSMI(ctx, fakeTool(t, `sleep 30`), 200*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "no answer within") {
		t.Fatalf("hung tool: err = %v", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatalf("hung tool held Detect for %v", time.Since(start))
	}
}

func TestDetectFallsBackCleanly(t *testing.T) {
	// Neither tool works: Detect returns nothing, no error, no hang.
	devs := Detect(context.Background(), Options{
		NvidiaSMI: fakeTool(t, "exit 1"),
		ROCmSMI:   filepath.Join(t.TempDir(), "absent"),
		NoNVML:    true,
		Timeout:   time.Second,
	})
	if len(devs) != 0 {
		t.Fatalf("devices from broken tools: %v", devs)
	}
	fixture, _ := filepath.Abs("testdata/rocm-smi-6.0.2-mi100.json")
	devs = Detect(context.Background(), Options{
		NvidiaSMI: filepath.Join(t.TempDir(), "absent"),
		ROCmSMI:   fakeTool(t, "cat "+fixture),
		NoNVML:    true,
	})
	if len(devs) != 2 || devs[0].Model != "amd-mi100" {
		t.Fatalf("AMD devices = %v", devs)
	}
}

func TestFromDeclared(t *testing.T) {
	devs, err := FromDeclared([]Declared{{Model: "NVIDIA H100", VRAMMiB: 81920, Count: 8}, {Model: "rtx-4090", VRAMMiB: 24564}})
	if err != nil {
		t.Fatal(err)
	}
	if devs[0].Model != "nvidia-h100" || devs[0].Count != 8 || devs[0].Source != SourceDeclared || devs[1].Count != 1 || devs[1].Model != "nvidia-rtx-4090" {
		t.Fatalf("declared = %+v", devs)
	}
	for _, bad := range []Declared{{Model: "", VRAMMiB: 1}, {Model: "x", VRAMMiB: 0}, {Model: "x", VRAMMiB: 1, Count: -1}} {
		if _, err := FromDeclared([]Declared{bad}); err == nil {
			t.Errorf("FromDeclared(%+v) accepted", bad)
		}
	}
}

// checkDetected checks what a parser of a vendor tool returns: each
// device detected, once, named, normalised from its name, with no negative
// memory.
func checkDetected(t *testing.T, devs []Device) {
	t.Helper()
	for _, d := range devs {
		if d.Name == "" || d.Model != NormalizeModel(d.Name) || d.VRAMMiB < 0 || d.Count != 1 || d.Source != SourceDetected {
			t.Fatalf("parsed an invalid device %+v", d)
		}
	}
}

// FuzzParseNvidiaSMI: every non-empty line of a parsed answer is one
// device, in order, and each device is well formed.
func FuzzParseNvidiaSMI(f *testing.F) {
	for _, name := range []string{"nvidia-smi-2xh100.csv", "nvidia-smi-odd-spacing.csv", "nvidia-smi-na-fields.csv", "nvidia-smi-geforce-440.csv"} {
		b, _ := os.ReadFile(filepath.Join("testdata", name))
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		devs, err := ParseNvidiaSMI(b)
		if err != nil {
			return
		}
		checkDetected(t, devs)
		lines := 0
		for _, l := range strings.Split(string(b), "\n") {
			if strings.TrimSpace(strings.TrimSuffix(l, "\r")) != "" {
				lines++
			}
		}
		if len(devs) != lines {
			t.Fatalf("%d devices from %d lines", len(devs), lines)
		}
	})
}

// FuzzParseROCmSMI: a parsed answer has one device per "cardN" object, in
// card order, each well formed, with its VRAM the answer's bytes in MiB.
func FuzzParseROCmSMI(f *testing.F) {
	for _, name := range []string{"rocm-smi-6.1.2-rx6700xt.json", "rocm-smi-6.0.2-mi100.json", "rocm-smi-low-power-warning.json", "rocm-smi-bad-memory.json"} {
		b, _ := os.ReadFile(filepath.Join("testdata", name))
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		devs, err := ParseROCmSMI(b)
		if err != nil {
			return
		}
		checkDetected(t, devs)
		cards, err := decodeROCmJSON(b)
		if err != nil {
			t.Fatalf("parsed what is not a JSON object of objects: %v", err)
		}
		var keys []string
		for k := range cards {
			if strings.HasPrefix(k, "card") {
				keys = append(keys, k)
			}
		}
		if len(devs) != len(keys) {
			t.Fatalf("%d devices from %d cards", len(devs), len(keys))
		}
		slices.SortStableFunc(keys, func(a, b string) int { return cmp.Compare(cardIndex(a), cardIndex(b)) })
		for i, k := range keys {
			if m := fold(cards[k])["vram total memory (b)"]; m != "" {
				v, _ := strconv.ParseInt(m, 10, 64)
				if devs[i].VRAMMiB != int(v>>20) {
					t.Fatalf("%s: %d MiB from %q bytes", k, devs[i].VRAMMiB, m)
				}
			}
		}
	})
}
