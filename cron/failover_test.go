package cron_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/cron"
	"github.com/concordkit/concord/testcluster"
)

type ledgerRun struct {
	replica int
	r       cron.Run
	at      time.Time
}

// TestExactlyOnceAcrossFailover: three replicas run a job every second for
// about 20 s. The leader's client is cut off (its lease expires on the server
// while it lives), and later the etcd leader member is stopped. Every run
// writes a ledger entry with Run.Commit. Every scheduled second from the
// first to the last must appear exactly once; the gap after the cut must be
// within TTL + 1 s, the seconds missed in it caught up (CatchUpAll), and a
// run interrupted by the cut rerun (WithRerun).
func TestExactlyOnceAcrossFailover(t *testing.T) {
	const ttl = 3 * time.Second
	c := testcluster.New(t)
	name := t.Name()
	cleanupName(t, c, name)
	ledger := name + "/ledger/"
	ctx := ctxT(t, 60*time.Second)

	runs := make(chan ledgerRun, 256)
	procs := make([]*process, 3)
	stops := make([]func() error, 3)
	for i := range procs {
		procs[i] = newProcess(t, c, ttl)
		s := cron.New(procs[i].k, name, cron.WithValue(strconv.Itoa(i)))
		require.NoError(t, s.Add("tick", "@every 1s", func(ctx context.Context, r cron.Run) error {
			at := time.Now()
			key := fmt.Sprintf("%s%d/%d-%d-%d", ledger, r.Time.Unix(), i, r.Token, r.Attempt)
			// Some work before the commit, so that the cut can land
			// inside a run, which the next leader must then rerun.
			select {
			case <-time.After(400 * time.Millisecond):
			case <-ctx.Done():
				return context.Cause(ctx)
			}
			if err := r.Commit(ctx, clientv3.OpPut(key, "")); err != nil {
				t.Logf("replica %d: ledger write of %v (attempt %d): %v", i, r.Time.Format("15:04:05"), r.Attempt, err)
				return err
			}
			runs <- ledgerRun{i, r, at}
			return nil
		}, cron.WithCatchUp(cron.CatchUpAll, time.Minute), cron.WithOverlap(cron.AllowOverlap), cron.WithRerun(3)))
		stops[i] = runScheduler(t, s)
	}

	// Three runs, then cut the leader. A run it claimed and had not
	// committed when the cut struck is rerun by the next leader.
	var last ledgerRun
	for range 3 {
		last = recvT(t, runs, 10*time.Second, "run")
	}
	leader := last.replica
	cutAt := time.Now()
	c.CutClient(procs[leader].cli)
	first := recvT(t, runs, 10*time.Second, "run after the cut")
	for first.replica == leader {
		// A run already claimed before the cut; wait for the new leader.
		first = recvT(t, runs, 10*time.Second, "run after the cut")
	}
	gap := first.at.Sub(cutAt)
	t.Logf("cut leader %d; replica %d ran %v at %v after the cut (token %d → %d)",
		leader, first.replica, first.r.Time.Format("15:04:05"), gap, last.r.Token, first.r.Token)
	assert.LessOrEqual(t, gap, ttl+time.Second, "failover gap")
	assert.Greater(t, first.r.Token, last.r.Token)
	c.RestoreClient(procs[leader].cli)

	// Some seconds later stop the etcd leader member.
	for range 6 {
		recvT(t, runs, 10*time.Second, "run")
	}
	lead, err := c.WaitLeader(ctx)
	require.NoError(t, err)
	require.NoError(t, c.Stop(lead))
	t.Logf("stopped member %d", lead)
	for range 8 {
		recvT(t, runs, 10*time.Second, "run after the member stop")
	}
	var wg sync.WaitGroup
	for _, stop := range stops {
		wg.Add(1)
		go func() { defer wg.Done(); _ = stop() }()
	}
	wg.Wait()

	count, lo, hi := readLedger(t, ctx, c, ledger)
	for sec := lo; sec <= hi; sec++ {
		assert.Len(t, count[sec], 1, "second %s ran %d times: %v", time.Unix(sec, 0).Format("15:04:05"), len(count[sec]), count[sec])
	}
	assert.GreaterOrEqual(t, hi-lo, int64(14), "the schedule ran for too short a time")
}
