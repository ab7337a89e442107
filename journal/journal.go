// Package journal is vmwatch's event store: findings, alarm transitions,
// lifecycle events and response actions in SQLite (WAL, synchronous=FULL),
// each record carrying the hash of the one before it, so that an edited,
// deleted or reordered record shows when the chain is verified.
package journal

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"os"
	"path/filepath"
	"sync"
	"time"

	_ "modernc.org/sqlite"
)

// Record is one journal entry.
type Record struct {
	Seq      int64           `json:"seq"`
	Time     time.Time       `json:"time"`
	VM       string          `json:"vm"`
	Kind     string          `json:"kind"` // see the Kind constants
	Severity string          `json:"severity,omitempty"`
	Subject  string          `json:"subject"`
	Message  string          `json:"message"`
	Data     json.RawMessage `json:"data,omitempty"`
	PrevHash string          `json:"prev_hash"`
	Hash     string          `json:"hash"`
}

// Kinds of records.
const (
	KindFindingOpened = "finding.opened"
	KindFindingClosed = "finding.closed"
	KindAlarm         = "alarm"
	KindLifecycle     = "lifecycle"
	KindAction        = "action"
	KindEvidence      = "evidence"
	KindDaemon        = "daemon"
	KindBackup        = "backup" // backups, prunes and their failures (vmwatch serve's schedules)
)

// genesis is the previous hash of the first record ever written.
const genesis = "vmwatch-journal-v1"

// Journal is an open journal. It is safe for concurrent use.
type Journal struct {
	db   *sql.DB
	path string
	key  []byte

	mu       sync.Mutex
	lastSeq  int64
	lastHash string
}

// Options for Open.
type Options struct {
	// Key, when set, makes the chain an HMAC: records cannot be rewritten
	// consistently without it. Keep it outside the journal's directory.
	Key []byte
}

const schema = `
CREATE TABLE IF NOT EXISTS records (
	seq      INTEGER PRIMARY KEY,
	time     TEXT NOT NULL,
	vm       TEXT NOT NULL,
	kind     TEXT NOT NULL,
	severity TEXT NOT NULL,
	subject  TEXT NOT NULL,
	message  TEXT NOT NULL,
	data     BLOB,
	prev     TEXT NOT NULL,
	hash     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_vm_time ON records(vm, time);
CREATE INDEX IF NOT EXISTS records_time ON records(time);
CREATE TABLE IF NOT EXISTS anchor (
	id        INTEGER PRIMARY KEY CHECK (id = 1),
	first_seq INTEGER NOT NULL,
	prev      TEXT NOT NULL
);
`

// Open opens (creating if needed) the journal at path.
func Open(path string, opt Options) (*Journal, error) {
	_, serr := os.Stat(path)
	created := errors.Is(serr, os.ErrNotExist)
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=busy_timeout(10000)&_pragma=foreign_keys(on)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("journal %s: %w", path, err)
	}
	db.SetMaxOpenConns(4)
	if _, err := db.Exec(schema); err != nil {
		db.Close()
		return nil, fmt.Errorf("journal %s: %w", path, err)
	}
	j := &Journal{db: db, path: path, key: opt.Key}
	if _, err := db.Exec(`INSERT OR IGNORE INTO anchor(id, first_seq, prev) VALUES (1, 1, ?)`, genesis); err != nil {
		db.Close()
		return nil, err
	}
	row := db.QueryRow(`SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1`)
	switch err := row.Scan(&j.lastSeq, &j.lastHash); {
	case errors.Is(err, sql.ErrNoRows):
		var first int64
		if err := db.QueryRow(`SELECT first_seq, prev FROM anchor WHERE id = 1`).Scan(&first, &j.lastHash); err != nil {
			db.Close()
			return nil, err
		}
		j.lastSeq = first - 1
		// a journal created now gets its head at once: from here on a
		// missing head file means a deleted one (an emptied database
		// that was there before keeps its missing head: verify says so)
		if created {
			if err := j.writeHead(); err != nil {
				db.Close()
				return nil, fmt.Errorf("journal %s: head file: %w", path, err)
			}
		}
	case err != nil:
		db.Close()
		return nil, fmt.Errorf("journal %s: %w", path, err)
	}
	return j, nil
}

// Close closes the journal.
func (j *Journal) Close() error { return j.db.Close() }

// Path is the database file.
func (j *Journal) Path() string { return j.path }

func (j *Journal) hasher() hash.Hash {
	if len(j.key) > 0 {
		return hmac.New(sha256.New, j.key)
	}
	return sha256.New()
}

// digest is the chain hash of a record: every field but the hash itself,
// each length-prefixed so that fields cannot be shifted into each other.
func (j *Journal) digest(r *Record) string {
	h := j.hasher()
	field := func(b []byte) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	var seq [8]byte
	binary.BigEndian.PutUint64(seq[:], uint64(r.Seq))
	field(seq[:])
	field([]byte(r.Time.UTC().Format(time.RFC3339Nano)))
	field([]byte(r.VM))
	field([]byte(r.Kind))
	field([]byte(r.Severity))
	field([]byte(r.Subject))
	field([]byte(r.Message))
	field(r.Data)
	field([]byte(r.PrevHash))
	return hex.EncodeToString(h.Sum(nil))
}

