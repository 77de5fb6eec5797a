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

// AckWith enqueues follow-up tasks in the acknowledgement's transaction:
// they exist if and only if the Ack landed; a follow-up whose dedup ID is
// held refuses the whole Ack and leaves the task held; a lost claim
// enqueues nothing.
func TestAckWithFollowUp(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	name := qname(t)
	cli := cluster.Client()
	q := newQueue(t, cli, name)
	k := newKeeper(t, cli, 5*time.Second)

	_, err := q.Enqueue(ctx, []byte("step 1"))
	require.NoError(t, err)
	task, err := q.Dequeue(ctx, k)
	require.NoError(t, err)
	next, err := q.EnqueueTx(ctx, []byte("step 2"), queue.WithDedupID("pipeline-1/step-2"))
	require.NoError(t, err)
	require.NoError(t, task.AckWith(ctx, queue.Completion{Result: []byte("r1"), Enqueue: []queue.TxEnqueue{next}, Ops: []clientv3.Op{clientv3.OpPut(name+"/work/1", "done")}}))
	res, err := q.Result(ctx, task.ID)
	require.NoError(t, err)
	assert.Equal(t, []byte("r1"), res)

	// The follow-up is there, holding its dedup ID; a second follow-up
	// with the same ID refuses the Ack, which writes nothing.
	task2, err := q.Dequeue(ctx, k)
	require.NoError(t, err)
	assert.Equal(t, next.ID, task2.ID)
	assert.Equal(t, []byte("step 2"), task2.Payload)
	_, err = q.Enqueue(ctx, []byte("other"), queue.WithDedupID("pipeline-1/step-3"))
	require.NoError(t, err)
	dup, err := q.EnqueueTx(ctx, []byte("step 3"), queue.WithDedupID("pipeline-1/step-3"))
	require.NoError(t, err)
	err = task2.AckWith(ctx, queue.Completion{Enqueue: []queue.TxEnqueue{dup}, Ops: []clientv3.Op{clientv3.OpPut(name+"/work/2", "done")}})
	require.ErrorIs(t, err, queue.ErrDedupHeld)
	require.NoError(t, task2.Context().Err(), "the task is still held")
	st, err := q.Status(ctx, task2.ID)
	require.NoError(t, err)
	assert.Equal(t, queue.StateRunning, st.State)
	_, err = q.Status(ctx, dup.ID)
	assert.ErrorIs(t, err, queue.ErrNotFound)
	got, err := cli.Get(ctx, name+"/work/2")
	require.NoError(t, err)
	assert.Empty(t, got.Kvs, "the refused Ack's writes landed")
	require.NoError(t, task2.Ack(ctx))

	// A lost claim: the Ack is refused, and its follow-up is not enqueued.
	other, err := q.Dequeue(ctx, k)
	require.NoError(t, err)
	require.NoError(t, cluster.RevokeLease(ctx, k.Current().ID()))
	<-other.Context().Done()
	lostNext, err := q.EnqueueTx(ctx, []byte("after loss"))
	require.NoError(t, err)
	err = other.AckWith(ctx, queue.Completion{Enqueue: []queue.TxEnqueue{lostNext}})
	require.ErrorIs(t, err, queue.ErrLost)
	_, err = q.Status(ctx, lostNext.ID)
	assert.ErrorIs(t, err, queue.ErrNotFound)

	// A follow-up not made by EnqueueTx is refused before anything is sent.
	again, err := q.Dequeue(ctx, k)
	require.NoError(t, err)
	assert.ErrorContains(t, again.AckWith(ctx, queue.Completion{Enqueue: []queue.TxEnqueue{{}}}), "not made by EnqueueTx")
	require.NoError(t, again.Ack(ctx))
}
