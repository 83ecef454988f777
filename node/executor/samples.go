package executor

import (
	"bytes"
	"compress/gzip"
	"embed"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strings"
)

// The sample module is built from ./sample; rebuild it with `go generate`
// after changing that program (needs only the Go toolchain and gzip).
//go:generate env GOOS=wasip1 GOARCH=wasm CGO_ENABLED=0 go build -trimpath -ldflags=-s -o samples/sample.wasm ./sample
//go:generate gzip -9nf samples/sample.wasm

// samples holds the built-in WASI modules, gzip-compressed, one file per
// module named NAME.wasm.gz.
//
//go:embed samples/*.wasm.gz
var samples embed.FS

// SampleNames lists the built-in WASI modules that SampleModule returns, in
// order; "sample" is always among them.
func SampleNames() []string {
	entries, err := fs.ReadDir(samples, "samples")
	if err != nil {
		return nil
	}
	var names []string
	for _, e := range entries {
		if name, ok := strings.CutSuffix(e.Name(), ".wasm.gz"); ok {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// SampleModule returns the bytes of the built-in WASI module called name
// (see SampleNames). "sample" is a Go program whose first argument picks
// what it does: "hash N" (SHA-256 over N MiB of generated data, printed in
// hex; the default workload), "echo ARGS...", "readfile PATH", "write NAME
// TEXT", "fill NAME MIB [PER [HOLD]]", "id", "dial ADDR", "alloc MIB",
// "spin", "sleep DURATION", "env", "exit CODE". Each call decompresses a
// fresh copy.
func SampleModule(name string) ([]byte, error) {
	gz, err := samples.ReadFile("samples/" + name + ".wasm.gz")
	if err != nil {
		return nil, fmt.Errorf("sample module %q: %w", name, err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		return nil, fmt.Errorf("sample module %q: %w", name, err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		return nil, fmt.Errorf("sample module %q: %w", name, err)
	}
	return b, nil
}
