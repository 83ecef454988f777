package storage

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/mira-market/mira/protocol/ledger"
)

const crashDirEnv = "MIRA_LEDGER_CRASH_DIR"

func crashGenesis(t testing.TB) *ledger.Genesis {
	_, id := testKey(t, "crash")
	return &ledger.Genesis{Network: testNet, Grants: []ledger.GenesisGrant{{Peer: id, Amount: 1_000_000}}}
}

// TestLedgerCrashChild is the child of TestLedgerCrash: it appends to the
// ledger in $MIRA_LEDGER_CRASH_DIR until killed, printing each seq once
// Append has returned (the entry is synced).
func TestLedgerCrashChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("only run as TestLedgerCrash's child")
	}
	db, err := Open(dir, Options{Network: testNet})
	if err != nil {
		t.Fatal(err)
	}
	l, err := OpenLedger(db, testNet, crashGenesis(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	priv, id := testKey(t, "crash")
	_, provider := testKey(t, "provider")
	head, err := l.Head(id)
	if err != nil {
		t.Fatal(err)
	}
	out := bufio.NewWriter(os.Stdout)
	ack := func(es ...ledger.Entry) {
		for _, e := range es {
			fmt.Fprintln(out, e.Seq)
		}
		out.Flush()
	}
	if head.Seq == 0 {
		e, err := l.Append(priv, ledger.GrantBody{Amount: 1_000_000})
		if err != nil {
			t.Fatal(err)
		}
		ack(e)
	}
	for i := 0; ; i++ {
		j := job(fmt.Sprintf("%d-%d", head.Seq, i))
		var bodies []ledger.Body
		switch i % 3 {
		case 0: // hold, release
			bodies = []ledger.Body{ledger.HoldBody{Job: j, Amount: 10}, ledger.ReleaseBody{Job: j}}
		case 1: // a posting hold, replaced by an award to another
			bodies = []ledger.Body{ledger.HoldBody{Job: j, Amount: 10},
				ledger.HoldBody{Job: j, Provider: provider, Amount: 5, Expiry: time.Now().Add(time.Hour).UnixNano(), Replicas: 1}}
		case 2: // awarded at once (a hold may not name its own account)
			bodies = []ledger.Body{ledger.HoldBody{Job: j, Provider: provider, Amount: 1, Expiry: time.Now().Add(time.Hour).UnixNano(), Replicas: 1}}
		}
		if i%2 == 0 {
			es, err := l.AppendBatch(priv, bodies)
			if err != nil {
				t.Fatal(err)
			}
			ack(es...)
			continue
		}
		for _, b := range bodies {
			e, err := l.Append(priv, b)
			if err != nil {
				t.Fatal(err)
			}
			ack(e)
		}
	}
}

// TestLedgerCrash kills a process appending to a ledger, at a random
// moment, three times over: the ledger reopens consistent (Verify finds
// nothing) and holds every entry the process acknowledged.
func TestLedgerCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	dir := t.TempDir()
	_, id := testKey(t, "crash")
	var acked uint64
	for round := range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestLedgerCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashDirEnv+"="+dir)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(stdout)
		lines := 0
		for sc.Scan() {
			seq, err := strconv.ParseUint(sc.Text(), 10, 64)
			if err != nil {
				continue // the test framework's own output
			}
			if seq != acked+1 {
				t.Fatalf("round %d: acknowledged seq %d after %d", round, seq, acked)
			}
			acked = seq
			if lines++; lines == 40+round*17 {
				if err := cmd.Process.Kill(); err != nil {
					t.Fatal(err)
				}
			}
		}
		err = cmd.Wait()
		if lines < 40+round*17 {
			t.Fatalf("round %d: child ended after %d lines: %v\n%s", round, lines, err, stderr.Bytes())
		}

		db, err := Open(dir, Options{Network: testNet})
		if err != nil {
			t.Fatal(err)
		}
		l, err := OpenLedger(db, testNet, crashGenesis(t), func() time.Time { return time.Now() })
		if err != nil {
			t.Fatal(err)
		}
		probs, err := l.Verify(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range probs {
			t.Errorf("round %d: %v", round, p)
		}
		head, err := l.Head(id)
		if err != nil {
			t.Fatal(err)
		}
		if head.Seq < acked {
			t.Fatalf("round %d: head %d, acknowledged %d", round, head.Seq, acked)
		}
		if l.Count() != head.Seq {
			t.Fatalf("round %d: %d entries, head %d", round, l.Count(), head.Seq)
		}
		t.Logf("round %d: acknowledged %d, stored %d", round, acked, head.Seq)
		acked = head.Seq
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
