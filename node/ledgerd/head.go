package ledgerd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/node/api"
	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/ledger"
)

// A node whose data dir was restored from an older copy does not know the
// entries it signed after the copy was taken; the network does. Signing
// from its own head would give a second entry at a seq the network holds:
// an equivocation, which freezes the account everywhere, for good. So
// after every start the node signs nothing until peers have shown it its
// own account's head (confirmHead); the head gate holds its writes until
// then.

// headState is where a node stands with its own account's head.
type headState int

const (
	// headConfirming: asking peers; own writes wait, jobs are taken.
	headConfirming headState = iota
	// headUnreachable: no quorum of peers answered within head_wait; own
	// writes still wait, new jobs are refused and waiting awards fail.
	headUnreachable
	// headConfirmed: the node has the network's view of its head and signs.
	headConfirmed
)

func (s headState) String() string {
	switch s {
	case headConfirming:
		return "confirming"
	case headUnreachable:
		return "unreachable"
	}
	return "confirmed"
}

// headGate holds the node's own signing until its head is confirmed.
type headGate struct {
	mu      sync.Mutex
	state   headState
	detail  string
	learned int // own entries taken from peers
	// shown is the highest seq of an own entry, validly signed, that a
	// peer has shown this node since it started: the gate does not open
	// below it, whoever else answers.
	shown uint64
	// opened is closed once the head is confirmed; stalled once
	// confirming has outlasted head_wait.
	opened, stalled chan struct{}
}

func newHeadGate() *headGate {
	return &headGate{detail: "not asked yet", opened: make(chan struct{}), stalled: make(chan struct{})}
}

// open lets the node sign.
func (g *headGate) open(detail string, learned int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.state == headConfirmed {
		return
	}
	g.state, g.detail, g.learned = headConfirmed, detail, learned
	close(g.opened)
}

// stall marks a confirmation that has waited head_wait in vain.
func (g *headGate) stall() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.state == headConfirming {
		g.state = headUnreachable
		close(g.stalled)
	}
}

// note records what the last attempt to confirm found.
func (g *headGate) note(detail string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.state != headConfirmed {
		g.detail = detail
	}
}

// saw records that a peer showed an own entry with seq.
func (g *headGate) saw(seq uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.shown = max(g.shown, seq)
}

// highestShown is the highest own seq a peer has shown.
func (g *headGate) highestShown() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.shown
}

func (g *headGate) status() (headState, string, int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.state, g.detail, g.learned
}

func (g *headGate) isOpen() bool {
	s, _, _ := g.status()
	return s == headConfirmed
}

func (g *headGate) isStalled() bool {
	s, _, _ := g.status()
	return s == headUnreachable
}

// err is nil once the node may sign, else why it may not.
func (g *headGate) err() error {
	s, detail, _ := g.status()
	if s == headConfirmed {
		return nil
	}
	return &headError{state: s, detail: detail}
}

// errHeadUnconfirmed marks a write refused because the node has not
// confirmed its head.
var errHeadUnconfirmed = errors.New("ledger head not confirmed")

// headError is the error of a write, or a job, refused while the node
// has not confirmed its own account's head with its peers.
type headError struct {
	state  headState
	detail string
}

func (e *headError) Error() string {
	if e.state == headUnreachable {
		return fmt.Sprintf("%v: this node has not confirmed its own ledger account's head with its peers within ledger.head_wait (%s); "+
			"it signs nothing (no hold, no payment) until it does, so that it cannot sign an entry the network already holds", errHeadUnconfirmed, e.detail)
	}
	return fmt.Sprintf("%v yet: this node is asking its peers for its own ledger account's head (%s)", errHeadUnconfirmed, e.detail)
}

func (e *headError) Unwrap() []error { return []error{errHeadUnconfirmed, api.ErrNotSigning} }

// frozenError is the error of a job, or a hold, refused because the
// node's own account is frozen.
type frozenError struct {
	account peer.ID
	seq     uint64 // where it equivocated; 0 if not known
}

func (e *frozenError) Error() string {
	at := ""
	if e.seq > 0 {
		at = fmt.Sprintf(" at seq %d", e.seq)
	}
	return fmt.Sprintf("this node's ledger account %s is frozen: the network holds two different entries it signed%s "+
		"(equivocation, as a node does that signs again after its data dir was restored from an older copy); "+
		"every node refuses its new entries, so it can hold and pay no credits", e.account, at)
}

func (e *frozenError) Unwrap() []error { return []error{ledger.ErrFrozen, api.ErrNotSigning} }

