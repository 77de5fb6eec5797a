package cron_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/cron"
	"github.com/concordkit/concord/election"
	"github.com/concordkit/concord/internal/names"
	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/testcluster"
)

const everySecond = "* * * * * *"

func nop(context.Context, cron.Run) error { return nil }

func TestBadInput(t *testing.T) {
	name := t.Name()
	cleanupName(t, cluster, name)
	ctx := ctxT(t, 10*time.Second)
	p := newProcess(t, cluster, 2*time.Second)

	for _, bad := range []string{"", "a/.b", "x/"} {
		s := cron.New(p.k, bad)
		assert.ErrorContains(t, s.Add("j", everySecond, nop), "cron: invalid name")
		assert.ErrorContains(t, s.Run(ctx), "cron: invalid name")
		assert.Error(t, cron.Pause(ctx, p.cli, bad, "j"))
		_, err := cron.Status(ctx, p.cli, bad)
		assert.Error(t, err)
	}
	s := cron.New(p.k, name)
	for _, job := range []string{"", "a/b", "x\x00", strings.Repeat("j", 300), "\xff"} {
		err := s.Add(job, everySecond, nop)
		assert.ErrorContains(t, err, "cron: invalid job name", "%q", job)
		assert.Error(t, cron.Trigger(ctx, p.cli, name, job))
	}
	for _, spec := range []string{"", "* * *", "61 * * * *", "@every -1s", "@sometimes", "* * * * * * * *"} {
		assert.ErrorIs(t, s.Add("j", spec, nop), cron.ErrBadSpec, "%q", spec)
	}
	assert.Error(t, s.Add("j", everySecond, nil))
	assert.Error(t, s.Add("j", everySecond, nop, cron.WithCatchUp(cron.CatchUpAll, -time.Second)))
	assert.Error(t, s.Add("j", everySecond, nop, cron.WithRetries(-1, 0)))
	require.NoError(t, s.Add("j", "@every 10s", nop))
	assert.ErrorIs(t, s.Add("j", everySecond, nop), cron.ErrDuplicate)
	require.NoError(t, cron.ParseSpec("0 */5 * * *"))
	require.NoError(t, cron.ParseSpec("*/2 0 */5 * * *"))
	require.NoError(t, cron.ParseSpec("@hourly"))
	assert.Error(t, cron.New(nil, name).Run(ctx))
	// A campaign value etcd would refuse is the scheduler's error, before
	// anything is written.
	big := cron.New(p.k, name, cron.WithValue(strings.Repeat("v", 2<<20)))
	err := big.Run(ctx)
	require.Error(t, err)
	assert.True(t, strings.HasPrefix(err.Error(), "cron: "), err.Error())
	assert.ErrorContains(t, big.Add("j", everySecond, nop), "cron: value")

	resp, err := cluster.Admin().Get(ctx, name, clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)
	assert.Zero(t, resp.Count, "bad input wrote keys")
}

// A scheduler whose user may not write its keys ends Run with etcd's
// refusal, reported as the scheduler's.
func TestRunPermissionDenied(t *testing.T) {
	c := testcluster.New(t, testcluster.WithSize(1), testcluster.WithAuth())
	ctx := ctxT(t, 20*time.Second)
	u, err := c.AddUser(ctx, "jobs", "jobs/")
	require.NoError(t, err)
	cfg := c.ClientConfig()
	cfg.Username, cfg.Password = u.Name, u.Password
	cli, err := clientv3.New(cfg)
	require.NoError(t, err)
	defer cli.Close()
	k, err := leasekeeper.New(ctx, cli, leasekeeper.WithTTL(c.LeaseTTL(2*time.Second)))
	require.NoError(t, err)
	defer k.Close(context.Background())

	s := cron.New(k, "elsewhere")
	require.NoError(t, s.Add("j", everySecond, nop))
	err = s.Run(ctx)
	require.ErrorIs(t, err, rpctypes.ErrPermissionDenied)
	assert.True(t, strings.HasPrefix(err.Error(), `cron: run "elsewhere": campaigning: `), err.Error())
	assert.Equal(t, 1, strings.Count(err.Error(), "elsewhere"), err.Error())
	assert.NotContains(t, err.Error(), "election:")
}

