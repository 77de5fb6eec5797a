package cron_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/concordkit/concord/cron"
	"github.com/concordkit/concord/queue"
)

// A job enqueues its follow-up task through Run.Commit: the task lands
// with the commit or not at all (a second Commit of the run is refused and
// its task never exists), and a dedup ID held by an unfinished task makes
// a later run's Commit enqueue nothing.
func TestCommitEnqueues(t *testing.T) {
	name := t.Name()
	cleanupName(t, cluster, name)
	ctx := ctxT(t, 30*time.Second)
	p := newProcess(t, cluster, 10*time.Second)
	q := queue.New(p.cli, name+"/reports", queue.WithRetention(time.Minute))
	defer q.Close()

	type result struct {
		committed, refused string
		err                error
	}
	results := make(chan result, 8)
	s := cron.New(p.k, name)
	require.NoError(t, s.Add("report", everySecond, func(ctx context.Context, r cron.Run) error {
		var res result
		defer func() { results <- res }()
		e, err := q.EnqueueTx(ctx, []byte(r.Time.String()), queue.WithDedupID("daily-report"))
		if res.err = err; err != nil {
			return err
		}
		if res.err = r.Commit(ctx, e.Op()); res.err != nil {
			return res.err
		}
		res.committed = e.ID
		again, err := q.EnqueueTx(ctx, []byte("again"))
		if res.err = err; err != nil {
			return err
		}
		if err := r.Commit(ctx, again.Op()); !errors.Is(err, cron.ErrCommitted) {
			res.err = errors.Join(errors.New("second Commit of the run was not refused"), err)
			return res.err
		}
		res.refused = again.ID
		return nil
	}))
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(rctx) }()
	first := recvT(t, results, 10*time.Second, "first run")
	second := recvT(t, results, 10*time.Second, "second run")
	stop()
	require.ErrorIs(t, recvT(t, done, 10*time.Second, "Run"), context.Canceled)
	require.NoError(t, first.err)
	require.NoError(t, second.err)

	st, err := q.Status(ctx, first.committed)
	require.NoError(t, err)
	assert.Equal(t, queue.StateQueued, st.State, "the committed run's task landed")
	for what, id := range map[string]string{
		"the refused Commit's task":                        first.refused,
		"the second run's, whose dedup ID was held":        second.committed,
		"the second run's refused Commit's task, likewise": second.refused,
	} {
		_, err := q.Status(ctx, id)
		assert.ErrorIs(t, err, queue.ErrNotFound, what)
	}
	stats, err := q.Stats(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1, stats.Ready)
	require.NoError(t, q.Delete(ctx))
}
