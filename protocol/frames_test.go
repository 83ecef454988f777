package protocol

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"
)

// TestReadFrame: ReadFrame reads what WriteFrame writes, empty frames
// included, and names what is wrong with the rest.
func TestReadFrame(t *testing.T) {
	for _, tc := range []struct {
		name  string
		in    []byte
		limit uint64
		want  []byte
		err   error
	}{
		{"a frame", Frame([]byte("abc")), 3, []byte("abc"), nil},
		{"an empty frame", Frame(nil), 3, []byte{}, nil},
		{"over the limit", Frame([]byte("abcd")), 3, nil, ErrTooLarge},
		{"nothing", nil, 3, nil, io.EOF},
		{"short", Frame([]byte("abc"))[:3], 3, nil, io.ErrUnexpectedEOF},
		{"bad length", []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, 3, nil, ErrBadMessage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ReadFrame(bufio.NewReader(bytes.NewReader(tc.in)), tc.limit)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("error %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil || !bytes.Equal(got, tc.want) {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	var buf bytes.Buffer
	if err := WriteFrame(&buf, []byte("xyz")); err != nil || !bytes.Equal(buf.Bytes(), Frame([]byte("xyz"))) {
		t.Fatalf("WriteFrame wrote %q, %v", buf.Bytes(), err)
	}
}
