package journal

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func fill(t *testing.T, j *Journal, n int) {
	for i := 0; i < n; i++ {
		data, _ := json.Marshal(map[string]any{"id": "hidden-process", "title": "Process 7 is hidden", "attack": "T1014", "evidence": map[string]any{"pids": []int{7}, "processes": []string{"7 evil"}}})
		if _, err := j.Append(context.Background(), Record{VM: "web1", Kind: KindFindingOpened, Severity: "critical", Subject: "hidden-process:7", Message: "m", Data: data}); err != nil {
			t.Fatal(err)
		}
	}
}

func open(t *testing.T, key []byte) (*Journal, string) {
	p := filepath.Join(t.TempDir(), "journal.db")
	j, err := Open(p, Options{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	return j, p
}

func verify(t *testing.T, j *Journal) []Problem {
	_, p, err := j.Verify(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestChainVerifies(t *testing.T) {
	j, p := open(t, nil)
	fill(t, j, 20)
	if probs := verify(t, j); len(probs) != 0 {
		t.Fatalf("%v", probs)
	}
	j.Close()
	// reopening continues the chain
	j2, err := Open(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer j2.Close()
	fill(t, j2, 3)
	if n, probs, _ := j2.Verify(context.Background()); len(probs) != 0 || n != 23 {
		t.Fatalf("%d %v", n, probs)
	}
}

// raw opens the database behind the journal's back, as an intruder would.
func raw(t *testing.T, p string) *sql.DB {
	db, err := sql.Open("sqlite", "file:"+p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestTamperingShows(t *testing.T) {
	cases := []struct {
		name, sql string
		want      []string
		noHead    bool // the head file deleted as well
	}{
		{"delete the last and the head", `DELETE FROM records WHERE seq >= 9`, []string{"head file", "is gone"}, true},
		{"edit", `UPDATE records SET message = 'nothing happened' WHERE seq = 5`, []string{"record 5: edited"}, false},
		{"delete", `DELETE FROM records WHERE seq = 7`, []string{"record 7: deleted"}, false},
		{"delete range", `DELETE FROM records WHERE seq BETWEEN 7 AND 9`, []string{"record 7: records 7 to 9 deleted"}, false},
		{"delete the last", `DELETE FROM records WHERE seq >= 9`, []string{"records 9 to 10 deleted from the end"}, false},
		{"reorder", `UPDATE records SET seq = seq + 100 WHERE seq = 4; UPDATE records SET seq = 4 WHERE seq = 6; UPDATE records SET seq = 6 WHERE seq = 104`, []string{"record 4", "record 6"}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			j, p := open(t, nil)
			fill(t, j, 10)
			if _, err := raw(t, p).Exec(c.sql); err != nil {
				t.Fatal(err)
			}
			if c.noHead {
				if err := os.Remove(p + ".head"); err != nil {
					t.Fatal(err)
				}
			}
			probs := verify(t, j)
			var got []string
			for _, pr := range probs {
				got = append(got, pr.String())
			}
			all := strings.Join(got, "; ")
			for _, w := range c.want {
				if !strings.Contains(all, w) {
					t.Errorf("problems %q do not say %q", all, w)
				}
			}
			if len(c.want) == 0 && len(probs) != 0 {
				t.Errorf("unexpected %v", probs)
			}
		})
	}
}

func TestRetention(t *testing.T) {
	j, _ := open(t, []byte("secret"))
	fill(t, j, 30)
	n, err := j.Retain(context.Background(), 0, 10)
	if err != nil || n != 20 {
		t.Fatalf("deleted %d: %v", n, err)
	}
	if probs := verify(t, j); len(probs) != 0 {
		t.Fatalf("after retention: %v", probs)
	}
	fill(t, j, 2)
	if c, _ := j.Count(context.Background()); c != 12 {
		t.Fatalf("count %d", c)
	}
	if probs := verify(t, j); len(probs) != 0 {
		t.Fatalf("%v", probs)
	}
	if n, err := j.Retain(context.Background(), time.Hour, 0); err != nil || n != 0 {
		t.Fatalf("age retention deleted %d recent records: %v", n, err)
	}
}

func TestExportECS(t *testing.T) {
	j, _ := open(t, nil)
	fill(t, j, 2)
	var b bytes.Buffer
	n, err := j.Export(context.Background(), &b, Query{})
	if err != nil || n != 2 {
		t.Fatal(n, err)
	}
	var doc map[string]any
	if err := json.Unmarshal(bytes.Split(b.Bytes(), []byte("\n"))[0], &doc); err != nil {
		t.Fatal(err)
	}
	ev := doc["event"].(map[string]any)
	if doc["@timestamp"] == nil || ev["kind"] != "alert" || doc["rule"].(map[string]any)["name"] != "hidden-process" ||
		doc["host"].(map[string]any)["name"] != "web1" || doc["process"].(map[string]any)["name"] != "evil" {
		t.Fatalf("%s", b.String())
	}
}

// An intruder who can rewrite the database and the head file but does not
// hold the HMAC key edits a record and recomputes the whole chain with plain
// SHA-256, the only hash it can compute. The forgery is consistent (the
// journal verifies without the key), yet verification with the key finds
// every rewritten record and the rewritten head.
func TestKeyedChainResistsRehash(t *testing.T) {
	ctx := context.Background()
	key := []byte("the daemon's key, kept outside the journal's directory")
	j, p := open(t, key)
	fill(t, j, 10)
	recs, err := j.List(ctx, Query{})
	if err != nil || len(recs) != 10 {
		t.Fatalf("%d records: %v", len(recs), err)
	}
	j.Close()

	db := raw(t, p)
	forger := &Journal{path: p} // no key
	var prev string
	if err := db.QueryRow(`SELECT prev FROM anchor WHERE id = 1`).Scan(&prev); err != nil {
		t.Fatal(err)
	}
	for i := range recs {
		r := &recs[i]
		if r.Seq == 5 {
			r.Message, r.Severity = "nothing happened", "info"
		}
		r.PrevHash = prev
		r.Hash = forger.digest(r)
		prev = r.Hash
		if _, err := db.Exec(`UPDATE records SET message = ?, severity = ?, prev = ?, hash = ? WHERE seq = ?`, r.Message, r.Severity, r.PrevHash, r.Hash, r.Seq); err != nil {
			t.Fatal(err)
		}
	}
	forger.lastSeq, forger.lastHash = recs[9].Seq, recs[9].Hash
	forger.writeHead()

	// without the key the forgery passes: the test is of the key
	plain, err := Open(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if probs := verify(t, plain); len(probs) != 0 {
		t.Fatalf("the forged chain does not verify even without the key: %v", probs)
	}

	for _, k := range [][]byte{key, []byte("another key")} {
		jk, err := Open(p, Options{Key: k})
		if err != nil {
			t.Fatal(err)
		}
		probs := verify(t, jk)
		jk.Close()
		edited := map[int64]bool{}
		var all []string
		for _, pr := range probs {
			all = append(all, pr.String())
			if strings.Contains(pr.Reason, "edited") {
				edited[pr.Seq] = true
			}
		}
		for seq := int64(1); seq <= 10; seq++ {
			if !edited[seq] {
				t.Errorf("key %q: record %d rehashed without the key is not reported as edited (problems: %q)", k, seq, all)
			}
		}
		if !strings.Contains(strings.Join(all, "; "), "head file was altered") {
			t.Errorf("key %q: the head rewritten without the key is not reported (problems: %q)", k, all)
		}
	}
}

// TestEmptiedJournalShows: every record and the head file deleted, then the
// journal opened again (as `vmwatch journal verify` does): the missing head
// is reported, not replaced by a fresh one.
func TestEmptiedJournalShows(t *testing.T) {
	j, p := open(t, nil)
	fill(t, j, 5)
	j.Close()
	if _, err := raw(t, p).Exec(`DELETE FROM records`); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(p + ".head"); err != nil {
		t.Fatal(err)
	}
	j2, err := Open(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer j2.Close()
	if probs := verify(t, j2); len(probs) == 0 || !strings.Contains(probs[0].String(), "is gone") {
		t.Errorf("emptied journal without its head: problems %v", probs)
	}
}

// TestRetentionOfEverything: retention that deletes every record (an idle
// daemon past max_age) leaves a journal that verifies, and goes on.
func TestRetentionOfEverything(t *testing.T) {
	j, _ := open(t, []byte("secret"))
	fill(t, j, 5)
	if n, err := j.Retain(context.Background(), 0, 0); err != nil || n != 0 {
		t.Fatalf("retention with no limits deleted %d: %v", n, err)
	}
	if _, err := j.db.Exec(`UPDATE records SET time = '2000-01-01T00:00:00Z'`); err != nil {
		t.Fatal(err)
	}
	if n, err := j.Retain(context.Background(), time.Hour, 0); err != nil || n != 5 {
		t.Fatalf("age retention deleted %d of 5 old records: %v", n, err)
	}
	if probs := verify(t, j); len(probs) != 0 {
		t.Fatalf("after retention took every record: %v", probs)
	}
	fill(t, j, 2)
	if probs := verify(t, j); len(probs) != 0 {
		t.Fatalf("records after retention took every record: %v", probs)
	}
}
