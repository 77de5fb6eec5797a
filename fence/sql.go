package fence

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"regexp"
)

// Placeholders is how a database's driver numbers query parameters.
type Placeholders int

const (
	// Question is "?" (SQLite, MySQL, most drivers).
	Question Placeholders = iota
	// Dollar is "$1", "$2"… (PostgreSQL).
	Dollar
)

// Column fences the rows of a SQL table by a column of their own that holds
// the highest token admitted for the row (an integer column, NULL or 0 while
// none was). Each row is one resource.
//
// Admit raises the row's fence inside the transaction that writes the row,
// with one statement:
//
//	UPDATE <Table> SET <Fence> = token
//	WHERE <Key> = key AND (<Fence> IS NULL OR <Fence> <= token)
//
// and, only when it changed no row, one SELECT of the fence to tell a stale
// token (ErrStale) from a missing row (ErrNoRow) or an equal token (MySQL
// counts rows changed, not rows matched). The UPDATE locks the row
// (PostgreSQL, MySQL/InnoDB; the whole database on SQLite) until the
// transaction ends, so a stale writer's transaction waits for the newer
// one's and then matches no row. Under snapshot isolation where a waiting
// UPDATE fails instead (PostgreSQL's REPEATABLE READ and SERIALIZABLE), the
// stale writer gets the database's serialization error: refused either
// way. On SQLite, begin the transactions with BEGIN IMMEDIATE (the modernc
// driver's _txlock=immediate) and set a busy timeout: a deferred
// transaction that read before it writes fails with SQLITE_BUSY instead of
// waiting for the write lock.
type Column struct {
	Table string // table name, optionally schema-qualified: a or s.a
	Key   string // the column that identifies a row
	Fence string // the fence column
	// Placeholders is the driver's parameter style; Question by default.
	Placeholders Placeholders
}

// Execer is what Admit runs its statements on: a *sql.Tx (what it is meant
// for), a *sql.Conn or a *sql.DB.
type Execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// identifier is what Column accepts as a table or column name: names are
// written into the statements as they are, so nothing that would need
// quoting is accepted.
var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$`)

func (c Column) check() error {
	for _, f := range []struct{ what, name string }{{"table", c.Table}, {"key column", c.Key}, {"fence column", c.Fence}} {
		if !identifier.MatchString(f.name) {
			return fmt.Errorf("fence: column: invalid %s name %q (letters, digits and _ only)", f.what, f.name)
		}
	}
	if c.Placeholders != Question && c.Placeholders != Dollar {
		return fmt.Errorf("fence: column: unknown placeholder style %d", c.Placeholders)
	}
	return nil
}

// param returns the i-th (from 1) parameter placeholder.
func (c Column) param(i int) string {
	if c.Placeholders == Dollar {
		return fmt.Sprintf("$%d", i)
	}
	return "?"
}

// Admit raises the fence of the row whose key column equals key to token,
// on tx, or returns an error that errors.Is ErrStale if the row's fence
// holds a higher token, or ErrNoRow if there is no such row. Call it in the
// transaction that writes the row, before the write, and commit only if it
// returned nil.
func (c Column) Admit(ctx context.Context, tx Execer, key any, token int64) error {
	if err := c.check(); err != nil {
		return err
	}
	if err := checkToken(token); err != nil {
		return err
	}
	update := fmt.Sprintf("UPDATE %s SET %s = %s WHERE %s = %s AND (%s IS NULL OR %s <= %s)",
		c.Table, c.Fence, c.param(1), c.Key, c.param(2), c.Fence, c.Fence, c.param(3))
	res, err := tx.ExecContext(ctx, update, token, key, token)
	if err != nil {
		return fmt.Errorf("fence: raise %s.%s: %w", c.Table, c.Fence, err)
	}
	if n, err := res.RowsAffected(); err == nil && n > 0 {
		return nil
	}
	var highest sql.NullInt64
	query := fmt.Sprintf("SELECT %s FROM %s WHERE %s = %s", c.Fence, c.Table, c.Key, c.param(1))
	switch err := tx.QueryRowContext(ctx, query, key).Scan(&highest); {
	case errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("%w: %s where %s = %v", ErrNoRow, c.Table, c.Key, key)
	case err != nil:
		return fmt.Errorf("fence: read %s.%s: %w", c.Table, c.Fence, err)
	case highest.Valid && highest.Int64 > token:
		return staleError(fmt.Sprintf("%s %v", c.Table, key), token, highest.Int64)
	case highest.Valid && highest.Int64 == token:
		return nil // matched but not changed (MySQL)
	}
	// A fence below token that the UPDATE did not raise: the database did
	// not apply the statement as written.
	return fmt.Errorf("fence: %s.%s of %v could not be raised to %d", c.Table, c.Fence, key, token)
}

// Update runs write in a transaction of db after Admit admitted token for
// the row key, and commits it; a refusal or an error of write rolls the
// transaction back and is returned. opts are those of db.BeginTx.
func (c Column) Update(ctx context.Context, db *sql.DB, opts *sql.TxOptions, key any, token int64, write func(tx *sql.Tx) error) (err error) {
	if err := c.check(); err != nil {
		return err
	}
	if err := checkToken(token); err != nil {
		return err
	}
	if db == nil || write == nil {
		return errors.New("fence: column update: nil db or write")
	}
	tx, err := db.BeginTx(ctx, opts)
	if err != nil {
		return fmt.Errorf("fence: begin: %w", err)
	}
	committed := false
	defer func() {
		// Also when write panics: an open transaction would keep the
		// row's lock (SQLite's write lock) and a connection for good.
		if !committed {
			_ = tx.Rollback()
		}
	}()
	if err := c.Admit(ctx, tx, key, token); err != nil {
		return err
	}
	if err := write(tx); err != nil {
		return err
	}
	committed = true
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("fence: commit: %w", err)
	}
	return nil
}