// frozen returns the error that names this node's freeze, or nil if its
// account is not frozen.
func (s *Service) frozen() error {
	if ok, err := s.ledger.Frozen(s.self); err != nil || !ok {
		return nil
	}
	e := &frozenError{account: s.self}
	if p, ok, err := s.ledger.FraudProofFor(s.self); err == nil && ok {
		if a, err := ledger.DecodeEntry(p.A); err == nil {
			e.seq = a.Seq
		}
	}
	return e
}

// CanTakeJobs reports why this node cannot take a new job now: its
// account is frozen, or no peer has answered for its head within
// head_wait. While the node is still asking, a job is taken: its hold is
// written once the head is confirmed.
func (s *Service) CanTakeJobs() error {
	if err := s.frozen(); err != nil {
		return err
	}
	if s.head.isStalled() {
		return s.head.err()
	}
	return nil
}

// describeRefusal turns an own write's error into what a requester is told.
func (s *Service) describeRefusal(err error) error {
	switch {
	case errors.Is(err, ledger.ErrFrozen):
		if ferr := s.frozen(); ferr != nil {
			return ferr
		}
		return err
	case errors.Is(err, errHeadUnconfirmed):
		return err
	case errors.Is(err, ledger.ErrOverdraft):
		return fmt.Errorf("not enough credits: %w", err)
	}
	return fmt.Errorf("the ledger refused the hold: %w", err)
}

// headAskTimeout bounds one peer's answer for this node's head.
const headAskTimeout = 10 * time.Second

// StartHeadSync confirms this node's head in the background, then sweeps
// its leftover holds (sweepLoop) for as long as the service runs. Nothing
// is signed until then.
func (s *Service) StartHeadSync() {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if s.confirmHead(s.ctx) {
			s.wg.Go(func() { s.claimedLoop(s.ctx) })
			s.sweepLoop(s.ctx)
		}
	}()
}

// confirmHead learns this node's own head from its peers: it asks up to
// head_peers connected peers for its account's entries after its own
// head, takes what they hold, and opens the head gate once head_quorum of
// them have answered and it holds every own entry any peer has shown it
// (its head is at least the highest own seq shown): an entry it cannot
// take yet (a hold funded by a payment no peer has sent) is one it must
// not sign again, however many other peers answer that they hold
// nothing. With no peer to ask it waits for one (a connection wakes it);
// after head_wait it says so (the gate's unreachable state: new jobs are
// refused with the reason), and keeps asking. Two cases need no peer: a node
// configured with head_quorum = 0, and a node whose database holds no
// entry of its own and that has no bootstrap peers, the first member of
// a new network (it has never signed, so there is nothing it could
// repeat). It reports false if ctx ended first.
func (s *Service) confirmHead(ctx context.Context) bool {
	start, err := s.ledger.Head(s.self)
	if err != nil {
		s.log.Error("read own ledger head; signing nothing", "err", err)
		s.head.note(fmt.Sprintf("own head unreadable: %v", err))
		return false
	}
	cfg := s.cfg
	switch {
	case cfg.HeadQuorum == 0:
		s.log.Warn("ledger.head_quorum = 0: signing without asking peers for this node's own head; " +
			"a data dir restored from an older copy would sign entries the network already holds, and freeze its account")
		return s.openHead(ctx, start.Seq, "not asked: ledger.head_quorum = 0")
	case start.Seq == 0 && !cfg.Bootstrapped:
		return s.openHead(ctx, start.Seq, "not asked: a new account and no bootstrap peers (the first node of a network)")
	}
	conns := make(chan struct{}, 1)
	notifee := &network.NotifyBundle{ConnectedF: func(network.Network, network.Conn) {
		select {
		case conns <- struct{}{}:
		default:
		}
	}}
	s.host.Network().Notify(notifee)
	defer s.host.Network().StopNotify(notifee)
	giveUp := s.clock.NewTimer(cfg.HeadWait)
	defer giveUp.Stop()
	const firstRetry, lastRetry = 100 * time.Millisecond, 5 * time.Second
	for delay := firstRetry; ; delay = min(2*delay, lastRetry) {
		answered, detail := s.askHead(ctx)
		if answered >= cfg.HeadQuorum {
			behind, err := s.behindShown()
			if err != nil {
				s.log.Error("read own ledger head; signing nothing", "err", err)
				s.head.note(fmt.Sprintf("own head unreadable: %v", err))
				return false
			}
			if behind == "" {
				return s.openHead(ctx, start.Seq, detail)
			}
			detail += "; " + behind
		}
		s.head.note(detail)
		s.log.Info("ledger head not confirmed yet; signing nothing", "detail", detail)
		retry := s.clock.NewTimer(delay)
		select {
		case <-ctx.Done():
			retry.Stop()
			return false
		case <-conns:
			delay = firstRetry / 2 // a new peer: ask it soon, then back off again
		case <-giveUp.C():
			s.head.stall()
			s.log.Warn("no peer has confirmed this node's ledger head; it signs nothing and refuses new jobs until one does",
				"waited", cfg.HeadWait, "detail", detail)
		case <-retry.C():
		}
		retry.Stop()
	}
}

