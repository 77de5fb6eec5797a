package queue_test

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/concordkit/concord/queue"
)

// A task that a batch claimed but that waited in the buffer and was given
// back spends no attempt: with one attempt allowed, every task of a backlog
// still reaches the worker, on its first attempt, while the worker is busy
// long enough for its buffer to be given back each time.
func TestBatchedClaimGivenBackSpendsNoAttempt(t *testing.T) {
	ctx := ctxT(t, 60*time.Second)
	name := qname(t)
	cli := cluster.Client()
	q := newQueue(t, cli, name, queue.WithMaxAttempts(1), queue.WithRetention(0))
	k := newKeeper(t, cli, 5*time.Second)
	ids, err := q.EnqueueBatch(ctx, make([]queue.Item, 5))
	require.NoError(t, err)

	givenBack := 0
	for range ids {
		task, err := q.Dequeue(ctx, k)
		require.NoError(t, err)
		assert.Equal(t, 1, task.Attempt, "task %s", task.ID)
		assert.False(t, task.Redelivered, "task %s", task.ID)
		st, err := q.Stats(ctx)
		require.NoError(t, err)
		givenBack += st.Running - 1
		// Busy until the batch's other claims were given back.
		waitUntil(t, ctx, 10*time.Second, "buffered claims given back", func() bool {
			st, err := q.Stats(ctx)
			require.NoError(t, err)
			return st.Running == 1
		})
		if st.Running > 1 {
			// A task given back reads as queued with no attempt made.
			for _, id := range ids {
				if id == task.ID {
					continue
				}
				s, err := q.Status(ctx, id)
				if err == nil && s.State == queue.StateQueued {
					assert.Equal(t, 0, s.Attempt, "queued task %s after its claim was given back", id)
				}
			}
		}
		require.NoError(t, task.Ack(ctx))
	}
	require.Positive(t, givenBack, "no batched claim was given back: the test tested nothing")
	dead, err := q.DeadLetters(ctx, 0)
	require.NoError(t, err)
	assert.Empty(t, dead, "a healthy task was dead-lettered")
	assertOnlyFinished(t, cluster.Admin(), name)
}

// After a claim is lost, the status counts the attempt it spent, and the
// next claim is a redelivery on the next attempt.
func TestStatusCountsLostAttempt(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	name := qname(t)
	cli := cluster.Client()
	q := newQueue(t, cli, name, queue.WithRetention(0))
	k1 := newKeeper(t, cli, 5*time.Second)
	k2 := newKeeper(t, cli, 5*time.Second)
	id, err := q.Enqueue(ctx, nil)
	require.NoError(t, err)
	lost, err := q.Dequeue(ctx, k1)
	require.NoError(t, err)
	require.NoError(t, cluster.RevokeLease(ctx, lost.Lease()))
	select {
	case <-lost.Context().Done():
	case <-ctx.Done():
		t.Fatal("task context not canceled after its lease was revoked")
	}
	st, err := q.Status(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, queue.StateQueued, st.State)
	assert.Equal(t, 1, st.Attempt, "attempts made after a lost first attempt")

	again, err := q.Dequeue(ctx, k2)
	require.NoError(t, err)
	assert.Equal(t, 2, again.Attempt)
	assert.True(t, again.Redelivered)
	st, err = q.Status(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, queue.StateRunning, st.State)
	assert.Equal(t, 2, st.Attempt)
	require.NoError(t, again.Ack(ctx))
	assertOnlyFinished(t, cluster.Admin(), name)
}

// A finished task reports its last progress, so a progress bar does not
// drop from 100% to 0% at "done"; one resumed from an earlier attempt's
// progress keeps that attempt's figure if it reports none of its own.
func TestDoneKeepsLastProgress(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	name := qname(t)
	cli := cluster.Client()
	q := newQueue(t, cli, name, queue.WithRetryBackoff(time.Millisecond, time.Millisecond))
	k := newKeeper(t, cli, 5*time.Second)

	id, err := q.Enqueue(ctx, nil)
	require.NoError(t, err)
	task, err := q.Dequeue(ctx, k)
	require.NoError(t, err)
	require.NoError(t, task.Progress(ctx, 1, "all rows copied", nil))
	require.NoError(t, task.Ack(ctx))
	st, err := q.Status(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, queue.StateDone, st.State)
	assert.Equal(t, 1.0, st.Fraction)
	assert.Equal(t, "all rows copied", st.Message)

	id, err = q.Enqueue(ctx, nil)
	require.NoError(t, err)
	task, err = q.Dequeue(ctx, k)
	require.NoError(t, err)
	require.NoError(t, task.Progress(ctx, 0.4, "first try", []byte("cp")))
	require.NoError(t, task.Nack(ctx, 0))
	task, err = q.Dequeue(ctx, k)
	require.NoError(t, err)
	require.NoError(t, task.Ack(ctx))
	st, err = q.Status(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, queue.StateDone, st.State)
	assert.Equal(t, 0.4, st.Fraction)
	assert.Equal(t, "first try", st.Message)
}

// An error names its package once, at its start.
func prefixOnce(t *testing.T, err error) {
	t.Helper()
	msg := err.Error()
	assert.True(t, strings.HasPrefix(msg, "queue: "), msg)
	assert.Equal(t, 1, strings.Count(" "+msg, " queue: "), msg)
}

func TestErrorPrefixOnce(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	q := newQueue(t, cluster.Client(), qname(t))
	_, err := q.EnqueueBatch(ctx, []queue.Item{{}, {Options: []queue.EnqueueOption{queue.WithDelay(-1)}}})
	require.ErrorContains(t, err, "queue: enqueue batch: item 1: invalid option")
	prefixOnce(t, err)
	_, err = q.Enqueue(ctx, nil, queue.WithDelay(-1))
	require.ErrorContains(t, err, "queue: enqueue: invalid option")
	prefixOnce(t, err)
}
