package cron_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/cron"
	"github.com/concordkit/concord/internal/names"
	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/testcluster"
)

func TestDefineBadInput(t *testing.T) {
	name := "/test/" + t.Name()
	cleanupName(t, cluster, name)
	ctx := ctxT(t, 10*time.Second)
	p := newProcess(t, cluster, 2*time.Second)
	ok := cron.Definition{Spec: everySecond, Handler: "h"}

	for _, bad := range []cron.Definition{
		{Spec: "", Handler: "h"},
		{Spec: "@every 1.5s", Handler: "h"},
		{Spec: everySecond},
		{Spec: everySecond, Handler: "a/b"},
		{Spec: everySecond, Handler: strings.Repeat("h", 300)},
		{Spec: everySecond, Handler: "h", Retries: -1},
		{Spec: everySecond, Handler: "h", RetryBackoff: -time.Second},
		{Spec: everySecond, Handler: "h", Reruns: -1},
		{Spec: everySecond, Handler: "h", CatchUpWindow: -time.Second},
		{Spec: everySecond, Handler: "h", Overlap: 7},
		{Spec: everySecond, Handler: "h", CatchUp: 7},
	} {
		err := cron.Define(ctx, p.cli, name, "j", bad)
		require.Error(t, err, "%+v", bad)
		assert.True(t, strings.HasPrefix(err.Error(), "cron: "), err.Error())
		assert.Equal(t, 1, strings.Count(err.Error(), "cron: "), err.Error())
	}
	assert.ErrorContains(t, cron.Define(ctx, p.cli, name, "a/b", ok), "cron: invalid job name")
	assert.ErrorContains(t, cron.Define(ctx, p.cli, "", "j", ok), "cron: invalid name")
	assert.ErrorContains(t, cron.Define(ctx, nil, name, "j", ok), "cron: ")
	assert.ErrorIs(t, cron.Update(ctx, p.cli, name, "j", ok), cron.ErrNotDefined)
	assert.ErrorIs(t, cron.Remove(ctx, p.cli, name, "j"), cron.ErrNotDefined)

	s := cron.New(p.k, name)
	assert.ErrorContains(t, s.Handle("", nop), "cron: invalid handler name")
	assert.ErrorContains(t, s.Handle("h", nil), "nil func")
	require.NoError(t, s.Handle("h", nop))
	assert.ErrorIs(t, s.Handle("h", nop), cron.ErrDuplicate)

	resp, err := cluster.Admin().Get(ctx, name, clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)
	assert.Zero(t, resp.Count, "bad input wrote keys")

	// A trigger recorded before the job existed does not survive its
	// definition; a pause does with Paused.
	require.NoError(t, cron.Trigger(ctx, p.cli, name, "j"))
	require.NoError(t, cron.Define(ctx, p.cli, name, "j", ok))
	st, err := cron.Status(ctx, p.cli, name)
	require.NoError(t, err)
	require.Len(t, st, 1)
	assert.False(t, st[0].Pending, "a trigger from before the definition is pending")
	assert.ErrorIs(t, cron.Define(ctx, p.cli, name, "j", ok), cron.ErrDefined)
	// Update pauses with Paused, and leaves a pause alone without it.
	require.NoError(t, cron.Update(ctx, p.cli, name, "j", cron.Definition{Spec: everySecond, Handler: "h", Paused: true}))
	require.NoError(t, cron.Update(ctx, p.cli, name, "j", ok))
	st, err = cron.Status(ctx, p.cli, name)
	require.NoError(t, err)
	assert.True(t, st[0].Paused, "Update without Paused resumed the job")
	require.NoError(t, cron.Remove(ctx, p.cli, name, "j"))
}

// defRun is one run of a defined job, as its handler saw it.
type defRun struct {
	replica, handler string
	r                cron.Run
	cause            error // the run context's cause, for runs that waited for it
	err              error // what its Commit returned
}

