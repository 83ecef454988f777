package node

import "github.com/mira-market/mira/protocol/pb"

// SetUsageHook makes the node a patched provider whose meter lies: each
// run from now on reports the usage rewrite returns.
func (n *Node) SetUsageHook(rewrite func(*pb.Usage) *pb.Usage) { n.market.SetUsageHook(rewrite) }
