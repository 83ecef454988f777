package protocol

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
)

// Blob transfer: job inputs (wasm modules, data) and results are
// content-addressed blobs named by a CIDv1 (raw codec, SHA2-256 multihash).
// A fetcher opens a stream, sends a request (content ID and the offset to
// resume from) and reads a response header followed by the blob's bytes
// from that offset to its end. The fetcher checks the whole blob against
// its ID on arrival; nothing in the stream is trusted.

const (
	// MaxBlobRequest bounds an encoded blob request.
	MaxBlobRequest = 256
	// MaxBlobHeader bounds an encoded blob response header.
	MaxBlobHeader = 1 << 10

	blobVersion = 1

	// Blob response statuses.
	BlobOK       = 0
	BlobNotFound = 1
	BlobRefused  = 2
)

// ErrBadContentID is returned for a content ID that is not a CIDv1 with a
// SHA2-256 multihash.
var ErrBadContentID = errors.New("bad content ID")

// BlobProtocol is the stream protocol ID of blob transfer on network.
func BlobProtocol(network string) string { return Prefix(network) + "/blob/1" }

// LogsProtocol is the stream protocol ID on which a provider streams a
// running job's output to its requester.
func LogsProtocol(network string) string { return Prefix(network) + "/logs/1" }

// BlobID returns the content ID of a blob whose SHA-256 is sum.
func BlobID(sum []byte) (cid.Cid, error) {
	m, err := mh.Encode(sum, mh.SHA2_256)
	if err != nil {
		return cid.Undef, fmt.Errorf("%w: %w", ErrBadContentID, err)
	}
	return cid.NewCidV1(cid.Raw, m), nil
}

// IsBlob reports whether b is the blob the content ID id names.
func IsBlob(b []byte, id string) bool {
	_, want, err := ParseBlobID(id)
	sum := sha256.Sum256(b)
	return err == nil && bytes.Equal(sum[:], want)
}

// ParseBlobID parses a content ID and returns it with the SHA-256 it names.
func ParseBlobID(s string) (cid.Cid, []byte, error) {
	c, err := cid.Decode(s)
	if err != nil {
		return cid.Undef, nil, fmt.Errorf("%w: %q: %w", ErrBadContentID, s, err)
	}
	return checkBlobID(c)
}

func checkBlobID(c cid.Cid) (cid.Cid, []byte, error) {
	d, err := mh.Decode(c.Hash())
	if err != nil || d.Code != mh.SHA2_256 || len(d.Digest) != 32 || c.Version() != 1 {
		return cid.Undef, nil, fmt.Errorf("%w: %s is not a CIDv1 over SHA2-256", ErrBadContentID, c)
	}
	return c, d.Digest, nil
}

// BlobRequest asks for a blob from Offset to its end.
type BlobRequest struct {
	ID     cid.Cid
	Offset uint64
}

// Encode returns the request's wire form: version, length-prefixed CID
// bytes, offset.
func (r BlobRequest) Encode() []byte {
	b := []byte{blobVersion}
	b = binary.AppendUvarint(b, uint64(len(r.ID.Bytes())))
	b = append(b, r.ID.Bytes()...)
	return binary.AppendUvarint(b, r.Offset)
}

// ReadBlobRequest reads and checks one request from r.
func ReadBlobRequest(r FrameReader) (BlobRequest, error) {
	var req BlobRequest
	raw, err := readBlobFrame(r, MaxBlobRequest)
	if err != nil {
		return req, err
	}
	br := bytes.NewReader(raw)
	idBytes, err := ReadFrame(br, 64)
	if err != nil {
		return req, fmt.Errorf("%w: blob request: %w", ErrBadMessage, err)
	}
	c, err := cid.Cast(idBytes)
	if err != nil {
		return req, fmt.Errorf("%w: blob request: %w", ErrBadContentID, err)
	}
	if req.ID, _, err = checkBlobID(c); err != nil {
		return req, err
	}
	if req.Offset, err = binary.ReadUvarint(br); err != nil || br.Len() != 0 {
		return req, fmt.Errorf("%w: blob request: bad offset or trailing bytes", ErrBadMessage)
	}
	return req, nil
}

// BlobHeader answers a blob request. Size is the whole blob's size; the
// bytes from the request's offset to Size follow it on the stream.
type BlobHeader struct {
	Status  byte
	Size    uint64
	Message string
}

// Encode returns the header's wire form.
func (h BlobHeader) Encode() []byte {
	b := []byte{blobVersion, h.Status}
	b = binary.AppendUvarint(b, h.Size)
	b = binary.AppendUvarint(b, uint64(len(h.Message)))
	return append(b, h.Message...)
}

// ReadBlobHeader reads and checks one response header from r.
func ReadBlobHeader(r FrameReader) (BlobHeader, error) {
	var h BlobHeader
	raw, err := readBlobFrame(r, MaxBlobHeader)
	if err != nil {
		return h, err
	}
	br := bytes.NewReader(raw)
	if h.Status, err = br.ReadByte(); err != nil || h.Status > BlobRefused {
		return h, fmt.Errorf("%w: blob header: bad status", ErrBadMessage)
	}
	if h.Size, err = binary.ReadUvarint(br); err != nil {
		return h, fmt.Errorf("%w: blob header: %w", ErrBadMessage, err)
	}
	msg, err := ReadFrame(br, MaxBlobHeader)
	if err != nil || br.Len() != 0 {
		return h, fmt.Errorf("%w: blob header: bad message", ErrBadMessage)
	}
	h.Message = string(msg)
	return h, nil
}

// readBlobFrame reads a frame of 1..limit bytes and checks its version
// byte, which it strips.
func readBlobFrame(r FrameReader, limit int) ([]byte, error) {
	b, err := ReadFrame(r, uint64(limit))
	if err != nil {
		return nil, err
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: frame of 0 bytes, limit %d", ErrTooLarge, limit)
	}
	if b[0] != blobVersion {
		return nil, fmt.Errorf("%w: version %d", ErrBadMessage, b[0])
	}
	return b[1:], nil
}
