package storage

// Transitional aliases: the ledger's rules moved to protocol/ledger and
// the reconciliation to protocol/riblt (issue 16). They keep the packages
// that still name them through storage compiling until
// /work/wt/pure-rewrite.sh rewrites those to the new packages and deletes
// this file. Nothing in storage uses them.

import (
	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/protocol/riblt"
)

// Entries, their bodies and encodings.
type (
	Hash        = ledger.Hash
	Kind        = ledger.Kind
	Body        = ledger.Body
	GrantBody   = ledger.GrantBody
	HoldBody    = ledger.HoldBody
	ReleaseBody = ledger.ReleaseBody
	PaymentBody = ledger.PaymentBody
	LeaseBody   = ledger.LeaseBody
	Usage       = ledger.Usage
	ReceiptBody = ledger.ReceiptBody
	Entry       = ledger.Entry
)

const (
	MaxEntrySize   = ledger.MaxEntrySize
	KindGrant      = ledger.KindGrant
	KindHold       = ledger.KindHold
	KindRelease    = ledger.KindRelease
	KindPayment    = ledger.KindPayment
	KindLease      = ledger.KindLease
	KindReceipt    = ledger.KindReceipt
	SignatureBatch = ledger.SignatureBatch
)

func EncodeBody(b Body) []byte                        { return ledger.EncodeBody(b) }
func DecodeBody(kind Kind, data []byte) (Body, error) { return ledger.DecodeBody(kind, data) }
func DecodeEntry(data []byte) (Entry, error)          { return ledger.DecodeEntry(data) }

// Fraud proofs, lease grants, genesis.
type (
	FraudProof        = ledger.FraudProof
	EquivocationError = ledger.EquivocationError
	LeaseGrant        = ledger.LeaseGrant
	Genesis           = ledger.Genesis
	GenesisGrant      = ledger.GenesisGrant
	GenesisFaucet     = ledger.GenesisFaucet
	GenesisEntryRate  = ledger.GenesisEntryRate
	Problem           = ledger.Problem
)

const (
	GrantSize         = ledger.GrantSize
	DefaultEntryBurst = ledger.DefaultEntryBurst
	DefaultEntryRate  = ledger.DefaultEntryRate
)

func DecodeFraudProof(data []byte) (FraudProof, error) { return ledger.DecodeFraudProof(data) }
func ParseGenesis(data []byte) (*Genesis, error)       { return ledger.ParseGenesis(data) }

// Errors of decoding, signatures and the rules.
var (
	ErrMalformed        = ledger.ErrMalformed
	ErrBadSignature     = ledger.ErrBadSignature
	ErrBadAccount       = ledger.ErrBadAccount
	ErrDuplicate        = ledger.ErrDuplicate
	ErrGap              = ledger.ErrGap
	ErrBrokenChain      = ledger.ErrBrokenChain
	ErrBadTimestamp     = ledger.ErrBadTimestamp
	ErrFutureTime       = ledger.ErrFutureTime
	ErrBadGrant         = ledger.ErrBadGrant
	ErrOverdraft        = ledger.ErrOverdraft
	ErrUnfunded         = ledger.ErrUnfunded
	ErrNoLease          = ledger.ErrNoLease
	ErrRateLimited      = ledger.ErrRateLimited
	ErrHoldExists       = ledger.ErrHoldExists
	ErrNoHold           = ledger.ErrNoHold
	ErrPaymentAboveHold = ledger.ErrPaymentAboveHold
	ErrAlreadyPaid      = ledger.ErrAlreadyPaid
	ErrOverflow         = ledger.ErrOverflow
	ErrFrozen           = ledger.ErrFrozen
	ErrEquivocation     = ledger.ErrEquivocation
	ErrBadFraudProof    = ledger.ErrBadFraudProof
	ErrGenesis          = ledger.ErrGenesis
	ErrBadLeaseGrant    = ledger.ErrBadLeaseGrant
)

// Reconciliation, renamed in riblt.
type (
	ReconcileSet       = riblt.Set
	ReconcileConfig    = riblt.Config
	ReconcileStats     = riblt.Stats
	ReconcileInitiator = riblt.Initiator
	ReconcileResponder = riblt.Responder
)

const (
	DefaultReconcileCapacity       = riblt.DefaultCapacity
	MaxReconcileCapacity           = riblt.MaxCapacity
	ReconcileMaxFrame              = riblt.MaxFrame
	DefaultReconcileInitialSymbols = riblt.DefaultInitialSymbols
	DefaultReconcileMaxRounds      = riblt.DefaultMaxRounds
)

var (
	ErrReconcileFrame     = riblt.ErrFrame
	ErrReconcileProtocol  = riblt.ErrProtocol
	ErrDifferenceTooLarge = riblt.ErrDifferenceTooLarge
	ErrReconcileLimit     = riblt.ErrLimit
	ErrReconcileAborted   = riblt.ErrAborted
)

func NewReconcileSet(capacity int) *ReconcileSet { return riblt.NewSet(capacity) }
func NewReconcileInitiator(set *ReconcileSet, cfg ReconcileConfig) *ReconcileInitiator {
	return riblt.NewInitiator(set, cfg)
}
func NewReconcileResponder(set *ReconcileSet, cfg ReconcileConfig) *ReconcileResponder {
	return riblt.NewResponder(set, cfg)
}
