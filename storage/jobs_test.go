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

// Bill records are stored, replaced and dropped by key, apart from jobs.
func TestPutBills(t *testing.T) {
	db, err := Open(t.TempDir(), Options{Network: "lab"})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	read := func() map[string]string {
		t.Helper()
		got := map[string]string{}
		if err := db.Bills(func(key string, rec []byte) error { got[key] = string(rec); return nil }); err != nil {
			t.Fatal(err)
		}
		return got
	}
	if err := db.PutJobs(map[string][]byte{"j": []byte("job")}); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		put  map[string][]byte
		drop []string
		want map[string]string
	}{
		{map[string][]byte{"a/1/p": []byte("billing"), "b/1/p": []byte("billing")}, nil, map[string]string{"a/1/p": "billing", "b/1/p": "billing"}},
		{map[string][]byte{"a/1/p": []byte("delivering")}, []string{"b/1/p"}, map[string]string{"a/1/p": "delivering"}},
		{nil, []string{"a/1/p", "never/stored"}, map[string]string{}},
	} {
		if err := db.PutBills(step.put, step.drop); err != nil {
			t.Fatal(err)
		}
		if got := read(); fmt.Sprint(got) != fmt.Sprint(step.want) {
			t.Fatalf("bills %v, want %v", got, step.want)
		}
	}
	jobs := 0
	if err := db.Jobs(func(string, []byte) error { jobs++; return nil }); err != nil || jobs != 1 {
		t.Fatalf("%d jobs after the bills (%v)", jobs, err)
	}
}
