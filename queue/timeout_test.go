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

// A worker that holds a task past its timeout is told first, with a cause
// that is both ErrTimeout and ErrLost; the claim is then released in etcd,
// so another worker takes the task at once (not after the stuck worker's
// lease, which its live keeper renews for ever); the stuck worker's calls
// and guarded writes are refused.
func TestTaskTimeout(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	name := qname(t)
	cli := cluster.Client()
	q1 := newQueue(t, cli, name, queue.WithRetention(0))
	q2 := newQueue(t, cli, name, queue.WithRetention(0))
	k1 := newKeeper(t, cli, 10*time.Second)
	k2 := newKeeper(t, cli, 10*time.Second)

	id, err := q1.Enqueue(ctx, []byte("x"), queue.WithTimeout(300*time.Millisecond))
	require.NoError(t, err)
	stuck, err := q1.Dequeue(ctx, k1)
	require.NoError(t, err)
	start := time.Now()
	select {
	case <-stuck.Context().Done():
	case <-ctx.Done():
		t.Fatal("the task's context did not end at its timeout")
	}
	assert.GreaterOrEqual(t, time.Since(start), 250*time.Millisecond)
	cause := context.Cause(stuck.Context())
	assert.ErrorIs(t, cause, queue.ErrTimeout)
	assert.ErrorIs(t, cause, queue.ErrLost)

	next, err := q2.Dequeue(ctx, k2)
	require.NoError(t, err)
	assert.Equal(t, id, next.ID)
	assert.Equal(t, 2, next.Attempt)
	assert.True(t, next.Redelivered, "the timed-out worker may still be running it")
	assert.Greater(t, next.Token(), stuck.Token())
	assert.Less(t, time.Since(start), 5*time.Second, "not held until the stuck worker's lease ended")

	for what, err := range map[string]error{
		"ack":      stuck.Ack(ctx),
		"progress": stuck.Progress(ctx, 0.5, "late", nil),
		"nack":     stuck.Nack(ctx, 0),
	} {
		assert.ErrorIs(t, err, queue.ErrTimeout, what)
		assert.ErrorIs(t, err, queue.ErrLost, what)
	}
	// A write: etcd serves a transaction without operations as a
	// serializable read, which a lagging member may answer from the past.
	resp, err := cli.Txn(ctx).If(stuck.Guard()...).Then(clientv3.OpPut(name+"/work", "late")).Commit()
	require.NoError(t, err)
	assert.False(t, resp.Succeeded, "the stuck worker's guard still holds")

	st, err := q2.Status(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, queue.StateRunning, st.State)
	assert.Equal(t, 2, st.Attempt)
	assert.Contains(t, st.LastError, "timed out after 300ms on attempt 1")
	require.NoError(t, next.Ack(ctx))
	assertOnlyFinished(t, cluster.Admin(), name)
}

// On the last attempt a timeout dead-letters the task; a consumer's
// WithTaskTimeout applies to tasks enqueued without their own.
func TestTaskTimeoutOnLastAttempt(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	name := qname(t)
	cli := cluster.Client()
	q := newQueue(t, cli, name, queue.WithMaxAttempts(1), queue.WithTaskTimeout(200*time.Millisecond))
	k := newKeeper(t, cli, 10*time.Second)
	id, err := q.Enqueue(ctx, nil)
	require.NoError(t, err)
	task, err := q.Dequeue(ctx, k)
	require.NoError(t, err)
	select {
	case <-task.Context().Done():
	case <-ctx.Done():
		t.Fatal("the task's context did not end at its timeout")
	}
	assert.ErrorIs(t, context.Cause(task.Context()), queue.ErrTimeout)
	var dead []queue.DeadLetter
	waitUntil(t, ctx, 10*time.Second, "the timed-out task in the dead letters", func() bool {
		dead, err = q.DeadLetters(ctx, 0)
		require.NoError(t, err)
		return len(dead) == 1
	})
	assert.Equal(t, id, dead[0].ID)
	assert.Contains(t, dead[0].Reason, "timed out after 200ms on attempt 1 of 1")
	_, err = q.PurgeDead(ctx)
	require.NoError(t, err)
}

// Close waits for a timeout being carried out: when it returns, the
// timed-out claim is released in etcd, and no goroutine of it is left.
func TestCloseJoinsTimeout(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	name := qname(t)
	cli := cluster.Client()
	q := queue.New(cli, name, queue.WithRetention(0), queue.WithTaskTimeout(100*time.Millisecond))
	k := newKeeper(t, cli, 10*time.Second)
	_, err := q.Enqueue(ctx, nil)
	require.NoError(t, err)
	task, err := q.Dequeue(ctx, k)
	require.NoError(t, err)
	select {
	case <-task.Context().Done():
	case <-ctx.Done():
		t.Fatal("the task's context did not end at its timeout")
	}
	require.NoError(t, q.Close())
	resp, err := cluster.Admin().Get(ctx, task.Key())
	require.NoError(t, err)
	assert.Empty(t, resp.Kvs, "Close returned before the timed-out claim was released")
	require.NoError(t, queue.New(cli, name).Delete(ctx))
}
