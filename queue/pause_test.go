package queue_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/queue"
	"github.com/concordkit/concord/testcluster"
)

func TestPauseResume(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	name := qname(t)
	cli := cluster.Client()
	q := newQueue(t, cli, name)
	k := newKeeper(t, cli, 5*time.Second)

	require.NoError(t, q.Pause(ctx))
	at, err := q.Paused(ctx)
	require.NoError(t, err)
	require.False(t, at.IsZero())
	require.NoError(t, q.Pause(ctx), "pausing twice")
	again, err := q.Paused(ctx)
	require.NoError(t, err)
	assert.Equal(t, at, again, "a second Pause keeps the first")

	// Enqueue goes on while paused; nothing is handed out.
	id, err := q.Enqueue(ctx, []byte("x"))
	require.NoError(t, err)
	st, err := q.Stats(ctx)
	require.NoError(t, err)
	assert.True(t, st.Paused)
	assert.Equal(t, 1, st.Ready)
	waitUntil(t, ctx, 5*time.Second, "TryDequeue sees the pause", func() bool {
		_, err := q.TryDequeue(ctx, k)
		return errors.Is(err, queue.ErrPaused)
	})
	dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	task, err := q.Dequeue(dctx, k)
	cancel()
	assert.Nil(t, task)
	assert.ErrorIs(t, err, context.DeadlineExceeded, "Dequeue waits while paused")

	require.NoError(t, q.Resume(ctx))
	task, err = q.Dequeue(ctx, k)
	require.NoError(t, err)
	assert.Equal(t, id, task.ID)
	require.NoError(t, task.Ack(ctx))
	st, err = q.Stats(ctx)
	require.NoError(t, err)
	assert.False(t, st.Paused)
	require.NoError(t, q.Resume(ctx), "resuming a running queue")
	at, err = q.Paused(ctx)
	require.NoError(t, err)
	assert.True(t, at.IsZero())

	_, err = cluster.Admin().Put(ctx, name+"/.queue/i/p", "junk")
	require.NoError(t, err)
	_, err = q.Paused(ctx)
	assert.ErrorIs(t, err, queue.ErrCorrupt)
	_, err = cluster.Admin().Delete(ctx, name+"/.queue/i/p")
	require.NoError(t, err)
}

// Once Pause has returned no claim lands, even from a worker whose view of
// the queue has not seen the pause yet: its client's traffic takes 100 ms
// each way, so its claim of a task it saw before the pause reaches etcd
// after the pause did. The claim transaction's compare refuses it.
func TestPauseFencesClaimsInFlight(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	name := qname(t)
	admin := cluster.Admin()
	producer := newQueue(t, admin, name)
	slow, err := cluster.NewClient(testcluster.WithLatency(100*time.Millisecond, 0))
	require.NoError(t, err)
	t.Cleanup(func() { _ = slow.Close() })
	worker := newQueue(t, slow, name)
	k := newKeeper(t, slow, 5*time.Second)
	// Load the worker's view first: an empty queue.
	_, err = worker.TryDequeue(ctx, k)
	require.ErrorIs(t, err, queue.ErrEmpty)

	got := make(chan *queue.Task, 1)
	dctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		task, _ := worker.Dequeue(dctx, k)
		got <- task
	}()
	id, err := producer.Enqueue(ctx, []byte("x"))
	require.NoError(t, err)
	require.NoError(t, producer.Pause(ctx))
	paused := time.Now()

	select {
	case task := <-got:
		t.Fatalf("task %s handed out %v after Pause returned", task.ID, time.Since(paused))
	case <-time.After(time.Second):
	}
	resp, err := admin.Get(ctx, name+"/.queue/i/c/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)
	assert.Zero(t, resp.Count, "a claim landed after Pause returned")

	require.NoError(t, producer.Resume(ctx))
	task := recvTask(t, got)
	require.NotNil(t, task)
	assert.Equal(t, id, task.ID)
	require.NoError(t, task.Ack(ctx))
}

func recvTask(t *testing.T, ch <-chan *queue.Task) *queue.Task {
	t.Helper()
	select {
	case task := <-ch:
		return task
	case <-time.After(10 * time.Second):
		t.Fatal("no task within 10s")
		return nil
	}
}
