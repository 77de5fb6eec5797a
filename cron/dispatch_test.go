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
	"github.com/concordkit/concord/queue"
)

func TestDispatchBadInput(t *testing.T) {
	name := "/test/" + t.Name()
	cleanupName(t, cluster, name)
	p := newProcess(t, cluster, 2*time.Second)
	q := queue.New(p.cli, name+"/q")
	t.Cleanup(func() { _ = q.Close() })
	s := cron.New(p.k, name)

	assert.ErrorContains(t, s.AddDispatch("j", everySecond, nil), "cron: job \"j\": nil queue")
	assert.ErrorContains(t, s.AddDispatch("j", everySecond, queue.New(p.cli, "")), "cron: job \"j\": queue: ")
	assert.ErrorContains(t, s.AddDispatch("j", everySecond, q, cron.WithRetries(1, time.Second)), "the queue's")
	assert.ErrorContains(t, s.AddDispatch("j", everySecond, q, cron.WithRerun(1)), "the queue's")
	assert.ErrorContains(t, s.AddDispatch("j", everySecond, q, cron.WithEnqueue(queue.WithDedupID("x"))), "dedup")
	assert.ErrorContains(t, s.AddDispatch("j", everySecond, q, cron.WithEnqueue(queue.WithDelay(-1))), "queue: enqueue: invalid option")
	assert.ErrorIs(t, s.AddDispatch("j", "@often", q), cron.ErrBadSpec)
	assert.ErrorContains(t, s.Add("j", everySecond, nop, cron.WithEnqueue(queue.WithPriority(1))), "for dispatched jobs")
	assert.ErrorContains(t, s.HandleDispatch("h", nil), "nil queue")
	require.NoError(t, s.AddDispatch("j", everySecond, q))
	assert.ErrorIs(t, s.AddDispatch("j", everySecond, q), cron.ErrDuplicate)

	for _, bad := range []string{"", "x", `{"scheduler":"s","job":"j","time":1,"token":0}`, `{"scheduler":"s","job":"a/b","time":1,"token":1}`} {
		_, err := cron.DecodeDispatched([]byte(bad))
		assert.ErrorIs(t, err, cron.ErrNotDispatched, bad)
	}
}