// TestDynamicJobs: a job is defined, updated (handler, then a handler no
// replica has, then back), and removed at runtime by a process that runs no
// scheduler, while two replicas run; the leader follows each change, a
// graceful failover carries the definition to the other replica, and no
// key of the job is left once it is removed.
func TestDynamicJobs(t *testing.T) {
	c := cluster
	name := "/test/" + t.Name()
	cleanupName(t, c, name)
	ctx := ctxT(t, 90*time.Second)
	admin := c.Admin() // a process that runs no scheduler

	runs := make(chan defRun, 1024)
	handler := func(replica, h string) cron.Func {
		return func(ctx context.Context, r cron.Run) error {
			runs <- defRun{replica: replica, handler: h, r: r}
			return nil
		}
	}
	stops := map[string]func() error{}
	for _, replica := range []string{"r1", "r2"} {
		p := newProcess(t, c, 3*time.Second)
		s := cron.New(p.k, name, cron.WithValue(replica))
		require.NoError(t, s.Handle("a", handler(replica, "a")))
		require.NoError(t, s.Handle("b", handler(replica, "b")))
		stops[replica] = runScheduler(t, s)
	}
	// waitRunIf returns the first run of job by handler h that ok accepts.
	waitRunIf := func(job, h string, ok func(defRun) bool) defRun {
		t.Helper()
		deadline := time.After(15 * time.Second)
		for {
			select {
			case r := <-runs:
				if r.r.Job == job && r.handler == h && ok(r) {
					return r
				}
			case <-deadline:
				t.Fatalf("no such run of %s by handler %s within 15s", job, h)
			}
		}
	}
	waitRun := func(job, h string) defRun {
		t.Helper()
		return waitRunIf(job, h, func(defRun) bool { return true })
	}
	status := func(job string) cron.JobStatus {
		t.Helper()
		all, err := cron.Status(ctx, admin, name)
		require.NoError(t, err)
		for _, s := range all {
			if s.Job == job {
				return s
			}
		}
		return cron.JobStatus{}
	}
	waitStatus := func(job string, ok func(cron.JobStatus) bool, what string) cron.JobStatus {
		t.Helper()
		var st cron.JobStatus
		require.Eventually(t, func() bool { st = status(job); return ok(st) }, 15*time.Second, 50*time.Millisecond, "%s: last status %+v", what, st)
		return st
	}

	require.NoError(t, cron.Define(ctx, admin, name, "j", cron.Definition{Spec: everySecond, Handler: "a"}))
	first := waitRun("j", "a")
	st := waitStatus("j", func(s cron.JobStatus) bool { return s.Outcome == cron.OK }, "first run's status")
	assert.True(t, st.Defined)
	assert.Equal(t, "a", st.Handler)
	assert.Empty(t, st.Problem)

	// Update: from the leader's next time on, b runs it; no time a ran
	// comes after a time b ran.
	require.NoError(t, cron.Update(ctx, admin, name, "j", cron.Definition{Spec: "@every 1s", Handler: "b"}))
	byB := waitRun("j", "b")
	assert.Equal(t, first.replica, byB.replica, "no failover happened: the same leader runs it")

	// A handler no replica registered: the job stops running, and Status
	// says why instead of staying silent.
	require.NoError(t, cron.Update(ctx, admin, name, "j", cron.Definition{Spec: "@every 1s", Handler: "missing"}))
	st = waitStatus("j", func(s cron.JobStatus) bool { return strings.Contains(s.Problem, `no handler "missing"`) }, "missing handler reported")
	assert.Equal(t, "missing", st.Handler)
	assert.True(t, st.Next.IsZero(), "a job that cannot run has no next time: %v", st.Next)
	// A trigger meanwhile waits for a leader that can run it.
	require.NoError(t, cron.Trigger(ctx, admin, name, "j"))
	waitStatus("j", func(s cron.JobStatus) bool { return s.Pending }, "trigger pending")

	// Back to a: the pending trigger runs; then the leader stops
	// gracefully: the other replica reads the definition when it takes
	// over, and runs it.
	require.NoError(t, cron.Update(ctx, admin, name, "j", cron.Definition{Spec: "@every 1s", Handler: "a"}))
	waitRunIf("j", "a", func(r defRun) bool { return r.r.Trigger })
	require.ErrorIs(t, stops[first.replica](), context.Canceled)
	waitRunIf("j", "a", func(r defRun) bool { return r.replica != first.replica })

	// Remove: the job's records go in one transaction, and no claim can
	// come after it, so no time after the removal runs and no record comes
	// back; a job added afterwards ticks twice to show the leader moved on.
	require.NoError(t, cron.Remove(ctx, admin, name, "j"))
	removed := time.Now()
	assert.False(t, status("j").Defined)
	require.NoError(t, cron.Define(ctx, admin, name, "k", cron.Definition{Spec: everySecond, Handler: "b"}))
	waitRun("k", "b")
	waitRun("k", "b")
	for len(runs) > 0 {
		r := <-runs
		if r.r.Job == "j" {
			assert.False(t, r.r.Time.After(removed), "j ran for %v, after its removal at %v", r.r.Time, removed)
		}
	}
	resp, err := admin.Get(ctx, names.Prefix(name, "cron"), clientv3.WithPrefix())
	require.NoError(t, err)
	for _, kv := range resp.Kvs {
		assert.NotContains(t, string(kv.Key), "/j", "a key of the removed job is back: %s", kv.Key)
	}
	require.NoError(t, cron.Remove(ctx, admin, name, "k"))
}

