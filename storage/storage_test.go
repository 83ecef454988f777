package storage

import (
	"errors"
	"testing"
)

func TestOpenRecordsNetwork(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(dir, Options{Network: "lab"})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := db.Network(); err != nil || got != "lab" {
		t.Fatalf("Network() = %q, %v", got, err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	// Reopening for the same network works; another network is refused.
	db, err = Open(dir, Options{Network: "lab"})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	db.Close()
	if _, err := Open(dir, Options{Network: "other"}); !errors.Is(err, ErrWrongNetwork) {
		t.Fatalf("open for another network: err = %v, want ErrWrongNetwork", err)
	}
}
