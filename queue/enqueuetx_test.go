package queue_test

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/queue"
)

// EnqueueTx's task lands with the caller's transaction, or not at all.
func TestEnqueueTx(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	name := qname(t)
	cli := cluster.Client()
	q := newQueue(t, cli, name)
	k := newKeeper(t, cli, 5*time.Second)
	result := name + "/work/result"

	// A transaction whose own condition fails enqueues nothing.
	e, err := q.EnqueueTx(ctx, []byte("follow-up"))
	require.NoError(t, err)
	assert.Empty(t, e.Cmps)
	resp, err := cli.Txn(ctx).If(append([]clientv3.Cmp{clientv3.Compare(clientv3.Version(result), ">", 0)}, e.Cmps...)...).
		Then(append([]clientv3.Op{clientv3.OpPut(result, "r")}, e.Ops...)...).Commit()
	require.NoError(t, err)
	require.False(t, resp.Succeeded)
	_, err = q.Status(ctx, e.ID)
	assert.ErrorIs(t, err, queue.ErrNotFound)
	got, err := q.TryDequeue(ctx, k)
	assert.ErrorIs(t, err, queue.ErrEmpty)
	assert.Nil(t, got, "a task of a failed transaction was dequeued")

	// One that succeeds writes the result and enqueues the task together.
	e, err = q.EnqueueTx(ctx, []byte("follow-up"), queue.WithPriority(3))
	require.NoError(t, err)
	resp, err = cli.Txn(ctx).If(clientv3.Compare(clientv3.Version(result), "=", 0)).
		Then(append([]clientv3.Op{clientv3.OpPut(result, "r")}, e.Ops...)...).Commit()
	require.NoError(t, err)
	require.True(t, resp.Succeeded)
	task, err := q.Dequeue(ctx, k)
	require.NoError(t, err)
	assert.Equal(t, e.ID, task.ID)
	assert.Equal(t, []byte("follow-up"), task.Payload)
	assert.Equal(t, 3, task.Priority)
	require.NoError(t, task.Ack(ctx))

	// With a dedup ID held by an unfinished task, the whole transaction
	// fails.
	held, err := q.Enqueue(ctx, []byte("first"), queue.WithDedupID("d"))
	require.NoError(t, err)
	e, err = q.EnqueueTx(ctx, []byte("second"), queue.WithDedupID("d"))
	require.NoError(t, err)
	require.Len(t, e.Cmps, 1)
	resp, err = cli.Txn(ctx).If(e.Cmps...).Then(append(e.Ops, clientv3.OpPut(name+"/work/other", "x"))...).Commit()
	require.NoError(t, err)
	assert.False(t, resp.Succeeded)
	_, err = q.Status(ctx, e.ID)
	assert.ErrorIs(t, err, queue.ErrNotFound)
	task, err = q.Dequeue(ctx, k)
	require.NoError(t, err)
	assert.Equal(t, held, task.ID)
	require.NoError(t, task.Ack(ctx))
	// Once it finished, the ID is free: a new TxEnqueue with it lands.
	e, err = q.EnqueueTx(ctx, []byte("second"), queue.WithDedupID("d"))
	require.NoError(t, err)
	resp, err = cli.Txn(ctx).If(e.Cmps...).Then(e.Ops...).Commit()
	require.NoError(t, err)
	require.True(t, resp.Succeeded)
	task, err = q.Dequeue(ctx, k)
	require.NoError(t, err)
	assert.Equal(t, e.ID, task.ID)
	require.NoError(t, task.Ack(ctx))
	assertOnlyFinished(t, cli, name)

	// Bad input is refused before anything is written.
	_, err = q.EnqueueTx(ctx, []byte("x"), queue.WithDelay(-time.Second))
	assert.ErrorContains(t, err, "queue: enqueue: invalid option")
	_, err = q.EnqueueTx(ctx, make([]byte, 2<<20))
	assert.ErrorContains(t, err, "queue: enqueue: payload of")
	_, err = queue.New(cli, "").EnqueueTx(ctx, nil)
	assert.True(t, err != nil && strings.HasPrefix(err.Error(), "queue: "), "%v", err)
}
