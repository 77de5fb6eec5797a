package chaos

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/cron"
	"github.com/concordkit/concord/election"
	"github.com/concordkit/concord/testcluster"
)

// The cron checker. Replicas in separate "processes" run one scheduler with
// a job due every second (times aligned to the wall clock, the same on every
// replica), catching up every missed time and running times alongside a
// slow earlier run (AllowOverlap; the default skips them, by design). Each
// run writes a record for its scheduled time under the run's Guard. Checks:
//   - each scheduled time ran at most once (at most one record per time),
//     and no time missed between the first run and a few seconds before the
//     end beyond one per fault that can end a term (a time claimed just as
//     its term ended is lost: cron is at most once);
//   - at most one term's fenced writes succeed at any time
//     (checkFencedOrder on the records).

type cronRun struct {
	replicas  int
	protected bool          // false: each replica schedules on its own (no shared election) and writes without Guard
	noRerun   bool          // do not rerun interrupted runs (the catches test)
	work      time.Duration // how long a run works before it commits, so that faults interrupt runs
	nemesis   nemesisConfig
	duration  time.Duration
	settle    time.Duration // how long the replicas run after the nemesis stops
}

func runCron(t *testing.T, c *testcluster.Cluster, seed int64, cfg cronRun) (*report, *nemesis) {
	ctx := ctxT(t, cfg.duration+2*time.Minute)
	r := newReport(t, seed)
	base := "chaos/" + strings.ReplaceAll(t.Name(), "/", "_") + "/"
	runsPrefix := base + "runs/"

	keepers, closeKeepers := workloadKeepers(ctx, t, c, &cfg.nemesis, cfg.replicas)
	defer closeKeepers()
	var leader atomic.Int64
	leader.Store(-1)
	cfg.nemesis.holder = func() int { return int(leader.Load()) }

	var runs, refused, failedWrites atomic.Int64
	// The earliest scheduled time any run started for: a time whose only
	// run never committed leaves no record, and if it was the first one,
	// the records alone would not show it missing.
	var firstTime atomic.Int64
	wctx, wstop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for i, k := range keepers {
		name := base + "sched"
		if !cfg.protected {
			name = fmt.Sprintf("%ssched%d", base, i)
		}
		s := cron.New(k, name)
		cli := k.Client()
		opts := []cron.JobOption{cron.WithCatchUp(cron.CatchUpAll, time.Minute), cron.WithOverlap(cron.AllowOverlap)}
		if !cfg.noRerun {
			opts = append(opts, cron.WithRerun(10))
		}
		err := s.Add("tick", "* * * * * *", func(jctx context.Context, run cron.Run) error {
			leader.Store(int64(i))
			runs.Add(1)
			for sec := run.Time.Unix(); ; {
				f := firstTime.Load()
				if (f != 0 && f <= sec) || firstTime.CompareAndSwap(f, sec) {
					break
				}
			}
			key := fmt.Sprintf("%s%d/%d-%d", runsPrefix, run.Time.Unix(), run.Token, run.Attempt)
			if !cfg.protected {
				// Unfenced, as a cron on every host would write.
				pctx, cancel := context.WithTimeout(wctx, 5*time.Second)
				defer cancel()
				if ok, err := fencedWrite(pctx, cli, nil, key, run.Token); !ok {
					failedWrites.Add(1)
					return err
				}
				r.ops.Add(1)
				return nil
			}
			// The record and the time's commit in one fenced transaction:
			// a time whose run did not commit is rerun by the next leader.
			// The run's work, during which a fault may end the term.
			select {
			case <-time.After(cfg.work):
			case <-jctx.Done():
				return context.Cause(jctx)
			}
			// Under the run's context, Commit retries until it applies or
			// the term ends.
			err := run.Commit(jctx, clientv3.OpPut(key, strconv.FormatInt(run.Token, 10)))
			switch {
			case err == nil:
				r.ops.Add(1)
			case errors.Is(err, election.ErrLost) || errors.Is(err, cron.ErrCommitted):
				refused.Add(1)
			default:
				failedWrites.Add(1)
				t.Logf("replica %d: commit of %s (attempt %d): %v", i, run.Time.Format("15:04:05"), run.Attempt, err)
			}
			return err
		}, opts...)
		require.NoError(t, err)
		wg.Go(func() {
			if err := s.Run(wctx); wctx.Err() == nil {
				t.Errorf("replica %d: Run returned early: %v", i, err)
			} else if err != nil && !errors.Is(err, context.Canceled) {
				t.Logf("replica %d: Run: %v", i, err)
			}
		})
	}
	// The faults start once a replica leads and runs: a cut aimed at the
	// leader (holderAlways) must not fall on a bystander because no run
	// has said yet who leads.
	for deadline := time.Now().Add(30 * time.Second); runs.Load() == 0; {
		require.True(t, time.Now().Before(deadline), "no run within 30s")
		pause(ctx, 20*time.Millisecond)
	}
	start := time.Now()
	n := newNemesis(t, c, seed, cfg.nemesis)
	nctx, ncancel := context.WithTimeout(ctx, nemesisTime(c, cfg.duration))
	n.run(nctx)
	ncancel()
	// After the faults the schedulers catch up; times up to a margin
	// before the end must all have run.
	pause(ctx, cfg.settle)
	end := time.Now()
	wstop()
	wg.Wait()

	writes, tokens, err := checkFencedOrder(ctx, r, c.Admin(), runsPrefix)
	require.NoError(t, err)
	gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := c.Admin().Get(gctx, runsPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	require.NoError(t, err)
	perTime := map[int64][]string{}
	for _, kv := range resp.Kvs {
		rest := strings.TrimPrefix(string(kv.Key), runsPrefix)
		sec, _ := strconv.ParseInt(rest[:strings.IndexByte(rest, '/')], 10, 64)
		perTime[sec] = append(perTime[sec], rest[strings.IndexByte(rest, '/')+1:])
	}
	var times []int64
	for sec, who := range perTime {
		times = append(times, sec)
		if len(who) > 1 {
			r.violate("cron: time %s ran %d times (term-attempt %v)", time.Unix(sec, 0).Format("15:04:05"), len(who), who)
		}
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	missed := 0
	var missing []string
	if cfg.protected && len(times) > 0 {
		// Times from the first run started to a margin before the end: a leader
		// elected after the last fault needs a moment to catch up, and a
		// time due just before the end may still be starting.
		from := times[0]
		if f := firstTime.Load(); f != 0 && f < from {
			from = f
		}
		for sec := from; sec < end.Add(-cfg.settle).Unix(); sec++ {
			if len(perTime[sec]) == 0 {
				missed++
				missing = append(missing, time.Unix(sec, 0).Format("15:04:05"))
			}
		}
	}
	// A time claimed by a term that ends before its run committed is rerun
	// by the next leader (WithRerun), so no time may be missing.
	for _, m := range missing {
		r.violate("cron: time %s never ran (%d missed)", m, missed)
	}
	r.note("%d runs, %d scheduled times recorded over %v, %d missed, %d fenced writes from %d terms, %d refused by the guard, %d failed in transit",
		runs.Load(), len(times), end.Sub(start).Round(time.Second), missed, writes, tokens, refused.Load(), failedWrites.Load())
	if len(times) < 3 {
		t.Errorf("fewer than three times ran: the checker checked nothing")
	}
	return r, n
}

func TestChaosCron(t *testing.T) {
	s := seed(t)
	c := testcluster.New(t)
	r, n := runCron(t, c, s, cronRun{
		replicas: 3, protected: true, work: 300 * time.Millisecond,
		nemesis: defaultNemesis(), duration: chaosDuration(6 * time.Second), settle: 3 * time.Second,
	})
	r.expectNone(t, n)
}

// TestChaosCronCheckerCatchesUnelectedReplicas runs replicas that schedule
// on their own, as a cron on every host would, and write without Guard:
// every time runs on each replica, and the checker must see it.
func TestChaosCronCheckerCatchesUnelectedReplicas(t *testing.T) {
	s := seed(t)
	c := testcluster.New(t)
	cfg := defaultNemesis()
	cfg.kinds = nil
	r, n := runCron(t, c, s, cronRun{
		replicas: 2, protected: false,
		nemesis: cfg, duration: 4 * time.Second, settle: time.Second,
	})
	r.expectSome(t, n)
	if r.countPrefix("cron:") == 0 {
		t.Errorf("the ran-once checker reported nothing")
	}
}

// TestChaosCronCheckerCatchesMissedTimes runs elected replicas whose runs
// work 0.9 s before committing and that do not rerun interrupted runs: the
// runs a cut leader had going never commit, and the checker must see their
// times missing. A cut that falls between two runs (after a commit, before
// the next claim reaches etcd) interrupts nothing, and the next leader
// catches those times up; so the nemesis runs long enough for several cuts
// of the leader.
func TestChaosCronCheckerCatchesMissedTimes(t *testing.T) {
	s := seed(t)
	c := testcluster.New(t)
	cfg := defaultNemesis()
	cfg.kinds = nil
	cfg.holderAlways = true
	r, n := runCron(t, c, s, cronRun{
		replicas: 2, protected: true, noRerun: true, work: 900 * time.Millisecond,
		nemesis: cfg, duration: 14 * time.Second, settle: 2 * time.Second,
	})
	r.expectSome(t, n)
	if r.countPrefix("cron: time") == 0 {
		t.Errorf("the missed-time checker reported nothing")
	}
}
