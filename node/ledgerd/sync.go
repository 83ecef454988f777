package ledgerd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/ledger"
)

const syncTimeout = 30 * time.Second

// syncProtocol is the stream protocol ID of ledger sync on the service's
// network.
func (s *Service) syncProtocol() libp2pproto.ID {
	return libp2pproto.ID(protocol.ReconcileProtocol(s.cfg.Network))
}

// HandleSync answers a ledger sync request from a peer: the stream handler
// of protocol.ReconcileProtocol.
func (s *Service) HandleSync(st network.Stream) {
	if !s.withDB(func() { s.serveSync(st) }) {
		st.Reset()
	}
}

func (s *Service) serveSync(st network.Stream) {
	defer st.Close()
	st.SetDeadline(time.Now().Add(syncTimeout))
	br := bufio.NewReader(st)
	bw := bufio.NewWriter(st)
	kind, err := br.ReadByte()
	if err == nil {
		switch kind {
		case protocol.SyncChain:
			err = s.serveChain(br, bw)
		case protocol.SyncReconcile:
			err = s.serveReconcile(st.Conn().RemotePeer(), br, bw)
		case protocol.SyncList:
			err = s.serveListing(br, bw)
		case protocol.SyncFraud:
			err = s.serveFraudProofs(br, bw)
		default:
			err = fmt.Errorf("unknown request %d", kind)
		}
	}
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		s.log.Debug("ledger sync request", "peer", st.Conn().RemotePeer(), "err", err)
		st.Reset()
	}
}

func (s *Service) serveChain(br *bufio.Reader, bw *bufio.Writer) error {
	req, err := protocol.ReadFrame(br, protocol.MaxSyncFrame)
	if err != nil {
		return err
	}
	if len(req) < 9 {
		return errors.New("short chain request")
	}
	after := binary.BigEndian.Uint64(req[:8])
	account, err := peer.IDFromBytes(req[8:])
	if err != nil {
		return fmt.Errorf("chain request: %w", err)
	}
	es, err := s.ledger.Entries(account, after, protocol.MaxChainBatch)
	if err != nil {
		return err
	}
	for _, e := range es {
		if err := protocol.WriteFrame(bw, e.Encode()); err != nil {
			return err
		}
	}
	return protocol.WriteFrame(bw, nil)
}

// syncChainOnce runs syncChain for account, one caller at a time: callers
// that queued behind a fetch find its entries already in the ledger.
func (s *Service) syncChainOnce(ctx context.Context, account peer.ID) error {
	unlock, err := s.lockChain(ctx, account)
	if err != nil {
		return err
	}
	defer unlock()
	return s.syncChain(ctx, account)
}

// syncChain fetches an account's chain from that account's node, from this
// node's head of it on, and ingests it: what a provider does when an award's
// hold follows entries it has not seen.
func (s *Service) syncChain(ctx context.Context, account peer.ID) error {
	for range 64 { // bounded: 64 batches of protocol.MaxChainBatch entries
		head, err := s.ledger.Head(account)
		if err != nil {
			return err
		}
		s.countReconcile(func(st *ReconcileStats) { st.ChainFetches++ })
		raws, err := s.fetchChain(ctx, account, account, head.Seq)
		if err != nil {
			return err
		}
		if len(raws) == 0 {
			return nil
		}
		if _, err := s.ingestFetched(account, raws); err != nil {
			return err
		}
		if len(raws) < protocol.MaxChainBatch {
			return nil
		}
	}
	return nil
}

func (s *Service) fetchChain(ctx context.Context, from, account peer.ID, after uint64) ([][]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	st, err := s.host.NewStream(ctx, from, s.syncProtocol())
	if err != nil {
		return nil, fmt.Errorf("ledger sync with %s: %w", from, err)
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(syncTimeout))
	req := binary.BigEndian.AppendUint64(nil, after)
	req = append(req, account...)
	var w bytes.Buffer
	w.WriteByte(protocol.SyncChain)
	protocol.WriteFrame(&w, req)
	if _, err := st.Write(w.Bytes()); err != nil {
		return nil, err
	}
	st.CloseWrite()
	br := bufio.NewReader(st)
	var raws [][]byte
	for len(raws) <= protocol.MaxChainBatch {
		b, err := protocol.ReadFrame(br, ledger.MaxEntrySize)
		if err != nil {
			return nil, fmt.Errorf("chain from %s: %w", from, err)
		}
		if len(b) == 0 {
			return raws, nil
		}
		raws = append(raws, b)
	}
	return nil, fmt.Errorf("chain from %s: more than %d entries", from, protocol.MaxChainBatch)
}
