package storage

import (
	"crypto/ed25519"
	"syscall"
	"testing"
	"time"
)

func cpuNow() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func BenchmarkTmpCPU(b *testing.B) {
	raws, g := benchEntries(b, 20000)
	l := benchLedger(b, g)
	c0, w0 := cpuNow(), time.Now()
	for i := 0; i < len(raws); i += 256 {
		if _, err := l.IngestMany(raws[i:min(i+256, len(raws))]); err != nil {
			b.Fatal(err)
		}
	}
	c1, w1 := cpuNow(), time.Now()
	for _, raw := range raws {
		e, _ := DecodeEntry(raw)
		pub, _ := accountKey(e.Account)
		if !ed25519.Verify(pub, e.SigningBytes(testNet), e.Signature) {
			b.Fatal("bad")
		}
	}
	c2, w2 := cpuNow(), time.Now()
	n := time.Duration(len(raws))
	b.Logf("ingest cpu %v/entry wall %v/entry; verify cpu %v/entry wall %v/entry", (c1-c0)/n, w1.Sub(w0)/n, (c2-c1)/n, w2.Sub(w1)/n)
}