// Append writes a record and returns it with its sequence number and
// hashes. It returns once the record is durable (the transaction is
// committed with synchronous=FULL): an acknowledged record survives a
// crash of the daemon.
func (j *Journal) Append(ctx context.Context, r Record) (Record, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if r.Time.IsZero() {
		r.Time = time.Now()
	}
	r.Time = r.Time.UTC()
	r.Seq = j.lastSeq + 1
	r.PrevHash = j.lastHash
	r.Hash = j.digest(&r)
	_, err := j.db.ExecContext(ctx, `INSERT INTO records(seq, time, vm, kind, severity, subject, message, data, prev, hash) VALUES (?,?,?,?,?,?,?,?,?,?)`,
		r.Seq, r.Time.Format(time.RFC3339Nano), r.VM, r.Kind, r.Severity, r.Subject, r.Message, []byte(r.Data), r.PrevHash, r.Hash)
	if err != nil {
		return Record{}, fmt.Errorf("journal append: %w", err)
	}
	j.lastSeq, j.lastHash = r.Seq, r.Hash
	if err := j.writeHead(); err != nil {
		// stored and chained; only the cut-off-the-end check lags
		return r, fmt.Errorf("journal %s: record %d is stored, but the head file could not be written (free space, permissions of %s?): %w", j.path, r.Seq, filepath.Dir(j.path), err)
	}
	return r, nil
}

// The head file beside the database names the newest record, so that
// records cut off the end of the chain show too. It is written after the
// commit (without fsync): after a crash it may lag behind, never lead.
func (j *Journal) headPath() string { return j.path + ".head" }

func (j *Journal) writeHead() error {
	h := j.hasher()
	fmt.Fprintf(h, "head %d %s", j.lastSeq, j.lastHash)
	line := fmt.Sprintf("%d %s %s\n", j.lastSeq, j.lastHash, hex.EncodeToString(h.Sum(nil)))
	tmp := j.headPath() + ".tmp"
	if err := os.WriteFile(tmp, []byte(line), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, j.headPath())
}

func (j *Journal) readHead() (seq int64, hash string, ok bool) {
	b, err := os.ReadFile(j.headPath())
	if err != nil {
		return 0, "", false
	}
	var mac string
	if _, err := fmt.Sscanf(string(b), "%d %s %s", &seq, &hash, &mac); err != nil {
		return 0, "", false
	}
	h := j.hasher()
	fmt.Fprintf(h, "head %d %s", seq, hash)
	if hex.EncodeToString(h.Sum(nil)) != mac {
		return 0, "", false
	}
	return seq, hash, true
}

// Query selects records.
type Query struct {
	VM    string
	Kind  string
	Since time.Time
	After int64 // seq
	Limit int
	Desc  bool
}

