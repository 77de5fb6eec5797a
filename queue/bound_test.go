package queue_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/queue"
)

// countKeys counts the keys under prefix.
func countKeys(t *testing.T, ctx context.Context, prefix string) int64 {
	t.Helper()
	resp, err := cluster.Admin().Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)
	return resp.Count
}

// A bounded queue refuses what would go over its bound, writing nothing,
// and makes room as tasks are acknowledged, dead-lettered or canceled; a
// dedup ID still finds its task in a full queue; a requeued dead letter
// counts again.
func TestMaxSize(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	name := qname(t)
	cli := cluster.Client()
	q := newQueue(t, cli, name, queue.WithMaxSize(3), queue.WithRetention(time.Minute))
	k := newKeeper(t, cli, 10*time.Second)

	first, err := q.Enqueue(ctx, []byte("1"), queue.WithDedupID("one"))
	require.NoError(t, err)
	_, err = q.EnqueueBatch(ctx, []queue.Item{{Payload: []byte("2")}, {Payload: []byte("3")}})
	require.NoError(t, err)
	tasks := countKeys(t, ctx, name+"/.queue/t/")
	_, err = q.Enqueue(ctx, []byte("4"))
	require.ErrorIs(t, err, queue.ErrFull)
	assert.EqualError(t, err, "queue: full: 3 of 3 tasks unfinished")
	assert.Equal(t, tasks, countKeys(t, ctx, name+"/.queue/t/"), "a refused enqueue writes nothing")
	again, err := q.Enqueue(ctx, []byte("1"), queue.WithDedupID("one"))
	require.NoError(t, err, "a full queue still answers a dedup ID with its task")
	assert.Equal(t, first, again)
	// Another producer, with its own reading of the count, is refused too.
	other := newQueue(t, cli, name, queue.WithMaxSize(3))
	_, err = other.Enqueue(ctx, []byte("4"))
	require.ErrorIs(t, err, queue.ErrFull)
	_, err = q.EnqueueTx(ctx, []byte("tx"))
	assert.ErrorContains(t, err, "queue: enqueue: EnqueueTx on a bounded Queue")

	// Each way out makes room for one, which the other producer (whose
	// reading is stale) sees.
	task, err := q.Dequeue(ctx, k)
	require.NoError(t, err)
	require.NoError(t, task.Ack(ctx))
	_, err = other.Enqueue(ctx, []byte("5"))
	require.NoError(t, err, "room after an Ack")
	task, err = q.Dequeue(ctx, k)
	require.NoError(t, err)
	require.NoError(t, task.Fail(ctx, "bad"))
	dead := task.ID
	_, err = other.Enqueue(ctx, []byte("6"))
	require.NoError(t, err, "room after a dead letter")
	require.ErrorIs(t, q.Requeue(ctx, dead), queue.ErrFull, "a requeued dead letter counts again")
	st, err := q.Stats(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, st.Dead)
	task, err = q.Dequeue(ctx, k)
	require.NoError(t, err)
	require.NoError(t, q.Cancel(ctx, task.ID))
	require.NoError(t, q.Requeue(ctx, dead), "room after a cancel")
	_, err = other.Enqueue(ctx, []byte("7"))
	require.ErrorIs(t, err, queue.ErrFull)

	// A batch is admitted a transaction at a time, each of at most the
	// bound: the first fills the queue, the rest is refused, and the IDs
	// of what committed come back with ErrFull.
	for {
		task, err := q.TryDequeue(ctx, k)
		if errors.Is(err, queue.ErrEmpty) {
			break
		}
		require.NoError(t, err)
		require.NoError(t, task.Ack(ctx))
	}
	_, err = q.EnqueueBatch(ctx, []queue.Item{{Payload: []byte("a")}, {Payload: []byte("b")}, {Payload: []byte("c")}, {Payload: []byte("d")}})
	require.ErrorIs(t, err, queue.ErrFull)
	st, err = q.Stats(ctx)
	require.NoError(t, err)
	assert.Equal(t, 3, st.Ready, "the batch's first transaction filled the queue, the rest was refused")
	assert.Equal(t, 0, st.Dead)
}

// A dedup ID held by an unfinished task answers with that task also when
// the producer's reading of the count is stale and the queue filled
// meanwhile: its admission fails on both the count and the dedup ID.
func TestMaxSizeDedupWhileCountMoved(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	name := qname(t)
	cli := cluster.Client()
	q := newQueue(t, cli, name, queue.WithMaxSize(2))
	other := newQueue(t, cli, name, queue.WithMaxSize(2))
	held, err := q.Enqueue(ctx, []byte("1"), queue.WithDedupID("report"))
	require.NoError(t, err)
	_, err = other.Enqueue(ctx, []byte("2"))
	require.NoError(t, err, "fills the queue; q's reading still says one")
	again, err := q.Enqueue(ctx, []byte("1"), queue.WithDedupID("report"))
	require.NoError(t, err)
	assert.Equal(t, held, again)
}

