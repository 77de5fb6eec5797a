package wait_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/wait"
	"github.com/concordkit/concord/testcluster"
)

var cluster *testcluster.Cluster

func TestMain(m *testing.M) { testcluster.Main(m, &cluster) }

func ctxT(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// put creates key and returns its create revision; the test's prefix is
// cleaned up after the test, and the test fails if anything was left.
func put(t *testing.T, key string) int64 {
	t.Helper()
	resp, err := cluster.Client().Put(ctxT(t, 5*time.Second), key, "")
	require.NoError(t, err)
	return resp.Header.Revision
}

func del(t *testing.T, key string) {
	t.Helper()
	_, err := cluster.Client().Delete(ctxT(t, 5*time.Second), key)
	require.NoError(t, err)
}

func cleanup(t *testing.T, prefix string) {
	t.Cleanup(func() {
		_, _ = cluster.Admin().Delete(context.Background(), prefix, clientv3.WithPrefix())
	})
}

type result struct {
	err error
	at  time.Time
}

func start(ctx context.Context, prefix string, own wait.Own, known *wait.Pred) <-chan result {
	done := make(chan result, 1)
	go func() {
		err := wait.ForPredecessors(ctx, cluster.Client(), prefix, own, known)
		done <- result{err, time.Now()}
	}()
	return done
}

func expectBlocked(t *testing.T, done <-chan result) {
	t.Helper()
	// A read through the same cluster after the waiter started cannot prove
	// it is blocked; what the test can check is that it has not returned by
	// the time a full round trip of the cluster has happened.
	_, err := cluster.Client().Get(ctxT(t, 5*time.Second), "sync")
	require.NoError(t, err)
	select {
	case r := <-done:
		t.Fatalf("returned early: %v", r.err)
	default:
	}
}

func expectDone(t *testing.T, done <-chan result) result {
	t.Helper()
	select {
	case r := <-done:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("waiter did not return within 10 s")
		return result{}
	}
}

func TestNoPredecessor(t *testing.T) {
	p := t.Name() + "/"
	cleanup(t, p)
	rev := put(t, p+"a")
	r := expectDone(t, start(ctxT(t, 10*time.Second), p, wait.Own{Key: p + "a", Rev: rev}, nil))
	require.NoError(t, r.err)
}

func TestChainAndAbandon(t *testing.T) {
	p := t.Name() + "/"
	cleanup(t, p)
	put(t, p+"1")
	put(t, p+"2")
	rev3 := put(t, p+"3")
	done := start(ctxT(t, 20*time.Second), p, wait.Own{Key: p + "3", Rev: rev3}, nil)
	expectBlocked(t, done)

	// The immediate predecessor abandons: the waiter must notice the older
	// key still there and keep waiting.
	del(t, p+"2")
	expectBlocked(t, done)
	deletedAt := time.Now()
	del(t, p+"1")
	r := expectDone(t, done)
	require.NoError(t, r.err)
	assert.Less(t, r.at.Sub(deletedAt), time.Second)
}

func TestOwnKeyDeleted(t *testing.T) {
	p := t.Name() + "/"
	cleanup(t, p)
	put(t, p+"1")
	rev2 := put(t, p+"2")
	done := start(ctxT(t, 20*time.Second), p, wait.Own{Key: p + "2", Rev: rev2}, nil)
	expectBlocked(t, done)
	del(t, p+"2")
	r := expectDone(t, done)
	require.ErrorIs(t, r.err, wait.ErrOwnKeyGone)
}

func TestOwnKeyReplaced(t *testing.T) {
	p := t.Name() + "/"
	cleanup(t, p)
	put(t, p+"1")
	rev2 := put(t, p+"2")
	del(t, p+"2")
	put(t, p+"2") // a newer incarnation is not the waiter's key
	r := expectDone(t, start(ctxT(t, 10*time.Second), p, wait.Own{Key: p + "2", Rev: rev2}, nil))
	require.ErrorIs(t, r.err, wait.ErrOwnKeyGone)
}

func TestContextCanceled(t *testing.T) {
	p := t.Name() + "/"
	cleanup(t, p)
	put(t, p+"1")
	rev2 := put(t, p+"2")
	ctx, cancel := context.WithCancelCause(context.Background())
	done := start(ctx, p, wait.Own{Key: p + "2", Rev: rev2}, nil)
	expectBlocked(t, done)
	cause := errors.New("lease lost")
	cancel(cause)
	r := expectDone(t, done)
	require.ErrorIs(t, r.err, cause, "the cause of ctx comes back")
	// The package's TestMain fails the run if the waiter's watches leaked.
}

// A predecessor read before it was deleted (the caller's acquire txn saw it)
// but deleted before the watch registered: the gap re-read must catch it.
func TestGapBetweenReadAndWatch(t *testing.T) {
	p := t.Name() + "/"
	cleanup(t, p)
	rev1 := put(t, p+"1")
	rev2 := put(t, p+"2")
	resp, err := cluster.Client().Get(ctxT(t, 5*time.Second), p+"1")
	require.NoError(t, err)
	stale := &wait.Pred{KV: resp.Kvs[0], ReadRev: resp.Header.Revision}
	require.Equal(t, rev1, stale.KV.CreateRevision)
	del(t, p+"1")
	r := expectDone(t, start(ctxT(t, 10*time.Second), p, wait.Own{Key: p + "2", Rev: rev2}, stale))
	require.NoError(t, r.err)
}

// A deletion of an earlier incarnation of a reused predecessor key must not
// count: here the key is deleted and recreated before the waiter starts, and
// the waiter is handed the old incarnation as known.
func TestReusedPredecessorKey(t *testing.T) {
	p := t.Name() + "/"
	cleanup(t, p)
	put(t, p+"1")
	rev2 := put(t, p+"2")
	done := start(ctxT(t, 20*time.Second), p, wait.Own{Key: p + "2", Rev: rev2}, nil)
	expectBlocked(t, done)
	// Reincarnate the predecessor key with a create revision above the
	// waiter's: that is no longer a predecessor, so the waiter proceeds.
	del(t, p+"1")
	put(t, p+"1")
	r := expectDone(t, done)
	require.NoError(t, r.err)
}

func TestCompactionDuringWait(t *testing.T) {
	p := t.Name() + "/"
	cleanup(t, p)
	put(t, p+"1")
	rev2 := put(t, p+"2")
	done := start(ctxT(t, 20*time.Second), p, wait.Own{Key: p + "2", Rev: rev2}, nil)
	expectBlocked(t, done)
	for range 10 {
		put(t, p+"noise-outside-order") // moves the revision past the waiter's reads
	}
	_, err := cluster.Compact(ctxT(t, 5*time.Second))
	require.NoError(t, err)
	expectBlocked(t, done)
	del(t, p+"noise-outside-order")
	expectBlocked(t, done)
	del(t, p+"1")
	r := expectDone(t, done)
	require.NoError(t, r.err)
}

func TestMemberRestartDuringWait(t *testing.T) {
	c := testcluster.New(t)
	ctx := ctxT(t, 30*time.Second)
	p := t.Name() + "/"
	cli := c.Client()
	_, err := cli.Put(ctx, p+"1", "")
	require.NoError(t, err)
	resp, err := cli.Put(ctx, p+"2", "")
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() {
		done <- wait.ForPredecessors(ctx, cli, p, wait.Own{Key: p + "2", Rev: resp.Header.Revision}, nil)
	}()
	lead, err := c.WaitLeader(ctx)
	require.NoError(t, err)
	for i := range c.Size() {
		require.NoError(t, c.Stop(i))
		require.NoError(t, c.Restart(ctx, i))
		_ = lead
	}
	select {
	case err := <-done:
		t.Fatalf("returned before the predecessor went: %v", err)
	default:
	}
	_, err = c.Admin().Delete(ctx, p+"1")
	require.NoError(t, err)
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(15 * time.Second):
		t.Fatal("waiter did not resume after member restarts")
	}
}
