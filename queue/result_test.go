package queue_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/queue"
)

func TestAckResult(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	name := qname(t)
	cli := cluster.Client()
	q := newQueue(t, cli, name)
	k := newKeeper(t, cli, 5*time.Second)

	id, err := q.Enqueue(ctx, []byte("sum 1 2"))
	require.NoError(t, err)
	_, err = q.Result(ctx, id)
	assert.ErrorIs(t, err, queue.ErrNotFinished)
	task, err := q.Dequeue(ctx, k)
	require.NoError(t, err)
	_, err = q.Result(ctx, id)
	assert.ErrorIs(t, err, queue.ErrNotFinished)

	// Too large: refused before anything is written; the task is still
	// held.
	err = task.AckResult(ctx, bytes.Repeat([]byte("x"), queue.MaxResultBytes+1))
	assert.ErrorContains(t, err, "queue: ack of task "+id+": result of")
	require.NoError(t, task.Context().Err())

	side := name + "/work/side"
	require.NoError(t, task.AckResult(ctx, []byte("3"), clientv3.OpPut(side, "x")))
	require.NoError(t, task.AckResult(ctx, []byte("3")), "idempotent")
	res, err := q.Result(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, []byte("3"), res)
	// The result goes with the finished record: same lease.
	resp, err := cli.Txn(ctx).Then(clientv3.OpGet(name+"/.queue/r/"+id), clientv3.OpGet(name+"/.queue/f/"+id), clientv3.OpGet(side)).Commit()
	require.NoError(t, err)
	r, f, s := resp.Responses[0].GetResponseRange().Kvs, resp.Responses[1].GetResponseRange().Kvs, resp.Responses[2].GetResponseRange().Kvs
	require.Len(t, r, 1)
	require.Len(t, f, 1)
	require.Len(t, s, 1, "the ops went in with the result")
	assert.NotZero(t, r[0].Lease)
	assert.Equal(t, f[0].Lease, r[0].Lease)

	// Another task acked without a result.
	id2, err := q.Enqueue(ctx, nil)
	require.NoError(t, err)
	task, err = q.Dequeue(ctx, k)
	require.NoError(t, err)
	require.NoError(t, task.Ack(ctx))
	_, err = q.Result(ctx, id2)
	assert.ErrorIs(t, err, queue.ErrNoResult)

	_, err = q.Result(ctx, "18ea4edf0000000000000000")
	assert.ErrorIs(t, err, queue.ErrNotFound)
	_, err = q.Result(ctx, "not-an-id")
	assert.ErrorContains(t, err, "queue: result: invalid task ID")
	assertOnlyFinished(t, cli, name)
}
