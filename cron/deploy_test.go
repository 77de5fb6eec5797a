package cron_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/cron"
	"github.com/concordkit/concord/election"
)

// TestRollingDeploy: three replicas run a job every second; each replica in
// turn is stopped gracefully (as a rolling deploy's SIGTERM would) and a new
// one started in its place. With WithDrain the leader lets its run in
// progress finish and with WithHandover it hands leadership to the newest
// replica, so no lease is waited for: every second from the first to the
// last is committed exactly once, and by its first attempt (no time is
// missed, none is rerun), and leadership moves at most twice.
func TestRollingDeploy(t *testing.T) {
	const ttl = 3 * time.Second
	c := cluster
	name := "/test/" + t.Name()
	cleanupName(t, c, name)
	ledger := name + "/ledger/"
	ctx := ctxT(t, 90*time.Second)

	runs := make(chan ledgerRun, 256)
	starts := make(chan int, 256) // the replica that started a run
	start := func(i int) (stop func()) {
		p := newProcess(t, c, ttl)
		s := cron.New(p.k, name, cron.WithValue(strconv.Itoa(i)), cron.WithDrain(2*time.Second), cron.WithHandover(election.Newest))
		require.NoError(t, s.Add("tick", "@every 1s", func(ctx context.Context, r cron.Run) error {
			at := time.Now()
			starts <- i
			select { // some work, so that a stop lands inside a run
			case <-time.After(400 * time.Millisecond):
			case <-ctx.Done():
				return context.Cause(ctx)
			}
			key := fmt.Sprintf("%s%d/%d-%d-%d", ledger, r.Time.Unix(), i, r.Token, r.Attempt)
			if err := r.Commit(ctx, clientv3.OpPut(key, "")); err != nil {
				return err
			}
			runs <- ledgerRun{i, r, at}
			return nil
		}, cron.WithCatchUp(cron.CatchUpAll, time.Minute), cron.WithOverlap(cron.AllowOverlap), cron.WithRerun(3)))
		stopRun := runScheduler(t, s)
		return func() {
			require.ErrorIs(t, stopRun(), context.Canceled)
			require.NoError(t, p.k.Close(ctx)) // the process exits
		}
	}
	stops := make([]func(), 3)
	for i := range stops {
		stops[i] = start(i)
	}
	for range 3 {
		recvT(t, runs, 10*time.Second, "run")
	}
	for i := range stops {
		// Stop it while a run goes: the leader's must finish first.
		for len(starts) > 0 {
			<-starts
		}
		recvT(t, starts, 10*time.Second, "a run's start")
		stops[i]()
		stops[i] = start(i + 3)
		for range 3 {
			recvT(t, runs, 10*time.Second, fmt.Sprintf("run after replica %d was replaced", i))
		}
	}
	for _, stop := range stops {
		stop()
	}

	count, lo, hi := readLedger(t, ctx, c, ledger)
	var leaders []string
	for sec := lo; sec <= hi; sec++ {
		require.Len(t, count[sec], 1, "second %s ran %d times: %v", time.Unix(sec, 0).Format("15:04:05"), len(count[sec]), count[sec])
		f := strings.Split(strings.SplitN(count[sec][0], "/", 2)[1], "-") // replica, token, attempt
		assert.Equal(t, "1", f[2], "second %s was rerun: %s", time.Unix(sec, 0).Format("15:04:05"), count[sec][0])
		if len(leaders) == 0 || leaders[len(leaders)-1] != f[0] {
			leaders = append(leaders, f[0])
		}
	}
	t.Logf("%d seconds, led by replicas %v in turn", hi-lo+1, leaders)
	// Handed to the newest, leadership moves at most twice whichever
	// replica led first; passed to the next in line from replica 0, it
	// would move three times.
	assert.LessOrEqual(t, len(leaders), 3, "leadership moved more often than handovers to the newest make it")
	assert.GreaterOrEqual(t, hi-lo, int64(10), "the schedule ran for too short a time")
}

// A graceful stop drains runs in progress, not a failed run's retry that
// waits for its backoff: with nothing running, stop returns at once rather
// than after the drain bound.
func TestDrainSkipsPendingRetry(t *testing.T) {
	c := cluster
	name := "/test/" + t.Name()
	cleanupName(t, c, name)
	p := newProcess(t, c, 3*time.Second)
	s := cron.New(p.k, name, cron.WithDrain(30*time.Second))
	failed := make(chan struct{}, 16)
	require.NoError(t, s.Add("fail", "@every 1s", func(context.Context, cron.Run) error {
		failed <- struct{}{}
		return fmt.Errorf("fails")
	}, cron.WithRetries(3, time.Minute)))
	stop := runScheduler(t, s)
	recvT(t, failed, 10*time.Second, "a failed run")
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	err := recvT(t, stopped, 10*time.Second, "Run's return well before the 30 s drain bound")
	require.ErrorIs(t, err, context.Canceled)
}