func TestRunsEachSecondOnce(t *testing.T) {
	name := t.Name()
	cleanupName(t, cluster, name)
	ctx := ctxT(t, 30*time.Second)
	runs := make(chan cron.Run, 16)
	s := cron.New(newProcess(t, cluster, 2*time.Second).k, name)
	require.NoError(t, s.Add("tick", everySecond, func(_ context.Context, r cron.Run) error {
		runs <- r
		return nil
	}))
	stop := runScheduler(t, s)
	var got []cron.Run
	for range 3 {
		got = append(got, recvT(t, runs, 5*time.Second, "run"))
	}
	for i, r := range got {
		assert.Equal(t, "tick", r.Job)
		assert.Equal(t, 1, r.Attempt)
		assert.False(t, r.Trigger)
		assert.Positive(t, r.Token)
		assert.Zero(t, r.Time.Nanosecond(), "scheduled times are whole seconds")
		if i > 0 {
			assert.Equal(t, time.Second, r.Time.Sub(got[i-1].Time))
		}
	}
	require.ErrorIs(t, stop(), context.Canceled)

	st, err := cron.Status(ctx, cluster.Client(), name)
	require.NoError(t, err)
	require.Len(t, st, 1)
	assert.Equal(t, "tick", st[0].Job)
	assert.Equal(t, everySecond, st[0].Spec)
	assert.Contains(t, []cron.Outcome{cron.OK, cron.Running}, st[0].Outcome)
	assert.False(t, st[0].LastTime.Before(got[2].Time))
	assert.True(t, st[0].Next.After(st[0].LastTime))
}

func TestPauseTriggerResume(t *testing.T) {
	name := t.Name()
	cleanupName(t, cluster, name)
	ctx := ctxT(t, 30*time.Second)
	p := newProcess(t, cluster, 2*time.Second)
	jobRuns := make(chan cron.Run, 16)
	clock := make(chan cron.Run, 16)
	s := cron.New(p.k, name)
	require.NoError(t, s.Add("job", everySecond, func(_ context.Context, r cron.Run) error {
		jobRuns <- r
		return nil
	}))
	require.NoError(t, s.Add("clock", everySecond, func(_ context.Context, r cron.Run) error {
		clock <- r
		return nil
	}))
	runScheduler(t, s)
	recvT(t, jobRuns, 5*time.Second, "run")

	require.NoError(t, cron.Pause(ctx, p.cli, name, "job"))
	// Let two clock ticks pass after the pause was certainly seen.
	recvT(t, clock, 5*time.Second, "clock")
	drain(jobRuns)
	for range 2 {
		recvT(t, clock, 5*time.Second, "clock")
	}
	select {
	case r := <-jobRuns:
		t.Fatalf("paused job ran at %v", r.Time)
	default:
	}
	st, err := cron.Status(ctx, p.cli, name)
	require.NoError(t, err)
	require.Len(t, st, 2)
	assert.True(t, st[1].Paused, "%+v", st)

	require.NoError(t, cron.Trigger(ctx, p.cli, name, "job"))
	r := recvT(t, jobRuns, 5*time.Second, "triggered run")
	assert.True(t, r.Trigger)

	require.NoError(t, cron.Resume(ctx, p.cli, name, "job"))
	r = recvT(t, jobRuns, 5*time.Second, "run after resume")
	assert.False(t, r.Trigger)
}

func drain[T any](ch <-chan T) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