// A run in progress when its job is removed gets a context canceled with
// ErrRemoved, its Commit is refused with ErrRemoved, and its end writes no
// record back: every write for a defined job is fenced by its definition.
func TestRemoveCancelsRunAndFencesItsWrites(t *testing.T) {
	c := cluster
	name := "/test/" + t.Name()
	cleanupName(t, c, name)
	ctx := ctxT(t, 60*time.Second)
	p := newProcess(t, c, 3*time.Second)
	s := cron.New(p.k, name)
	started := make(chan struct{}, 16)
	ended := make(chan defRun, 16)
	require.NoError(t, s.Handle("block", func(ctx context.Context, r cron.Run) error {
		started <- struct{}{}
		<-ctx.Done()
		// The run's work, committed late: the job is gone by now.
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := r.Commit(cctx, clientv3.OpPut(name+"/ledger/late", ""))
		ended <- defRun{r: r, cause: context.Cause(ctx), err: err}
		return err
	}))
	runScheduler(t, s)
	require.NoError(t, cron.Define(ctx, p.cli, name, "j", cron.Definition{Spec: everySecond, Handler: "block"}))
	recvT(t, started, 15*time.Second, "run start")
	require.NoError(t, cron.Remove(ctx, p.cli, name, "j"))
	end := recvT(t, ended, 15*time.Second, "run end")
	assert.ErrorIs(t, end.cause, cron.ErrRemoved)
	assert.ErrorIs(t, end.err, cron.ErrRemoved)

	// The run's end (status, open runs) and its Commit were refused:
	// nothing of j is under the scheduler, and the ledger is empty. A job
	// defined afterwards shows the leader wrote what came after.
	require.NoError(t, cron.Define(ctx, p.cli, name, "k", cron.Definition{Spec: everySecond, Handler: "block", Paused: true}))
	require.Eventually(t, func() bool {
		resp, err := c.Admin().Get(ctx, names.Prefix(name, "cron")+"status/k", clientv3.WithCountOnly())
		return err == nil && resp.Count == 1
	}, 15*time.Second, 50*time.Millisecond, "the leader's status of k")
	resp, err := c.Admin().Get(ctx, name, clientv3.WithPrefix())
	require.NoError(t, err)
	for _, kv := range resp.Kvs {
		assert.NotContains(t, string(kv.Key), "/j", "written after j's removal: %s", kv.Key)
		assert.NotContains(t, string(kv.Key), "/ledger/", "a removed job's run committed: %s", kv.Key)
	}
	require.NoError(t, cron.Remove(ctx, p.cli, name, "k"))
}

