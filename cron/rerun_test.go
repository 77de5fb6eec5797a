package cron_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/cron"
	"github.com/concordkit/concord/election"
)

type replicaRun struct {
	replica int
	r       cron.Run
}

// TestRerunInterrupted: the leader's first run blocks, and its lease is
// revoked on the server (or its scheduler is stopped). The next leader must
// rerun exactly that time with the next attempt, unless the interrupted run
// had committed, in which case the time must not run again. Either way the
// time's effect (a ledger record written by Run.Commit) lands exactly once,
// a Commit of the lost term is refused, and no commit record is left behind.
func TestRerunInterrupted(t *testing.T) {
	for _, tc := range []struct {
		committed, stopped bool
	}{{false, false}, {true, false}, {false, true}} {
		t.Run(fmt.Sprintf("committed=%v,stopped=%v", tc.committed, tc.stopped), func(t *testing.T) {
			testRerun(t, tc.committed, tc.stopped)
		})
	}
}

func testRerun(t *testing.T, committed, stopped bool) {
	const ttl = 2 * time.Second
	c := cluster
	name := "/test/" + strings.ReplaceAll(t.Name(), "/", "_")
	cleanupName(t, c, name)
	ledger := name + "/ledger/"
	ctx := ctxT(t, 60*time.Second)

	runs := make(chan replicaRun, 64)
	lateCommit := make(chan error, 1)
	// earlyCommit carries the result of the blocked run's Commit before the
	// interruption: the interruption must come after it, not race it.
	earlyCommit := make(chan error, 1)
	var blocked atomic.Bool
	job := func(i int, cli *clientv3.Client) cron.Func {
		return func(ctx context.Context, r cron.Run) error {
			runs <- replicaRun{i, r}
			put := clientv3.OpPut(fmt.Sprintf("%s%d/%d-%d", ledger, r.Time.Unix(), r.Token, r.Attempt), "")
			if blocked.CompareAndSwap(false, true) {
				if committed {
					err := r.Commit(ctx, put)
					earlyCommit <- err
					if err != nil {
						return err
					}
				}
				<-ctx.Done() // interrupted: the term ends while fn runs
				if stopped {
					// The term stands until fn returns: a Commit now
					// would apply, and the run would count as done.
					lateCommit <- nil
					return ctx.Err()
				}
				cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				err := r.Commit(cctx, put)
				lateCommit <- err
				return err
			}
			if err := r.Commit(ctx, put); err != nil {
				return err
			}
			err := r.Commit(ctx, put)
			if !errors.Is(err, cron.ErrCommitted) {
				t.Errorf("a second Commit of one run: %v, want ErrCommitted", err)
			}
			return nil
		}
	}
	start := func(i int) (*process, func() error) {
		p := newProcess(t, c, ttl)
		s := cron.New(p.k, name, cron.WithValue(strconv.Itoa(i)))
		require.NoError(t, s.Add("tick", "* * * * * *", job(i, p.cli),
			cron.WithRerun(2), cron.WithCatchUp(cron.CatchUpAll, time.Minute)))
		return p, runScheduler(t, s)
	}

	a, stopA := start(0)
	first := recvT(t, runs, 10*time.Second, "first run")
	require.Equal(t, 0, first.replica)
	require.Equal(t, 1, first.r.Attempt)
	start(1)
	if committed {
		require.NoError(t, recvT(t, earlyCommit, 10*time.Second, "the first run's Commit"))
	}
	if stopped {
		_ = stopA() // returns once the blocked run ended
	} else {
		require.NoError(t, c.RevokeLease(ctx, a.k.Current().ID()))
	}

	// A's own Commit after the loss must be refused (or, when it had
	// committed before, find the time committed).
	err := recvT(t, lateCommit, 10*time.Second, "the interrupted run's late Commit")
	if stopped {
		require.NoError(t, err)
	} else if committed {
		assert.ErrorIs(t, err, cron.ErrCommitted)
	} else if !errors.Is(err, election.ErrLost) {
		// The rerun may have committed first (on either replica).
		assert.ErrorIs(t, err, cron.ErrCommitted, "a Commit of the lost term")
	}

	// The next term's runs: the rerun (if any) comes before fresh times.
	var next replicaRun
	for {
		next = recvT(t, runs, 10*time.Second, "a run of the next term")
		if next.r.Token > first.r.Token {
			break
		}
	}
	if committed {
		assert.True(t, next.r.Time.After(first.r.Time), "the committed time %v ran again: %+v", first.r.Time, next.r)
		assert.Equal(t, 1, next.r.Attempt)
	} else {
		assert.True(t, next.r.Time.Equal(first.r.Time), "the interrupted time %v was not rerun first: %+v", first.r.Time, next.r)
		assert.Equal(t, 2, next.r.Attempt)
	}
	// One more run of the new term: it claimed after deciding on the
	// interrupted time.
	for {
		r := recvT(t, runs, 10*time.Second, "a fresh run of the next term")
		if r.r.Token > first.r.Token && r.r.Time.After(next.r.Time) {
			break
		}
	}
	if committed {
		// The interrupted term's commit record is deleted with the next
		// term's first claims; this term's own are kept a while.
		doneKey := fmt.Sprintf("%s/.cron/done/tick/s%019d", name, first.r.Time.UnixNano())
		require.Eventually(t, func() bool {
			resp, err := c.Admin().Get(ctx, doneKey, clientv3.WithCountOnly())
			return err == nil && resp.Count == 0
		}, 5*time.Second, 20*time.Millisecond, "commit record %s left behind", doneKey)
	}
	resp, err := c.Admin().Get(ctx, fmt.Sprintf("%s%d/", ledger, first.r.Time.Unix()), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	require.NoError(t, err)
	assert.Len(t, resp.Kvs, 1, "ledger of the interrupted time: %v", resp.Kvs)
}
