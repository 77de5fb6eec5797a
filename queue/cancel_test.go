package queue_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/queue"
)

// A queued or delayed task is removed by Cancel, its dedup ID freed; its
// status says canceled; finished and unknown tasks are refused.
func TestCancelQueued(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	name := qname(t)
	cli := cluster.Client()
	q := newQueue(t, cli, name, queue.WithRetention(time.Minute))
	k := newKeeper(t, cli, 10*time.Second)

	ready, err := q.Enqueue(ctx, []byte("r"), queue.WithDedupID("report-1"))
	require.NoError(t, err)
	later, err := q.Enqueue(ctx, []byte("d"), queue.WithDelay(time.Hour))
	require.NoError(t, err)
	for _, id := range []string{ready, later} {
		require.NoError(t, q.Cancel(ctx, id))
		st, err := q.Status(ctx, id)
		require.NoError(t, err)
		assert.Equal(t, queue.StateCanceled, st.State)
		assert.ErrorIs(t, q.Cancel(ctx, id), queue.ErrFinished, "canceled twice")
	}
	_, err = q.TryDequeue(ctx, k)
	assert.ErrorIs(t, err, queue.ErrEmpty, "a canceled task is not handed out")
	s, err := q.Stats(ctx)
	require.NoError(t, err)
	assert.Equal(t, queue.Stats{Canceled: 2}, s)

	again, err := q.Enqueue(ctx, []byte("r"), queue.WithDedupID("report-1"))
	require.NoError(t, err)
	assert.NotEqual(t, ready, again, "the dedup ID was freed")
	task, err := q.Dequeue(ctx, k)
	require.NoError(t, err)
	require.NoError(t, task.Ack(ctx))
	assert.ErrorIs(t, q.Cancel(ctx, again), queue.ErrFinished)
	assert.ErrorIs(t, q.Cancel(ctx, "18eef85ff573117cf30cf94e"), queue.ErrNotFound)
	assert.ErrorContains(t, q.Cancel(ctx, "nope"), "queue: cancel: invalid task ID")
	require.NoError(t, q.Delete(ctx))
}

// A running task's worker is told, with a cause that is both ErrCanceled
// and ErrLost; whatever it does next, the task stays canceled.
func TestCancelRunning(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	name := qname(t)
	cli := cluster.Client()
	worker := newQueue(t, cli, name, queue.WithRetention(0))
	other, err := cluster.NewClient()
	require.NoError(t, err)
	t.Cleanup(func() { _ = other.Close() })
	admin := newQueue(t, other, name, queue.WithRetention(0))
	k := newKeeper(t, cli, 10*time.Second)

	id, err := admin.Enqueue(ctx, []byte("x"))
	require.NoError(t, err)
	task, err := worker.Dequeue(ctx, k)
	require.NoError(t, err)
	require.NoError(t, task.Progress(ctx, 0.5, "half", []byte("cp")))
	require.NoError(t, admin.Cancel(ctx, id))
	select {
	case <-task.Context().Done():
	case <-ctx.Done():
		t.Fatal("the worker was not told of the cancel")
	}
	cause := context.Cause(task.Context())
	assert.ErrorIs(t, cause, queue.ErrCanceled)
	assert.ErrorIs(t, cause, queue.ErrLost)
	assert.ErrorIs(t, task.Ack(ctx), queue.ErrCanceled)
	assert.ErrorIs(t, task.Progress(ctx, 1, "late", nil), queue.ErrCanceled)
	// A write: etcd serves a transaction without operations as a
	// serializable read, which a lagging member may answer from the past.
	resp, err := cli.Txn(ctx).If(task.Guard()...).Then(clientv3.OpPut(name+"/work", "late")).Commit()
	require.NoError(t, err)
	assert.False(t, resp.Succeeded, "the canceled worker's guard still holds")

	st, err := admin.Status(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, queue.StateCanceled, st.State)
	assert.Equal(t, 1, st.Attempt)
	assert.Equal(t, 0.5, st.Fraction, "the last progress before the cancel")
	assert.Equal(t, "half", st.Message)
	assertOnlyFinished(t, cluster.Admin(), name)
}

// A worker cut off while its task is canceled learns it from its Ack once
// it is back: the task stays canceled, not done.
func TestCancelWhileWorkerCutOff(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	name := qname(t)
	cut, err := cluster.NewClient()
	require.NoError(t, err)
	t.Cleanup(func() { _ = cut.Close() })
	worker := newQueue(t, cut, name, queue.WithRetention(time.Minute))
	admin := newQueue(t, cluster.Client(), name, queue.WithRetention(time.Minute))
	k := newKeeper(t, cut, 10*time.Second)

	id, err := admin.Enqueue(ctx, nil)
	require.NoError(t, err)
	task, err := worker.Dequeue(ctx, k)
	require.NoError(t, err)
	cluster.CutClient(cut)
	require.NoError(t, admin.Cancel(ctx, id))
	cluster.RestoreClient(cut)
	assert.ErrorIs(t, task.Ack(ctx), queue.ErrCanceled)
	st, err := admin.Status(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, queue.StateCanceled, st.State)
	require.NoError(t, admin.Delete(ctx))
}