// A definition named like a job added in code is reported, not run; a
// corrupt definition stops Run and Status with ErrCorrupt.
func TestDefinitionConflictsAndCorrupt(t *testing.T) {
	c := cluster
	name := "/test/" + t.Name()
	cleanupName(t, c, name)
	ctx := ctxT(t, 60*time.Second)
	p := newProcess(t, c, 3*time.Second)
	s := cron.New(p.k, name)
	ran := make(chan string, 64)
	require.NoError(t, s.Add("tick", everySecond, func(context.Context, cron.Run) error { ran <- "code"; return nil }))
	require.NoError(t, s.Handle("h", func(context.Context, cron.Run) error { ran <- "handler"; return nil }))
	// Defined before the release that adds it in code runs: the leader runs
	// the job in code and reports the clash.
	require.NoError(t, cron.Define(ctx, p.cli, name, "tick", cron.Definition{Spec: everySecond, Handler: "h"}))
	stop := runScheduler(t, s)
	require.Eventually(t, func() bool {
		all, err := cron.Status(ctx, p.cli, name)
		return err == nil && len(all) == 1 && strings.Contains(all[0].Problem, "the job added in code runs")
	}, 15*time.Second, 50*time.Millisecond)
	for range 3 {
		assert.Equal(t, "code", recvT(t, ran, 15*time.Second, "run"))
	}
	// Removing the definition leaves the job in code and its records.
	claimKey := names.Prefix(name, "cron") + "claim/tick"
	before, err := c.Admin().Get(ctx, claimKey)
	require.NoError(t, err)
	require.Len(t, before.Kvs, 1)
	require.NoError(t, cron.Remove(ctx, p.cli, name, "tick"))
	after, err := c.Admin().Get(ctx, claimKey)
	require.NoError(t, err)
	require.Len(t, after.Kvs, 1, "Remove deleted the records of the job in code")
	assert.Equal(t, before.Kvs[0].CreateRevision, after.Kvs[0].CreateRevision, "Remove deleted the records of the job in code")
	recvT(t, ran, 15*time.Second, "run")
	// Once the job in code has records, its name cannot be defined.
	require.Eventually(t, func() bool {
		err := cron.Define(ctx, p.cli, name, "tick", cron.Definition{Spec: everySecond, Handler: "h"})
		return assert.ErrorIs(t, err, cron.ErrDefined) && strings.Contains(err.Error(), "added in code")
	}, 15*time.Second, 50*time.Millisecond)
	require.ErrorIs(t, stop(), context.Canceled)
	require.NoError(t, cron.Delete(ctx, p.cli, name))

	prefix := names.Prefix(name, "cron")
	for _, bad := range []string{"not json", `{"spec":"* * * * * *","handler":"h"}`, `{"spec":"x","handler":"h","at":1,"extra":1}`} {
		_, err := c.Admin().Put(ctx, prefix+"def/j", bad)
		require.NoError(t, err)
		_, err = cron.Status(ctx, p.cli, name)
		require.ErrorIs(t, err, cron.ErrCorrupt, bad)
		s := cron.New(p.k, name)
		require.NoError(t, s.Handle("h", nop))
		rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		err = s.Run(rctx)
		cancel()
		require.ErrorIs(t, err, cron.ErrCorrupt, bad)
	}
	// One that decodes but is invalid is the job's problem, not Run's.
	_, err = c.Admin().Put(ctx, prefix+"def/j", fmt.Sprintf(`{"spec":"61 * * * *","handler":"h","at":%d}`, time.Now().UnixNano()))
	require.NoError(t, err)
	all, err := cron.Status(ctx, p.cli, name)
	require.NoError(t, err)
	require.Len(t, all, 1)
	assert.Contains(t, all[0].Problem, "invalid definition")
	assert.Equal(t, "j", all[0].Job)
}

// A leader whose watch of the definitions is lost to a compaction (its
// member went down meanwhile) reads them afresh and follows what it
// missed: a job removed stops, a job defined runs, in the same term.
func TestDefinitionsReloadedAfterCompaction(t *testing.T) {
	c := testcluster.New(t)
	name := "/test/" + t.Name()
	ctx := ctxT(t, 90*time.Second)
	admin := c.Admin()
	cli, err := c.NewClient(testcluster.To(2))
	require.NoError(t, err)
	t.Cleanup(func() { _ = cli.Close() })
	// A lease that outlives the member's restart: the term goes on.
	k, err := leasekeeper.New(ctx, cli, leasekeeper.WithTTL(c.LeaseTTL(20*time.Second)))
	require.NoError(t, err)
	t.Cleanup(func() { _ = k.Close(context.Background()) })

	runs := make(chan defRun, 256)
	s := cron.New(k, name)
	require.NoError(t, s.Handle("h", func(ctx context.Context, r cron.Run) error {
		runs <- defRun{r: r}
		return nil
	}))
	runScheduler(t, s)
	require.NoError(t, cron.Define(ctx, admin, name, "a", cron.Definition{Spec: everySecond, Handler: "h"}))
	a := recvT(t, runs, 15*time.Second, "run of a")

	require.NoError(t, c.Stop(2))
	require.NoError(t, cron.Remove(ctx, admin, name, "a"))
	removed := time.Now()
	require.NoError(t, cron.Define(ctx, admin, name, "b", cron.Definition{Spec: everySecond, Handler: "h"}))
	_, err = c.Compact(ctx)
	require.NoError(t, err)
	require.NoError(t, c.Restart(ctx, 2))

	deadline := time.After(30 * time.Second)
	for {
		var r defRun
		select {
		case r = <-runs:
		case <-deadline:
			t.Fatal("b did not run after the member came back")
		}
		if r.r.Job == "a" {
			assert.False(t, r.r.Time.After(removed), "a ran for %v, after its removal", r.r.Time)
			continue
		}
		assert.Equal(t, a.r.Token, r.r.Token, "a new term read the definitions, not the reload")
		break
	}
	require.NoError(t, cron.Delete(ctx, admin, name))
}