// TestDispatchUnderWorkerKill: the leader enqueues each second of a job
// added in code and of a job defined at runtime into a queue; three
// workers run them and write a ledger entry with each task's Ack. One
// worker dies (cut off from etcd, its loop stopped) while it runs a task:
// the queue hands that task to another worker once the dead one's lease
// ends, and the ledger holds every second of both jobs exactly once.
func TestDispatchUnderWorkerKill(t *testing.T) {
	c := cluster
	name := "/test/" + t.Name()
	cleanupName(t, c, name)
	qname := name + "/q"
	ledger := name + "/ledger/"
	ctx := ctxT(t, 90*time.Second)
	t.Cleanup(func() { _, _ = c.Admin().Delete(context.Background(), qname, clientv3.WithPrefix()) })

	leader := newProcess(t, c, 3*time.Second)
	lq := queue.New(leader.cli, qname)
	t.Cleanup(func() { _ = lq.Close() })
	s := cron.New(leader.k, name)
	require.NoError(t, s.AddDispatch("tick", everySecond, lq))
	require.NoError(t, s.HandleDispatch("to-workers", lq))
	stop := runScheduler(t, s)
	require.NoError(t, cron.Define(ctx, c.Admin(), name, "dyn", cron.Definition{Spec: "@every 1s", Handler: "to-workers"}))

	type started struct {
		worker int
		d      cron.DispatchedRun
		att    int
	}
	starts := make(chan started, 1024)
	acked := make(chan started, 1024)
	type worker struct {
		p      *process
		cancel context.CancelFunc
		done   chan struct{}
	}
	var ws []*worker
	for i := range 3 {
		p := newProcess(t, c, 2*time.Second)
		q := queue.New(p.cli, qname)
		wctx, cancel := context.WithCancel(ctx)
		w := &worker{p: p, cancel: cancel, done: make(chan struct{})}
		ws = append(ws, w)
		go func() {
			defer close(w.done)
			for {
				task, err := q.Dequeue(wctx, p.k)
				if err != nil {
					return
				}
				d, err := cron.DecodeDispatched(task.Payload)
				if err != nil {
					t.Errorf("worker %d: %v", i, err)
					return
				}
				starts <- started{i, d, task.Attempt}
				select { // the work
				case <-time.After(300 * time.Millisecond):
				case <-wctx.Done():
					return // the process dies with the task claimed
				}
				key := fmt.Sprintf("%s%s/%d/%d-%d", ledger, d.Job, d.Time.Unix(), i, task.Attempt)
				if err := task.Ack(wctx, clientv3.OpPut(key, "")); err == nil {
					acked <- started{i, d, task.Attempt}
				}
			}
		}()
		t.Cleanup(func() {
			cancel()
			<-w.done
			_ = q.Close()
		})
	}

	for n := 0; n < 6; n++ {
		recvT(t, acked, 15*time.Second, "an acked run")
	}
	// Kill worker 0 while it runs a task: one that starts from now on.
	for len(starts) > 0 {
		<-starts
	}
	var victim started
	for until := time.Now().Add(20 * time.Second); victim.worker != 0 || victim.d.Job == ""; {
		require.True(t, time.Now().Before(until), "worker 0 started no run")
		victim = recvT(t, starts, 15*time.Second, "a run's start")
	}
	t.Logf("victim: %s %v attempt %d", victim.d.Job, victim.d.Time.Format("15:04:05"), victim.att)
	c.CutClient(ws[0].p.cli)
	ws[0].cancel()
	<-ws[0].done
	// Its task is run again by another worker, with the next attempt.
	deadline := time.After(30 * time.Second)
	for redone := false; !redone; {
		select {
		case a := <-acked:
			redone = a.d.Job == victim.d.Job && a.d.Time.Equal(victim.d.Time)
			if redone {
				assert.Equal(t, victim.att+1, a.att)
				assert.NotEqual(t, 0, a.worker)
			}
		case <-deadline:
			t.Fatalf("the dead worker's task (%s at %v) was not run again", victim.d.Job, victim.d.Time)
		}
	}
	for n := 0; n < 4; n++ {
		recvT(t, acked, 15*time.Second, "an acked run after the kill")
	}
	require.ErrorIs(t, stop(), context.Canceled)
	// Every task enqueued is acked once the queue drains.
	require.Eventually(t, func() bool {
		st, err := lq.Stats(ctx)
		return err == nil && st.Ready+st.Delayed+st.Running == 0
	}, 30*time.Second, 100*time.Millisecond, "the queue did not drain")
	for _, job := range []string{"tick", "dyn"} {
		bySec, lo, hi := readLedger(t, ctx, c, ledger+job+"/")
		require.NotZero(t, lo, job)
		if job == "dyn" {
			lo++ // defined while the leader ran: its first time may start anywhere
		}
		var seconds []string
		for sec := lo; sec <= hi; sec++ {
			assert.Len(t, bySec[sec], 1, "%s: second %d ran %v", job, sec, bySec[sec])
			seconds = append(seconds, strconv.Itoa(len(bySec[sec])))
		}
		t.Logf("%s: %d seconds, runs per second %s", job, hi-lo+1, strings.Join(seconds, ""))
		assert.GreaterOrEqual(t, hi-lo, int64(5), job)
	}
	st, err := cron.Status(ctx, c.Admin(), name)
	require.NoError(t, err)
	for _, j := range st {
		assert.Equal(t, cron.Dispatched, j.Outcome, j.Job)
		assert.NotEmpty(t, j.Task, j.Job)
	}
	_, _ = c.Admin().Delete(ctx, ledger, clientv3.WithPrefix())
	require.NoError(t, cron.Remove(ctx, c.Admin(), name, "dyn"))
}
