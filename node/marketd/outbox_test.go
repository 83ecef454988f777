package marketd

import (
	"fmt"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol/pb"
)

// A full outbox gives a new peer the place of its least recently used idle
// queue; with none idle, it admits only business, and that within a bound.
func TestOutboxAdmission(t *testing.T) {
	const places = 3
	o := &outbox{peers: map[peer.ID]*peerQueue{}, maxPeers: places}
	queues := map[peer.ID]*peerQueue{}
	for i, used := range []uint64{5, 2, 9} {
		p := peer.ID(fmt.Sprint("peer", i))
		q := o.admit(p, false)
		if q == nil {
			t.Fatalf("no place for peer %d of %d", i, places)
		}
		q.used = used
		queues[p] = q
	}
	// All idle: the least recently used (peer1) makes room.
	if o.admit("new", false) == nil {
		t.Fatal("a new peer found no place among idle queues")
	}
	if _, ok := o.peers["peer1"]; ok || len(o.peers) != places {
		t.Fatalf("peer1 kept its place; %d queues", len(o.peers))
	}
	select {
	case <-queues["peer1"].gone:
	default:
		t.Fatal("the evicted queue's goroutine was not told to end")
	}
	// None idle (one writing, the rest with messages waiting): a bid or a
	// decline to a new peer is refused, business is admitted past the
	// bound, up to maxBusinessPeers more.
	for _, q := range o.peers {
		q.msgs = [][]byte{{1}}
	}
	o.peers["new"].msgs, o.peers["new"].busy = nil, true
	if o.admit("stranger", false) != nil {
		t.Fatal("a peer with no business got a place with no queue idle")
	}
	for i := range maxBusinessPeers {
		q := o.admit(peer.ID(fmt.Sprint("lessee", i)), true)
		if q == nil {
			t.Fatalf("business with peer %d refused", i)
		}
		q.msgs = [][]byte{{1}} // as send queues it
	}
	if o.admit("one too many", true) != nil || len(o.peers) != places+maxBusinessPeers {
		t.Fatalf("%d queues, want at most %d", len(o.peers), places+maxBusinessPeers)
	}
}

func TestIsBusiness(t *testing.T) {
	for _, tc := range []struct {
		msg  *pb.MarketMessage
		want bool
	}{
		{&pb.MarketMessage{Body: &pb.MarketMessage_Bid{Bid: &pb.Bid{}}}, false},
		{&pb.MarketMessage{Body: &pb.MarketMessage_Decline{Decline: &pb.Decline{}}}, false},
		{&pb.MarketMessage{Body: &pb.MarketMessage_Award{Award: &pb.Award{}}}, true},
		{&pb.MarketMessage{Body: &pb.MarketMessage_Accept{Accept: &pb.Accept{}}}, true},
		{&pb.MarketMessage{Body: &pb.MarketMessage_Heartbeat{Heartbeat: &pb.Heartbeat{}}}, true},
		{&pb.MarketMessage{Body: &pb.MarketMessage_Result{Result: &pb.Result{}}}, true},
		{&pb.MarketMessage{Body: &pb.MarketMessage_Cancel{Cancel: &pb.Cancel{}}}, true},
	} {
		if got := isBusiness(tc.msg); got != tc.want {
			t.Errorf("isBusiness(%T) = %v, want %v", tc.msg.Body, got, tc.want)
		}
	}
}
