package main

import (
	"crypto/rand"
	"fmt"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// signatureCap is what the signatures of one batch job cost a testnet,
// measured on this machine: the floor under the market's CPU per job that
// no implementation can go below, and so the yardstick of issue 4's goal
// (a burst within 2× of the cap). Measured in the same process right after
// a burst, it moves with the machine's speed of the moment, which on a
// shared VM drifts by tens of percent over minutes. The four ledger
// entries are counted as market seals: both are one Ed25519 signature.
type signatureCap struct {
	// Seal, Open and LedgerCheck are what one signature, one verified
	// market message and one ledger entry's share of a batch check cost
	// one core.
	Seal, Open, LedgerCheck time.Duration
	// Seals, Opens and LedgerChecks count them per batch job.
	Seals, Opens, LedgerChecks int
}

// batchJobSignatures counts the signatures of one batch job on a testnet
// of nodes nodes, providers of them providers. Signed: the offer and the
// round that carries it, a bid from each provider, the award and its
// grant, the taken notice, the acceptance and the result; then four ledger
// entries (hold, lease, receipt, payment). Checked: the offer round and
// the taken notice on every other node, the bids, the award, the
// acceptance and the result; the award's grant twice on the provider (when
// it takes the award, and before it writes its lease: counted as opens,
// each a single check); each ledger entry, and the grant its lease
// quotes, on every other node, in batches.
func batchJobSignatures(nodes, providers int) (seals, opens, ledgerChecks int) {
	const entries, grants = 4, 1
	return 7 + providers + entries, 2*(nodes-1) + providers + 3 + 2*grants, (entries + grants) * (nodes - 1)
}

// PerJob is the CPU the cap allows one batch job.
func (c signatureCap) PerJob() time.Duration {
	return time.Duration(c.Seals)*c.Seal + time.Duration(c.Opens)*c.Open + time.Duration(c.LedgerChecks)*c.LedgerCheck
}

// JobsPerSecond is the cap's rate on every core of this process.
func (c signatureCap) JobsPerSecond() float64 {
	return float64(runtime.GOMAXPROCS(0)) / c.PerJob().Seconds()
}

func (c signatureCap) String() string {
	return fmt.Sprintf("seal %.1f µs, open %.1f µs, ledger check %.1f µs of one core; %d signatures, %d checks and %d ledger checks per batch job = %.2f ms of CPU, so %d cores cap at %.0f jobs/s",
		us(c.Seal), us(c.Open), us(c.LedgerCheck), c.Seals, c.Opens, c.LedgerChecks,
		float64(c.PerJob().Microseconds())/1000, runtime.GOMAXPROCS(0), c.JobsPerSecond())
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }

// measureCap times market seals and opens of a batch offer on every core,
// and the ledger's batched entry checks, for a testnet of nodes nodes.
//
// The collector is off while it measures: the cap is the signatures'
// arithmetic, and with it on, a low GOGC would slow the measurement (each
// cycle marks whatever the stopped testnet left) and so flatter the burst
// against it.
func measureCap(network string, nodes, providers int) (signatureCap, error) {
	runtime.GC()
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	var c signatureCap
	c.Seals, c.Opens, c.LedgerChecks = batchJobSignatures(nodes, providers)
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return c, err
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return c, err
	}
	now := time.Now()
	// SealMarket fills in the message's envelope fields: one message each.
	offer := func() *pb.MarketMessage {
		return &pb.MarketMessage{Round: 1, Body: &pb.MarketMessage_Offer{Offer: &pb.Offer{
			Requester: []byte(id), Network: network, Nonce: make([]byte, 16),
			CreatedUnixMs: now.UnixMilli(), DeadlineUnixMs: now.Add(5 * time.Minute).UnixMilli(),
			Spec: &pb.JobSpec{Executor: "noop", Tier: protocol.TierBatch, MaxPrice: 10000, MaxDurationMs: 10000, Resources: &pb.Resources{Gpus: 1}},
		}}}
	}
	raw, err := protocol.SealMarket(key, network, now.Add(time.Hour), offer())
	if err != nil {
		return c, err
	}
	const ops = 20000
	sealRate, err := verifyRate(ops, ops, func(int) bool {
		_, err := protocol.SealMarket(key, network, now.Add(time.Hour), offer())
		return err == nil
	})
	if err != nil {
		return c, err
	}
	openRate, err := verifyRate(ops, ops, func(int) bool {
		_, err := protocol.OpenMarket(raw, network, now)
		return err == nil
	})
	if err != nil {
		return c, err
	}
	raws, _, err := interleavedChains(100, 150)
	if err != nil {
		return c, err
	}
	sigs, err := benchSigs(raws)
	if err != nil {
		return c, err
	}
	checkRate, err := batchVerifyRate(sigs)
	if err != nil {
		return c, err
	}
	cores := float64(runtime.GOMAXPROCS(0))
	perCore := func(rate float64) time.Duration { return time.Duration(cores / rate * float64(time.Second)) }
	c.Seal, c.Open, c.LedgerCheck = perCore(sealRate), perCore(openRate), perCore(checkRate)
	return c, nil
}
