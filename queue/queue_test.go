package queue_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/queue"
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

// qname returns a unique queue name for the test and, at its end, checks
// that nothing but the expected keys is left under it, then deletes them.
func qname(t *testing.T) string {
	t.Helper()
	name := "/qt/" + strings.NewReplacer("/", "-", " ", "_").Replace(t.Name())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = cluster.Admin().Delete(ctx, name, clientv3.WithPrefix())
	})
	return name
}

// assertOnlyFinished checks that the queue holds nothing but finished
// records (f/), results (r/) and cancel markers (i/k/), on the retention lease, and
// nothing outside its prefix under name.
func assertOnlyFinished(t *testing.T, cli *clientv3.Client, name string) {
	t.Helper()
	ctx := ctxT(t, 10*time.Second)
	resp, err := cli.Get(ctx, name, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	require.NoError(t, err)
	for _, kv := range resp.Kvs {
		k := string(kv.Key)
		if !strings.HasPrefix(k, name+"/.queue/f/") && !strings.HasPrefix(k, name+"/.queue/r/") && !strings.HasPrefix(k, name+"/.queue/i/k/") && !strings.HasPrefix(k, name+"/ledger/") && !strings.HasPrefix(k, name+"/work/") {
			t.Errorf("unexpected key left: %s", k)
		}
	}
}

// waitUntil polls cond every 20 ms until it holds, failing the test after d
// with what.
func waitUntil(t *testing.T, ctx context.Context, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func newKeeper(t *testing.T, cli *clientv3.Client, ttl time.Duration) *leasekeeper.Keeper {
	t.Helper()
	k, err := leasekeeper.New(ctxT(t, 10*time.Second), cli, leasekeeper.WithTTL(cluster.LeaseTTL(ttl)))
	require.NoError(t, err)
	t.Cleanup(func() { _ = k.Close(context.Background()) })
	return k
}

func newQueue(t *testing.T, cli *clientv3.Client, name string, opts ...queue.Option) *queue.Queue {
	t.Helper()
	q := queue.New(cli, name, opts...)
	t.Cleanup(func() { _ = q.Close() })
	return q
}

func TestEnqueueDequeueAck(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	name := qname(t)
	cli := cluster.Client()
	q := newQueue(t, cli, name)
	k := newKeeper(t, cli, 5*time.Second)

	id, err := q.Enqueue(ctx, []byte("hello"))
	require.NoError(t, err)
	st, err := q.Status(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, queue.StateQueued, st.State)

	task, err := q.Dequeue(ctx, k)
	require.NoError(t, err)
	assert.Equal(t, id, task.ID)
	assert.Equal(t, []byte("hello"), task.Payload)
	assert.Equal(t, 1, task.Attempt)
	assert.Positive(t, task.Token())
	assert.False(t, task.Redelivered)
	require.NoError(t, task.Context().Err())

	st, err = q.Status(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, queue.StateRunning, st.State)
	assert.Equal(t, q.Worker(), st.Worker)
	assert.Equal(t, task.Token(), st.Token)

	require.NoError(t, task.Progress(ctx, 0.5, "half", []byte("cp")))
	st, err = q.Status(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, 0.5, st.Fraction)
	assert.Equal(t, "half", st.Message)

	require.NoError(t, task.Ack(ctx))
	require.NoError(t, task.Ack(ctx), "Ack is idempotent")
	assert.ErrorIs(t, task.Nack(ctx, 0), queue.ErrFinished)
	assert.ErrorIs(t, context.Cause(task.Context()), queue.ErrFinished)

	st, err = q.Status(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, queue.StateDone, st.State)

	s, err := q.Stats(ctx)
	require.NoError(t, err)
	assert.Equal(t, queue.Stats{Done: 1}, s)

	_, err = q.TryDequeue(ctx, k)
	assert.ErrorIs(t, err, queue.ErrEmpty)
	assertOnlyFinished(t, cluster.Admin(), name)
}