// List returns records matching q, oldest first (newest first with Desc).
func (j *Journal) List(ctx context.Context, q Query) ([]Record, error) {
	s := `SELECT seq, time, vm, kind, severity, subject, message, data, prev, hash FROM records WHERE seq > ?`
	args := []any{q.After}
	if q.VM != "" {
		s += ` AND vm = ?`
		args = append(args, q.VM)
	}
	if q.Kind != "" {
		s += ` AND kind = ?`
		args = append(args, q.Kind)
	}
	if !q.Since.IsZero() {
		s += ` AND time >= ?`
		args = append(args, q.Since.UTC().Format(time.RFC3339Nano))
	}
	if q.Desc {
		s += ` ORDER BY seq DESC`
	} else {
		s += ` ORDER BY seq`
	}
	if q.Limit > 0 {
		s += fmt.Sprintf(` LIMIT %d`, q.Limit)
	}
	rows, err := j.db.QueryContext(ctx, s, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Record
	for rows.Next() {
		r, err := scan(rows)
		if err != nil {
			return out, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

func scan(rows *sql.Rows) (Record, error) {
	var r Record
	var t string
	var data []byte
	if err := rows.Scan(&r.Seq, &t, &r.VM, &r.Kind, &r.Severity, &r.Subject, &r.Message, &data, &r.PrevHash, &r.Hash); err != nil {
		return r, err
	}
	tt, err := time.Parse(time.RFC3339Nano, t)
	if err != nil {
		return r, fmt.Errorf("record %d: time %q: %w", r.Seq, t, err)
	}
	r.Time = tt
	if len(data) > 0 {
		r.Data = json.RawMessage(data)
	}
	return r, nil
}

// Problem is one break in the chain.
type Problem struct {
	Seq    int64  `json:"seq"`
	Reason string `json:"reason"`
}

func (p Problem) String() string { return fmt.Sprintf("record %d: %s", p.Seq, p.Reason) }

// Verify walks the whole chain from its anchor and reports every record
// that was edited (its hash does not match its content), deleted (a gap
// in the sequence, or a record whose predecessor's hash is not the one it
// names) or reordered.
func (j *Journal) Verify(ctx context.Context) (checked int64, problems []Problem, err error) {
	var first int64
	var prev string
	if err := j.db.QueryRowContext(ctx, `SELECT first_seq, prev FROM anchor WHERE id = 1`).Scan(&first, &prev); err != nil {
		return 0, nil, fmt.Errorf("journal anchor: %w", err)
	}
	rows, err := j.db.QueryContext(ctx, `SELECT seq, time, vm, kind, severity, subject, message, data, prev, hash FROM records ORDER BY rowid`)
	if err != nil {
		return 0, nil, err
	}
	defer rows.Close()
	expect := first
	// with no record left (retention took them all) the chain ends at its
	// anchor, which the head names
	lastSeq, lastHash := first-1, prev
	for rows.Next() {
		r, err := scan(rows)
		if err != nil {
			problems = append(problems, Problem{r.Seq, err.Error()})
			continue
		}
		checked++
		gap := false
		switch {
		case r.Seq > expect:
			gap = true
			if r.Seq-1 == expect {
				problems = append(problems, Problem{expect, "deleted (missing from the chain)"})
			} else {
				problems = append(problems, Problem{expect, fmt.Sprintf("records %d to %d deleted (missing from the chain)", expect, r.Seq-1)})
			}
		case r.Seq < expect:
			problems = append(problems, Problem{r.Seq, fmt.Sprintf("out of order (stored after record %d)", expect-1)})
		}
		if got := j.digest(&r); got != r.Hash {
			problems = append(problems, Problem{r.Seq, "edited: its content does not match its hash"})
		} else if r.PrevHash != prev && r.Seq >= expect && !gap {
			problems = append(problems, Problem{r.Seq, "does not follow the record before it (its predecessor was replaced or removed)"})
		}
		prev = r.Hash
		if r.Seq >= expect {
			expect = r.Seq + 1
		}
		lastSeq, lastHash = r.Seq, r.Hash
	}
	if err := rows.Err(); err != nil {
		return checked, problems, err
	}
	// the newest records: the head file names the last one written
	if hs, hh, ok := j.readHead(); ok {
		switch {
		case hs > lastSeq:
			problems = append(problems, Problem{lastSeq + 1, fmt.Sprintf("records %d to %d deleted from the end of the journal (the head names record %d)", lastSeq+1, hs, hs)})
		case hs == lastSeq && hh != lastHash:
			problems = append(problems, Problem{hs, "the newest record was replaced"})
		}
	} else if _, err := os.Stat(j.headPath()); err == nil {
		problems = append(problems, Problem{lastSeq, "the journal's head file was altered"})
	} else if errors.Is(err, os.ErrNotExist) {
		// written since the journal was created, and only ever replaced
		problems = append(problems, Problem{lastSeq, fmt.Sprintf("the journal's head file %s is gone (deleted): records cut off the end of the journal would not show", j.headPath())})
	}
	return checked, problems, nil
}

// Retain deletes records older than maxAge and the oldest records beyond
// maxRecords (zero disables either), moving the chain's anchor so the
// remaining chain still verifies. It returns how many were deleted.
func (j *Journal) Retain(ctx context.Context, maxAge time.Duration, maxRecords int64) (int64, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	cut := int64(0) // delete records with seq <= cut
	if maxAge > 0 {
		var s sql.NullInt64
		if err := j.db.QueryRowContext(ctx, `SELECT MAX(seq) FROM records WHERE time < ?`, time.Now().Add(-maxAge).UTC().Format(time.RFC3339Nano)).Scan(&s); err != nil {
			return 0, err
		}
		if s.Valid && s.Int64 > cut {
			cut = s.Int64
		}
	}
	if maxRecords > 0 && j.lastSeq-maxRecords > cut {
		cut = j.lastSeq - maxRecords
	}
	if cut <= 0 {
		return 0, nil
	}
	tx, err := j.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	var prev string
	if err := tx.QueryRowContext(ctx, `SELECT hash FROM records WHERE seq = ?`, cut).Scan(&prev); err != nil {
		return 0, fmt.Errorf("journal retention: record %d: %w", cut, err)
	}
	res, err := tx.ExecContext(ctx, `DELETE FROM records WHERE seq <= ?`, cut)
	if err != nil {
		return 0, err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE anchor SET first_seq = ?, prev = ? WHERE id = 1`, cut+1, prev); err != nil {
		return 0, err
	}
	if err := tx.Commit(); err != nil {
		return 0, err
	}
	n, _ := res.RowsAffected()
	return n, nil
}

// Count is the number of records.
func (j *Journal) Count(ctx context.Context) (int64, error) {
	var n int64
	err := j.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM records`).Scan(&n)
	return n, err
}
