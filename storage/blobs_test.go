package storage

import (
	"testing"
)

func TestBlobRecordsSurviveReopen(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(dir, Options{Network: "blobs"})
	if err != nil {
		t.Fatal(err)
	}
	for name, rec := range map[string]string{"aa": "one", "bb": "two", "cc": "three"} {
		if err := db.PutBlobRecord(name, []byte(rec)); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.DeleteBlobRecord("bb"); err != nil {
		t.Fatal(err)
	}
	// A job record is not a blob record.
	if err := db.PutJobs(map[string][]byte{"aa": []byte("job")}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if db, err = Open(dir, Options{Network: "blobs"}); err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	got := map[string]string{}
	if err := db.BlobRecords(func(name string, rec []byte) error {
		got[name] = string(rec)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["aa"] != "one" || got["cc"] != "three" {
		t.Fatalf("blob records after reopen: %v, want aa and cc", got)
	}
}