// An enqueue WithWaitIfFull waits for room: until its context ends, or
// until a task leaves.
func TestMaxSizeWait(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	name := qname(t)
	cli := cluster.Client()
	q := newQueue(t, cli, name, queue.WithMaxSize(1))
	k := newKeeper(t, cli, 10*time.Second)
	_, err := q.Enqueue(ctx, []byte("1"))
	require.NoError(t, err)

	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = q.Enqueue(short, []byte("2"), queue.WithWaitIfFull())
	cancel()
	require.ErrorIs(t, err, queue.ErrFull)
	require.ErrorIs(t, err, context.DeadlineExceeded)

	done := make(chan error, 1)
	go func() {
		_, err := q.Enqueue(ctx, []byte("2"), queue.WithWaitIfFull())
		done <- err
	}()
	task, err := q.Dequeue(ctx, k)
	require.NoError(t, err)
	require.Equal(t, "1", string(task.Payload))
	select {
	case err := <-done:
		t.Fatalf("the enqueue returned (%v) while the queue was full", err)
	default:
	}
	require.NoError(t, task.Ack(ctx))
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-ctx.Done():
		t.Fatal("the waiting enqueue did not go in once the task left")
	}
	task, err = q.Dequeue(ctx, k)
	require.NoError(t, err)
	assert.Equal(t, "2", string(task.Payload))
	require.NoError(t, task.Ack(ctx))
}

// Under producers that race each other and workers that drain, the queue
// never holds more unfinished tasks than its bound, by etcd's own history
// of the task records.
func TestMaxSizeExactUnderRace(t *testing.T) {
	ctx := ctxT(t, 60*time.Second)
	name := qname(t)
	const bound = 5
	start, err := cluster.Admin().Get(ctx, "/")
	require.NoError(t, err)

	var wg sync.WaitGroup
	var mu sync.Mutex
	enqueued, refused := 0, 0
	pctx, stopProducers := context.WithTimeout(ctx, 3*time.Second)
	defer stopProducers()
	for p := range 4 {
		cli, err := cluster.NewClient()
		require.NoError(t, err)
		t.Cleanup(func() { _ = cli.Close() })
		q := newQueue(t, cli, name, queue.WithMaxSize(bound))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; pctx.Err() == nil; i++ {
				var err error
				if i%3 == 2 {
					_, err = q.EnqueueBatch(pctx, []queue.Item{{Payload: []byte(fmt.Sprintf("%d-%d-a", p, i))}, {Payload: []byte(fmt.Sprintf("%d-%d-b", p, i))}})
				} else {
					_, err = q.Enqueue(pctx, []byte(fmt.Sprintf("%d-%d", p, i)))
				}
				mu.Lock()
				switch {
				case err == nil:
					enqueued++
				case errors.Is(err, queue.ErrFull):
					refused++
				case pctx.Err() == nil:
					t.Errorf("producer %d: %v", p, err)
				}
				mu.Unlock()
			}
		}()
	}
	wctx, stopWorkers := context.WithCancel(ctx)
	defer stopWorkers()
	for range 2 {
		cli, err := cluster.NewClient()
		require.NoError(t, err)
		t.Cleanup(func() { _ = cli.Close() })
		q := newQueue(t, cli, name, queue.WithRetention(0))
		k := newKeeper(t, cli, 10*time.Second)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				task, err := q.Dequeue(wctx, k)
				if err != nil {
					return
				}
				if err := task.Ack(wctx); err != nil {
					return
				}
			}
		}()
	}
	<-pctx.Done()
	stopWorkers()
	wg.Wait()
	require.Positive(t, enqueued)
	require.Positive(t, refused, "the producers never filled the queue: the test proves nothing")

	// Replay the task records' history: live records are the unfinished
	// tasks (nothing here is dead-lettered).
	live, most := 0, 0
	prefix := name + "/.queue/t/"
	// A key after the last task record marks the end of the history.
	sentinel := prefix + "~end"
	_, err = cluster.Admin().Put(ctx, sentinel, "")
	require.NoError(t, err)
	wctx2, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	wch := cluster.Admin().Watch(wctx2, prefix, clientv3.WithPrefix(), clientv3.WithRev(start.Header.Revision+1))
history:
	for resp := range wch {
		require.NoError(t, resp.Err())
		for _, ev := range resp.Events {
			switch {
			case string(ev.Kv.Key) == sentinel:
				break history
			case ev.Type == clientv3.EventTypePut && ev.IsCreate():
				live++
			case ev.Type == clientv3.EventTypeDelete:
				live--
			}
			most = max(most, live)
		}
	}
	t.Logf("%d enqueues, %d refused; at most %d tasks unfinished at once (bound %d)", enqueued, refused, most, bound)
	assert.LessOrEqual(t, most, bound)
}
