package executor

import (
	"strings"
	"testing"
)

func TestParseMeminfo(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, in string
		want     HostMemory
		err      bool
	}{
		{"both", "MemTotal:       16384 kB\nMemFree:  100 kB\nMemAvailable:    8192 kB\n", HostMemory{Total: 16 << 20, Available: 8 << 20}, false},
		{"no MemAvailable (kernels before 3.14)", "MemTotal: 16384 kB\nMemFree: 100 kB\n", HostMemory{}, true},
		{"garbage number", "MemTotal: x kB\nMemAvailable: 1 kB\n", HostMemory{}, true},
		{"empty", "", HostMemory{}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := parseMeminfo(strings.NewReader(c.in))
			if (err != nil) != c.err || got != c.want {
				t.Fatalf("got %+v, %v; want %+v, error %v", got, err, c.want, c.err)
			}
		})
	}
	// This host's own.
	m, err := ReadHostMemory()
	if err != nil || m.Total == 0 || m.Available == 0 || m.Available > m.Total {
		t.Fatalf("ReadHostMemory = %+v, %v", m, err)
	}
}
