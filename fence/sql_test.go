package fence_test

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	_ "modernc.org/sqlite"

	"github.com/concordkit/concord/fence"
)

// openDB opens a SQLite database in a file of the test's own, with an
// accounts table fenced by its fence column and a history of the writes
// made, in commit order.
func openDB(t testing.TB) *sql.DB {
	t.Helper()
	dsn := "file:" + filepath.Join(t.TempDir(), "fence.db") + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	_, err = db.Exec(`CREATE TABLE accounts (id TEXT PRIMARY KEY, balance INTEGER NOT NULL, fence INTEGER);
		CREATE TABLE history (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT, token INTEGER, balance INTEGER);
		INSERT INTO accounts (id, balance) VALUES ('a', 0), ('b', 0)`)
	require.NoError(t, err)
	return db
}

var accounts = fence.Column{Table: "accounts", Key: "id", Fence: "fence"}

func fenceOf(t testing.TB, db *sql.DB, id string) sql.NullInt64 {
	t.Helper()
	var v sql.NullInt64
	require.NoError(t, db.QueryRow("SELECT fence FROM accounts WHERE id = ?", id).Scan(&v))
	return v
}

func TestColumnAdmit(t *testing.T) {
	ctx := context.Background()
	for _, c := range []fence.Column{accounts, {Table: "main.accounts", Key: "id", Fence: "fence", Placeholders: fence.Dollar}} {
		t.Run(fmt.Sprint(c.Placeholders), func(t *testing.T) {
			db := openDB(t)
			require.NoError(t, c.Admit(ctx, db, "a", 5))
			require.Equal(t, int64(5), fenceOf(t, db, "a").Int64)
			require.NoError(t, c.Admit(ctx, db, "a", 5), "an equal token is the same holder")
			require.NoError(t, c.Admit(ctx, db, "a", 8))
			err := c.Admit(ctx, db, "a", 7)
			require.ErrorIs(t, err, fence.ErrStale)
			require.EqualError(t, err, `fence: stale token: token 7 for "`+c.Table+` a", 8 already admitted`)
			require.Equal(t, int64(8), fenceOf(t, db, "a").Int64)
			require.False(t, fenceOf(t, db, "b").Valid, "another row was fenced")
			require.ErrorIs(t, c.Admit(ctx, db, "zz", 9), fence.ErrNoRow)
			require.ErrorIs(t, c.Admit(ctx, db, "a", 0), fence.ErrNoToken)
		})
	}
}

// Bad names are refused before any statement is sent.
func TestColumnBadInput(t *testing.T) {
	ctx := context.Background()
	db := openDB(t)
	for _, c := range []fence.Column{
		{Table: "accounts; DROP TABLE accounts", Key: "id", Fence: "fence"},
		{Table: "accounts", Key: "id = id OR 1", Fence: "fence"},
		{Table: "accounts", Key: "id", Fence: ""},
		{Table: "a.b.c", Key: "id", Fence: "fence"},
		{Table: "accounts", Key: "id", Fence: "fence", Placeholders: 7},
	} {
		err := c.Admit(ctx, db, "a", 1)
		require.ErrorContains(t, err, "fence: column: ", "%+v", c)
		err = c.Update(ctx, db, nil, "a", 1, func(*sql.Tx) error { t.Fatal("write ran"); return nil })
		require.ErrorContains(t, err, "fence: column: ", "%+v", c)
	}
	require.False(t, fenceOf(t, db, "a").Valid)
	var n int
	require.NoError(t, db.QueryRow("SELECT count(*) FROM accounts").Scan(&n))
	require.Equal(t, 2, n)
}

// A write that panics rolls its transaction back: the row's lock (here
// SQLite's write lock) and the connection are not kept.
func TestColumnUpdatePanicRollsBack(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	db := openDB(t)
	require.Panics(t, func() {
		_ = accounts.Update(ctx, db, nil, "a", 3, func(*sql.Tx) error { panic("boom") })
	})
	require.Zero(t, db.Stats().InUse, "a connection is still in use")
	require.False(t, fenceOf(t, db, "a").Valid, "the panicking write's fence was committed")
	require.NoError(t, accounts.Update(ctx, db, nil, "b", 1, func(*sql.Tx) error { return nil }))
	require.EqualError(t, accounts.Update(ctx, db, nil, "a", 1, nil), "fence: column update: nil db or write")
	require.EqualError(t, accounts.Update(ctx, nil, nil, "a", 1, func(*sql.Tx) error { return nil }), "fence: column update: nil db or write")
}

// deposit adds amount to account id under token, in one fenced transaction
// that also appends to the history.
func deposit(ctx context.Context, db *sql.DB, fenced bool, id string, token, amount int64) error {
	write := func(tx *sql.Tx) error {
		var bal int64
		if err := tx.QueryRowContext(ctx, "SELECT balance FROM accounts WHERE id = ?", id).Scan(&bal); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, "UPDATE accounts SET balance = ? WHERE id = ?", bal+amount, id); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, "INSERT INTO history (id, token, balance) VALUES (?, ?, ?)", id, token, bal+amount)
		return err
	}
	if !fenced {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if err := write(tx); err != nil {
			_ = tx.Rollback()
			return err
		}
		return tx.Commit()
	}
	return accounts.Update(ctx, db, nil, id, token, write)
}

// tokenOrder is the checker: the history's tokens for id, in commit order,
// never go down. It returns the first violation.
func tokenOrder(t testing.TB, db *sql.DB, id string) error {
	t.Helper()
	rows, err := db.Query("SELECT token FROM history WHERE id = ? ORDER BY seq", id)
	require.NoError(t, err)
	defer rows.Close()
	var last int64
	for rows.Next() {
		var tok int64
		require.NoError(t, rows.Scan(&tok))
		if tok < last {
			return fmt.Errorf("token %d committed after %d", tok, last)
		}
		last = tok
	}
	require.NoError(t, rows.Err())
	return nil
}

// Writers with random, rising tokens race on one row through the fence: the
// history's tokens never go down, and every admitted deposit is in the
// balance. Without the fence the same race breaks the order.
func TestColumnOrdersConcurrentWriters(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	run := func(fenced bool) (admitted int64, db *sql.DB) {
		db = openDB(t)
		var (
			wg sync.WaitGroup
			mu sync.Mutex
		)
		for range 4 {
			wg.Go(func() {
				for i := range 40 {
					// Tokens rise with each writer's turns, and overlap
					// between writers: writes keep being admitted (a single
					// early high token would refuse every later one), and
					// they race out of order.
					err := deposit(ctx, db, fenced, "a", int64(i)*4+rand.Int64N(12)+1, 1)
					if err == nil {
						mu.Lock()
						admitted++
						mu.Unlock()
					} else {
						require.ErrorIs(t, err, fence.ErrStale)
					}
				}
			})
		}
		wg.Wait()
		return admitted, db
	}
	admitted, db := run(true)
	require.NoError(t, tokenOrder(t, db, "a"))
	var bal int64
	require.NoError(t, db.QueryRow("SELECT balance FROM accounts WHERE id = 'a'").Scan(&bal))
	require.Equal(t, admitted, bal)
	require.Greater(t, admitted, int64(1))

	_, db = run(false)
	require.Error(t, tokenOrder(t, db, "a"), "the checker found no violation without the fence")
}