// behindShown says, in words, why the node may not sign though enough
// peers have answered: a peer has shown it an own entry with a higher seq
// than its head, which it could not take (it waits for entries of other
// accounts). "" when there is none, or the account is frozen (it signs
// nothing that counts then anyway).
func (s *Service) behindShown() (string, error) {
	shown := s.head.highestShown()
	if shown == 0 || s.frozen() != nil {
		return "", nil
	}
	head, err := s.ledger.Head(s.self)
	if err != nil || head.Seq >= shown {
		return "", err
	}
	return fmt.Sprintf("a peer has shown this node's own entries up to seq %d, and it holds them only up to seq %d "+
		"(the rest wait for entries of other accounts that no peer has brought yet): it signs nothing until it holds them all, "+
		"lest it sign one of those seqs again", shown, head.Seq), nil
}

// askHead asks up to head_peers connected peers, at once, for this node's
// entries after its head, and takes what they send. It returns how many
// answered in full, and what it found, in words.
func (s *Service) askHead(ctx context.Context) (answered int, detail string) {
	peers := s.host.Network().Peers()
	if len(peers) == 0 {
		return 0, "no peer connected"
	}
	rand.Shuffle(len(peers), func(i, j int) { peers[i], peers[j] = peers[j], peers[i] })
	peers = peers[:min(len(peers), s.cfg.HeadPeers)]
	errs := make([]error, len(peers))
	var wg sync.WaitGroup
	for i, p := range peers {
		wg.Go(func() { errs[i] = s.ownChainFrom(ctx, p) })
	}
	wg.Wait()
	var failed []string
	for i, err := range errs {
		if err == nil {
			answered++
		} else {
			failed = append(failed, fmt.Sprintf("%s: %v", peers[i], err))
		}
	}
	detail = fmt.Sprintf("%d of %d peers asked answered, %d needed", answered, len(peers), s.cfg.HeadQuorum)
	if len(failed) > 0 {
		detail += " (" + strings.Join(failed, "; ") + ")"
	}
	return answered, detail
}

// ownChainFrom fetches from p this node's own entries after its head and
// ingests them. It fails unless this node ends up holding every entry of
// its own that p sent: entries that wait for credits from other chains
// (a hold funded by a payment this node lacks) are brought by a
// reconciliation with p. Whatever becomes of them, the highest seq of the
// own entries p sent is recorded in the head gate (headGate.saw): the
// node never signs below it.
func (s *Service) ownChainFrom(ctx context.Context, p peer.ID) error {
	ctx, cancel := context.WithTimeout(ctx, headAskTimeout)
	defer cancel()
	for range 64 { // bounded, like syncChain: 64 batches of protocol.MaxChainBatch
		head, err := s.ledger.Head(s.self)
		if err != nil {
			return err
		}
		raws, err := s.fetchChain(ctx, p, s.self, head.Seq)
		if err != nil {
			return err
		}
		if len(raws) == 0 {
			return nil
		}
		s.head.saw(s.highestOwn(raws))
		last, err := ledger.DecodeEntry(raws[len(raws)-1])
		if err != nil || last.Account != s.self {
			return fmt.Errorf("sent what is not this node's chain (%v)", err)
		}
		if _, err := s.ingestFetched(p, raws); err != nil {
			return err
		}
		if s.frozen() != nil {
			return nil // nothing this node signs counts any more: no use asking further
		}
		if err := s.holdsOwnUpTo(ctx, p, last.Seq); err != nil {
			return err
		}
		if len(raws) < protocol.MaxChainBatch {
			return nil
		}
	}
	return errors.New("more of this node's entries than one start-up fetch takes")
}

// highestOwn returns the highest seq among raws of an entry that this
// node signed (0 if none): only its own signature counts, so a peer can
// hold the gate closed only with entries this node did sign. Checked from
// the highest seq down, it costs one signature check when the last entry
// is the node's own.
func (s *Service) highestOwn(raws [][]byte) uint64 {
	var own []ledger.Entry
	for _, raw := range raws {
		if e, err := ledger.DecodeEntry(raw); err == nil && e.Account == s.self {
			own = append(own, e)
		}
	}
	slices.SortFunc(own, func(a, b ledger.Entry) int { return cmp.Compare(b.Seq, a.Seq) })
	for _, e := range own {
		if e.VerifySignature(s.cfg.Network) == nil {
			return e.Seq
		}
	}
	return 0
}