func TestOverlapSkipAndRetry(t *testing.T) {
	name := t.Name()
	cleanupName(t, cluster, name)
	ctx := ctxT(t, 30*time.Second)
	p := newProcess(t, cluster, 2*time.Second)
	release := make(chan struct{})
	started := make(chan cron.Run, 16)
	attempts := make(chan cron.Run, 16)
	var once sync.Once
	s := cron.New(p.k, name)
	require.NoError(t, s.Add("slow", everySecond, func(ctx context.Context, r cron.Run) error {
		started <- r
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	}))
	require.NoError(t, s.Add("flaky", everySecond, func(_ context.Context, r cron.Run) error {
		attempts <- r
		fail := false
		once.Do(func() { fail = true })
		if fail {
			return errors.New("first attempt fails")
		}
		return nil
	}, cron.WithRetries(2, 10*time.Millisecond), cron.WithOverlap(cron.AllowOverlap)))
	runScheduler(t, s)

	first := recvT(t, started, 5*time.Second, "slow run")
	// While it runs, later seconds are skipped: wait for a skip in Status.
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		st, err := cron.Status(ctx, p.cli, name)
		require.NoError(t, err)
		if len(st) == 2 && st[1].Outcome == cron.Skipped {
			assert.True(t, st[1].LastTime.After(first.Time))
			break
		}
		require.True(t, time.Now().Before(deadline), "no skip recorded: %+v", st)
		<-tick.C
	}
	select {
	case r := <-started:
		t.Fatalf("slow job overlapped: %v", r.Time)
	default:
	}
	close(release)
	recvT(t, started, 5*time.Second, "slow run after release")

	a1 := recvT(t, attempts, 5*time.Second, "flaky attempt")
	a2 := recvT(t, attempts, 5*time.Second, "flaky retry")
	assert.Equal(t, 1, a1.Attempt)
	assert.Equal(t, 2, a2.Attempt)
	assert.Equal(t, a1.Time, a2.Time)
}

func TestCorruptRecords(t *testing.T) {
	name := t.Name()
	cleanupName(t, cluster, name)
	ctx := ctxT(t, 30*time.Second)
	p := newProcess(t, cluster, 2*time.Second)
	prefix := names.Prefix(name, "cron")
	_, err := cluster.Admin().Put(ctx, prefix+"claim/job", "not json")
	require.NoError(t, err)
	_, err = cron.Status(ctx, p.cli, name)
	require.ErrorIs(t, err, cron.ErrCorrupt)

	s := cron.New(p.k, name)
	require.NoError(t, s.Add("job", everySecond, nop))
	err = s.Run(ctx)
	require.ErrorIs(t, err, cron.ErrCorrupt)
	assert.True(t, strings.HasPrefix(err.Error(), "cron: corrupt value"), err.Error())

	_, err = cluster.Admin().Put(ctx, prefix+"claim/job", `{"time":1,"token":1,"attempt":1,"at":1}`)
	require.NoError(t, err)
	_, err = cluster.Admin().Put(ctx, prefix+"other", "x")
	require.NoError(t, err)
	_, err = cron.Status(ctx, p.cli, name)
	require.ErrorIs(t, err, cron.ErrCorrupt)
}

// TestRunContextEndsWithLeadership: a run in progress is canceled, with
// election.ErrLost as the cause, when its replica's client is cut off and
// the lease can no longer be trusted; the other replica takes over.
func TestRunContextEndsWithLeadership(t *testing.T) {
	name := t.Name()
	cleanupName(t, cluster, name)
	pa, pb := newProcess(t, cluster, time.Second), newProcess(t, cluster, time.Second)
	type ended struct {
		r     cron.Run
		cause error
	}
	started := make(chan cron.Run, 16)
	ends := make(chan ended, 16)
	job := func(ctx context.Context, r cron.Run) error {
		started <- r
		<-ctx.Done()
		ends <- ended{r, context.Cause(ctx)}
		return context.Cause(ctx)
	}
	sa, sb := cron.New(pa.k, name, cron.WithValue("a")), cron.New(pb.k, name, cron.WithValue("b"))
	require.NoError(t, sa.Add("long", everySecond, job))
	require.NoError(t, sb.Add("long", everySecond, job))
	runScheduler(t, sa)
	first := recvT(t, started, 5*time.Second, "run")
	runScheduler(t, sb)
	l, err := election.LeaderOf(ctxT(t, 5*time.Second), cluster.Client(), name)
	require.NoError(t, err)
	require.Equal(t, "a", l.Value)

	cluster.CutClient(pa.cli)
	e := recvT(t, ends, 5*time.Second, "end of the run")
	assert.Equal(t, first.Time, e.r.Time)
	assert.ErrorIs(t, e.cause, election.ErrLost)
	next := recvT(t, started, 10*time.Second, "run on the other replica")
	assert.Greater(t, next.Token, first.Token)
	cluster.RestoreClient(pa.cli)
}

