package node_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/testnet"
)

// A provider restarted after a run ended, before the requester accepted
// its bill, still bills the run, claims it and delivers the result: its
// open bill is on disk, not only in its engine's memory. (Without that,
// the restarted provider forgot the bill: the run went unpaid and the
// requester never got its result.)
func TestProviderRestartedWithAnOpenBillIsPaid(t *testing.T) {
	tn := startTestnet(t, 3, testnet.WithProviders(1)) // 0 bootstrap, 1 provider, 2 requester
	ctx := context.Background()
	if err := testnet.WaitFor(ctx, deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	const prov, req = 1, 2
	provider := tn.Node(prov).ID()
	c := clientFor(t, tn, req)
	queryUntil(t, c, api.ProviderQuery{GPU: "any"}, []string{provider.String()})
	j, err := c.SubmitJob(ctx, noopJob("interactive", "500ms", "2m"))
	if err != nil {
		t.Fatal(err)
	}
	waitJobs(t, c, []string{j.ID}, "running", deadline)
	// The requester stops hearing the provider: the run ends and is
	// billed, and the bill cannot arrive.
	tn.Node(req).BlockPeer(provider)
	if err := testnet.WaitFor(ctx, deadline, func() error {
		if n := tn.Node(prov).OpenBills(); n != 1 {
			return fmt.Errorf("the provider has %d open bills", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := tn.Stop(prov); err != nil {
		t.Fatal(err)
	}
	if err := tn.Restart(ctx, prov); err != nil {
		t.Fatal(err)
	}
	if n := tn.Node(prov).OpenBills(); n != 1 {
		t.Fatalf("the restarted provider has %d open bills, want its run's", n)
	}
	tn.Node(req).UnblockPeer(provider)
	if _, err := tn.Node(prov).Connect(ctx, tn.Node(req).ListenAddrs()[0]); err != nil {
		t.Fatal(err)
	}
	// The bill goes again, is accepted and claimed; the result follows.
	done := waitJobs(t, c, []string{j.ID}, "succeeded", time.Minute)[j.ID]
	if done.Provider != provider.String() || done.Payment == nil || done.Payment.State != "paid" || done.Payment.To != provider.String() {
		t.Fatalf("job: provider %s, payment %+v; want paid to %s", done.Provider, done.Payment, provider)
	}
	ledgersAgree(t, tn)
	if s := settlements(t, tn.Node(0), tn.Node(req).ID())[mustHash(t, j.ID)]; !s.paidOnceTo(provider) {
		t.Fatalf("settlement %+v; want one final claim by the provider", s)
	}
	// The result was acknowledged: nothing is left to settle.
	if err := testnet.WaitFor(ctx, deadline, func() error {
		if n := tn.Node(prov).OpenBills(); n != 0 {
			return fmt.Errorf("the provider has %d open bills", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