// holdsOwnUpTo makes sure this node's ledger holds its own entries up to
// seq, reconciling with p if some wait for entries of other accounts.
func (s *Service) holdsOwnUpTo(ctx context.Context, p peer.ID, seq uint64) error {
	for try := 0; ; try++ {
		head, err := s.ledger.Head(s.self)
		if err != nil {
			return err
		}
		if head.Seq >= seq {
			return nil
		}
		if try == 1 {
			return fmt.Errorf("it holds this node's entries up to seq %d, which do not validate here (own head %d)", seq, head.Seq)
		}
		if err := s.Reconcile(ctx, p); err != nil {
			return fmt.Errorf("reconcile for this node's entries up to seq %d: %w", seq, err)
		}
	}
}

// openHead opens the head gate: it ends the jobs that its peers' entries
// show settled since the data dir's copy was taken, claims the genesis
// grant if this node has not, and lets the writer sign. It reports false
// if ctx ended first.
func (s *Service) openHead(ctx context.Context, startSeq uint64, detail string) bool {
	head, err := s.ledger.Head(s.self)
	if err != nil {
		s.log.Error("read own ledger head; signing nothing", "err", err)
		return false
	}
	learned := int(head.Seq - startSeq)
	if learned > 0 {
		s.log.Warn("took this node's own ledger entries from its peers: its data dir lacked them (restored from an older copy?)",
			"entries", learned, "head", head.Seq)
		if !s.endSettledJobs(ctx, startSeq) {
			return false
		}
	}
	if err := s.frozen(); err != nil {
		s.log.Error("own ledger account frozen", "err", err)
	} else if err := s.claimGrant(); err != nil {
		s.log.Error("claim genesis grant", "err", err)
	}
	s.head.open(detail, learned)
	s.log.Info("ledger head confirmed; signing", "seq", head.Seq, "learned", learned, "detail", detail)
	return true
}

// claimGrant writes this node's genesis grant, once: the first entry of
// its chain. The head gate is not open yet: the caller has confirmed the
// head and holds everyone else's writes back.
func (s *Service) claimGrant() error {
	amount, ok := s.ledger.Genesis().GrantFor(s.self)
	if !ok {
		return nil
	}
	if head, err := s.ledger.Head(s.self); err != nil || head.Seq != 0 {
		return err
	}
	_, err := s.signEntry(ledger.GrantBody{Amount: amount})
	return err
}

// endSettledJobs ends the jobs that this node's restored records show
// active while its own entries after afterSeq, taken from its peers, show
// them paid or released, with nothing held for them now: the node that
// wrote those entries had settled them, and offering or running them
// again would pay or hold twice for one job. It reports false if ctx
// ended first.
func (s *Service) endSettledJobs(ctx context.Context, afterSeq uint64) bool {
	es, err := s.ledger.Entries(s.self, afterSeq, 0)
	if err != nil {
		s.log.Error("read own entries taken from peers", "err", err)
		return true
	}
	how := map[protocol.JobID]string{}
	for _, e := range es {
		switch b := e.Body.(type) {
		case ledger.PaymentBody:
			how[protocol.JobID(b.Job)] = fmt.Sprintf("paid (%v credits to %s)", credits(b.Amount), b.To)
		case ledger.ReleaseBody:
			how[protocol.JobID(b.Job)] = "released"
		}
	}
	for id := range how {
		if _, open, err := s.ledger.HoldFor(s.self, ledger.Hash(id)); err != nil || open {
			delete(how, id) // held again since (a re-award): the market carries on with it
		}
	}
	if len(how) == 0 {
		return true
	}
	reasons := make(map[protocol.JobID]string, len(how))
	for id, h := range how {
		reasons[id] = "ended before this node's data dir was restored: its ledger shows the job " + h
	}
	ended, err := s.market.End(ctx, reasons)
	if err != nil {
		return false
	}
	if ended > 0 {
		s.log.Warn("ended jobs that the ledger shows settled since the data dir's copy was taken", "jobs", ended)
	}
	return true
}

// Status describes the node's own account for GET /v1/node.
func (s *Service) Status() api.LedgerStatus {
	state, detail, learned := s.head.status()
	st := api.LedgerStatus{Head: state.String(), Detail: detail, Learned: learned}
	if s.ledger != nil {
		if h, err := s.ledger.Head(s.self); err == nil {
			st.Seq = h.Seq
		}
		st.Frozen = s.frozen() != nil
	}
	return st
}