// A scheduler stopped while its client is cut off from etcd returns once
// its term is lost, not after waiting out the TTL for the status write of
// each run that ended, then again for its resignation.
func TestRunStopsWhenTermLostWhileCutOff(t *testing.T) {
	name := t.Name()
	cleanupName(t, cluster, name)
	const ttl = 3 * time.Second
	p := newProcess(t, cluster, ttl, leasekeeper.WithMargin(ttl/3))
	cli, k := p.cli, p.k
	started := make(chan cron.Run, 16)
	s := cron.New(k, name)
	require.NoError(t, s.Add("long", everySecond, func(ctx context.Context, r cron.Run) error {
		started <- r
		<-ctx.Done()
		return context.Cause(ctx)
	}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	recvT(t, started, 5*time.Second, "run")

	cluster.CutClient(cli)
	cut := time.Now()
	cancel()
	// The lease is lost at the latest ttl-ttl/3 after the cut; without
	// stopping there, the run's status write alone takes ttl after cancel.
	select {
	case err := <-done:
		require.ErrorIs(t, err, context.Canceled)
		require.Less(t, time.Since(cut), ttl-ttl/10, "Run waited past the term's loss")
	case <-time.After(2 * ttl):
		t.Fatal("Run did not return")
	}
	// The term's key was left to go with the lost lease: once the client is
	// back, the server expires it within the TTL.
	cluster.RestoreClient(cli)
	rctx := ctxT(t, 10*time.Second)
	require.Eventually(t, func() bool {
		_, err := election.LeaderOf(rctx, cluster.Admin(), name)
		return errors.Is(err, election.ErrNoLeader)
	}, 2*ttl, 20*time.Millisecond, "the lost term's key did not expire")
}

// A Commit behind another Commit of the same run that is stalled on a
// cut-off client gives up when its own context ends, having sent nothing.
func TestCommitBehindStalledCommitReturnsOnTime(t *testing.T) {
	name := t.Name()
	cleanupName(t, cluster, name)
	p := newProcess(t, cluster, 20*time.Second)
	started := make(chan cron.Run, 16)
	s := cron.New(p.k, name)
	require.NoError(t, s.Add("job", everySecond, func(ctx context.Context, r cron.Run) error {
		started <- r
		<-ctx.Done()
		return nil
	}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	r := recvT(t, started, 5*time.Second, "run")

	cluster.CutClient(p.cli)
	defer cluster.RestoreClient(p.cli)
	first := make(chan error, 1)
	go func() { first <- r.Commit(context.Background(), clientv3.OpPut(name+"/ledger/effect", "1")) }()
	require.Eventually(t, func() bool { return cron.Committing(r) }, 10*time.Second, 5*time.Millisecond,
		"first Commit never held its turn")
	second := make(chan error, 1)
	go func() {
		sctx, scancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer scancel()
		second <- r.Commit(sctx, clientv3.OpPut(name+"/ledger/effect", "2"))
	}()
	select {
	case err := <-second:
		require.ErrorIs(t, err, context.DeadlineExceeded)
	case <-time.After(5 * time.Second):
		t.Fatal("Commit behind a stalled Commit did not return when its context ended")
	}

	cluster.RestoreClient(p.cli)
	require.NoError(t, recvT(t, first, 30*time.Second, "first Commit"))
	resp, err := cluster.Admin().Get(ctxT(t, 5*time.Second), name+"/ledger/effect")
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
	require.Equal(t, "1", string(resp.Kvs[0].Value), "the Commit that gave up was applied")
	cancel()
	require.ErrorIs(t, recvT(t, done, 30*time.Second, "Run"), context.Canceled)
}

// The package's functions that take a client report a nil one as an error.
func TestNilClient(t *testing.T) {
	ctx := ctxT(t, 5*time.Second)
	_, err := cron.Status(ctx, nil, "n")
	for i, err := range []error{err, cron.Pause(ctx, nil, "n", "j"), cron.Resume(ctx, nil, "n", "j"),
		cron.Trigger(ctx, nil, "n", "j"), cron.Delete(ctx, nil, "n")} {
		require.ErrorContains(t, err, "cron: nil client", "call %d", i)
	}
}
