package storage

import (
	"bytes"
	"fmt"
	"testing"
)

// More job records than one Badger transaction holds are all stored.
func TestPutJobsBeyondOneTransaction(t *testing.T) {
	db, err := Open(t.TempDir(), Options{Network: "lab"})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	recs := map[string][]byte{}
	for i := range 2000 {
		recs[fmt.Sprintf("job-%04d", i)] = bytes.Repeat([]byte{byte(i)}, 2048)
	}
	if err := db.PutJobs(recs); err != nil {
		t.Fatal(err)
	}
	got := 0
	err = db.Jobs(func(id string, rec []byte) error {
		if !bytes.Equal(rec, recs[id]) {
			return fmt.Errorf("job %s: record differs", id)
		}
		got++
		return nil
	})
	if err != nil || got != len(recs) {
		t.Fatalf("read back %d of %d records: %v", got, len(recs), err)
	}
}
