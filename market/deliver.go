package market

import (
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// Delivery asks the provider's caller to let Requester fetch a result's
// blobs (ResultID, OutputsID; either may be empty) from this node. The
// engine asks it with every send of the result, and only once the claim
// that pays for it is written: the bill names these content IDs, and a
// requester that could fetch them on the bill alone would never sign
// for them (docs/TRUST.md, "How a job is paid").
type Delivery struct {
	Job       protocol.JobID
	Requester peer.ID
	ResultID  string
	OutputsID string
}

// deliver sends the result r of bill k to its requester, its claim
// written, and asks the caller to open r's blobs to it before it leaves (Ready's
// Deliveries are carried out before its Send). Asked again with each
// re-send, so a provider that restarts before it carried out the first
// (its bill on disk as delivering) grants access all the same.
func (e *Engine) deliver(k billKey, r *pb.Result) {
	if r.ResultId != "" || r.OutputsId != "" {
		e.ready.Deliveries = append(e.ready.Deliveries, Delivery{k.Job, k.Requester, r.ResultId, r.OutputsId})
	}
	e.send(k.Requester, &pb.MarketMessage{Body: &pb.MarketMessage_Result{Result: r}})
}
