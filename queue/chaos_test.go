package queue_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/retry"
	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/queue"
	"github.com/concordkit/concord/testcluster"
)

var chaosTasks = flag.Int("queue.chaos-tasks", 2000, "tasks pushed through the at-least-once chaos test (10000 for the full run)")

// chaosLog is what the workers saw, for the checks at the end.
type chaosLog struct {
	mu          sync.Mutex
	acked       map[string]int // successful Ack calls per task
	deliveries  map[string][]int
	lost        map[string]int // claims the worker saw lost or abandoned
	redelivered int            // deliveries flagged Redelivered: the previous claim was lost
	released    int            // deliveries after a batch gave an unused claim back
	ackedN      atomic.Int64
	tokens      map[string][]int64 // the claims handed to workers, per task
	group       map[string]string  // each delivered task's group
	timedOut    int                // attempts a worker saw end by their timeout
	canceledRun int                // attempts a worker saw end by a cancel
	cancel      chan<- string      // tasks to cancel once running
}

// The chaos workload's tasks, by their number i: some in groups, some
// stalling their first attempt past their timeout, some canceled while
// queued or while running.
func chaosGroup(i int) string {
	if i%4 != 1 {
		return ""
	}
	return "g" + strconv.Itoa(i%7)
}

// Stalls and running cancels fall in groups (i%4 == 1), queued cancels
// outside them.
func chaosStalls(i int) bool        { return i%200 == 9 }
func chaosCancelQueued(i int) bool  { return i%80 == 43 }
func chaosCancelRunning(i int) bool { return i%80 == 5 }

// chaosTimeout is the stalling tasks' timeout.
const chaosTimeout = time.Second

// deliver records a delivery and reports whether it is the task's first.
func (l *chaosLog) deliver(t *queue.Task) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.deliveries[t.ID] = append(l.deliveries[t.ID], t.Attempt)
	l.tokens[t.ID] = append(l.tokens[t.ID], t.Token())
	l.group[t.ID] = t.Group
	switch {
	case t.Redelivered:
		l.redelivered++
	case t.Attempt > 1:
		// A batch claimed it before and gave it back unused (a release, not
		// a loss): the attempt counts, the flag does not.
		l.released++
	}
	return len(l.deliveries[t.ID]) == 1
}

// ended records why a task's attempt ended before its worker finished it.
func (l *chaosLog) ended(t *queue.Task) {
	cause := context.Cause(t.Context())
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case errors.Is(cause, queue.ErrTimeout):
		l.timedOut++
	case errors.Is(cause, queue.ErrCanceled):
		l.canceledRun++
	}
}

func (l *chaosLog) loss(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lost[id]++
}

func (l *chaosLog) ack(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.acked[id]++
	if l.acked[id] == 1 {
		l.ackedN.Add(1)
	}
}

// chaosWorker runs generations: each a process of its own (client, lease
// keeper, queue). kill ends the current one as a crash would.
type chaosWorker struct {
	c    *testcluster.Cluster
	name string
	log  *chaosLog

	mu  sync.Mutex // protects cur
	cur *chaosGen
}

type chaosGen struct {
	cli    *clientv3.Client
	k      *leasekeeper.Keeper
	cancel context.CancelFunc
	task   atomic.Pointer[queue.Task]
	killed atomic.Bool
}

func (w *chaosWorker) gen() *chaosGen {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.cur
}

func (w *chaosWorker) run(ctx context.Context, t *testing.T) {
	for ctx.Err() == nil {
		w.generation(ctx, t)
	}
}

func (w *chaosWorker) generation(ctx context.Context, t *testing.T) {
	cli, err := w.c.NewClient()
	if err != nil {
		return
	}
	defer func() { _ = cli.Close() }()
	kctx, kcancel := context.WithTimeout(ctx, 5*time.Second)
	k, err := leasekeeper.New(kctx, cli, leasekeeper.WithTTL(w.c.LeaseTTL(time.Second)))
	kcancel()
	if err != nil {
		return
	}
	q := queue.New(cli, w.name, queue.WithRetention(0), queue.WithMaxAttempts(1000))
	gctx, cancel := context.WithCancel(ctx)
	g := &chaosGen{cli: cli, k: k, cancel: cancel}
	w.mu.Lock()
	w.cur = g
	w.mu.Unlock()
	defer func() {
		cancel()
		_ = q.Close()
		cctx, ccancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		_ = k.Close(cctx)
		ccancel()
	}()
	for gctx.Err() == nil {
		task, err := q.Dequeue(gctx, k)
		if err != nil {
			continue
		}
		g.task.Store(task)
		first := w.log.deliver(task)
		i, _ := strconv.Atoi(string(task.Payload))
		if first && chaosCancelRunning(i) {
			w.log.cancel <- task.ID
		}
		if first && chaosStalls(i) {
			// Stuck: only the timeout gets the task to another worker.
			select {
			case <-task.Context().Done():
			case <-time.After(chaosTimeout + 10*time.Second):
				t.Errorf("task %s: its context did not end at its timeout", task.ID)
			case <-gctx.Done():
			}
		}
		w.process(gctx, g, task)
		g.task.Store(nil)
	}
}

// process does the task's work under its guard, then acks it with the
// ledger entry in the same fenced transaction. It deliberately ignores the
// task's context, as a process paused or cut off at the wrong moment would:
// only the guards stand between a stale worker and a second acknowledgement.
func (w *chaosWorker) process(gctx context.Context, g *chaosGen, task *queue.Task) {
	work := clientv3.OpPut(fmt.Sprintf("%s/work/%s/%d", w.name, task.ID, task.Token()), "")
	for {
		if gctx.Err() != nil {
			w.log.loss(task.ID) // crashed mid-task: abandoned
			return
		}
		rctx, cancel := context.WithTimeout(gctx, 500*time.Millisecond)
		resp, err := g.cli.Txn(rctx).If(task.Guard()...).Then(work).Commit()
		cancel()
		if err == nil {
			if !resp.Succeeded {
				w.log.loss(task.ID)
				w.log.ended(task)
				return
			}
			break
		}
	}
	ledger := clientv3.OpPut(fmt.Sprintf("%s/ledger/%s/%d", w.name, task.ID, task.Token()), "")
	for {
		if gctx.Err() != nil {
			w.log.loss(task.ID)
			return
		}
		actx, cancel := context.WithTimeout(gctx, 500*time.Millisecond)
		err := task.Ack(actx, ledger)
		cancel()
		switch {
		case err == nil:
			w.log.ack(task.ID)
			return
		case errors.Is(err, queue.ErrLost):
			w.log.loss(task.ID)
			w.log.ended(task)
			return
		}
	}
}

// kill crashes the worker's current process: its traffic stops (so its
// lease expires on the server while it holds a claim) and it abandons its
// task.
func (w *chaosWorker) kill() {
	g := w.gen()
	if g == nil {
		return
	}
	w.c.CutClient(g.cli)
	g.killed.Store(true)
	g.cancel()
}

// TestAtLeastOnceUnderChaos pushes tasks through four workers while workers
// crash, are cut off until their lease is lost, have their lease revoked,
// and a member restarts. A quarter of the tasks are in seven groups; one in
// 200 stalls its first attempt past its timeout; one in 40 is canceled,
// half while queued, half once running. Every task must be acknowledged
// exactly once (the ledger is written by the fenced Ack transaction
// itself) or canceled, never both, none lost; every redelivery must follow
// a lost claim; no group's task may be claimed before the one before it
// was acknowledged (the checker TestGroupCheckerCatchesDisorder shows
// failing with groups ignored).
func TestAtLeastOnceUnderChaos(t *testing.T) {
	n := *chaosTasks
	c := testcluster.New(t)
	ctx := ctxT(t, 5*time.Minute)
	name := "/qt/chaos"
	admin := c.Admin()

	producer := queue.New(c.Client(), name, queue.WithMaxAttempts(1000), queue.WithRetention(5*time.Minute))
	items := make([]queue.Item, n)
	for i := range items {
		items[i] = queue.Item{Payload: []byte(strconv.Itoa(i))}
		if g := chaosGroup(i); g != "" {
			items[i].Options = append(items[i].Options, queue.WithGroup(g))
		}
		if chaosStalls(i) {
			items[i].Options = append(items[i].Options, queue.WithTimeout(chaosTimeout))
		}
	}

	// The canceler: tasks to cancel come from the producer (queued) and
	// from the workers (running); a cancel that races the Ack may find the
	// task finished, and either outcome is fine as long as it is the only
	// one.
	toCancel := make(chan string, n)
	var cancelMu sync.Mutex
	canceled := map[string]bool{} // Cancel returned nil
	var canceledN atomic.Int64
	cancelDone := make(chan struct{})
	cctx, stopCanceler := context.WithCancel(ctx)
	go func() {
		defer close(cancelDone)
		for {
			var id string
			select {
			case id = <-toCancel:
			case <-cctx.Done():
				return
			}
			for cctx.Err() == nil {
				err := producer.Cancel(cctx, id)
				if err == nil {
					cancelMu.Lock()
					canceled[id] = true
					cancelMu.Unlock()
					canceledN.Add(1)
				}
				if err == nil || errors.Is(err, queue.ErrFinished) || errors.Is(err, queue.ErrNotFound) {
					break
				}
			}
		}
	}()
	defer func() {
		stopCanceler()
		<-cancelDone
	}()

	log := &chaosLog{acked: map[string]int{}, deliveries: map[string][]int{}, lost: map[string]int{},
		tokens: map[string][]int64{}, group: map[string]string{}, cancel: toCancel}
	wctx, stopWorkers := context.WithCancel(ctx)
	workers := make([]*chaosWorker, 4)
	var wg sync.WaitGroup
	for i := range workers {
		workers[i] = &chaosWorker{c: c, name: name, log: log}
		wg.Add(1)
		go func() {
			defer wg.Done()
			workers[i].run(wctx, t)
		}()
	}
	defer func() {
		stopWorkers()
		wg.Wait()
	}()

	// Produce in the background, in batches, like a real producer. A batch
	// whose transaction failed with a transient error (a member restarting)
	// may or may not have been written; it is enqueued again, so its tasks
	// may exist twice, under other IDs: each must still be acknowledged
	// exactly once.
	var ids []string
	var unknown atomic.Int64 // tasks of batches whose outcome was unknown
	prodDone := make(chan error, 1)
	go func() {
		for i := 0; i < n; i += 200 {
			batch := items[i:min(i+200, n)]
			for {
				got, err := producer.EnqueueBatch(ctx, batch)
				if err == nil {
					for j, id := range got {
						if chaosCancelQueued(i + j) {
							toCancel <- id
						}
					}
					ids = append(ids, got...)
					break
				}
				if ctx.Err() != nil || !retry.Retriable(err) && !errors.Is(err, context.DeadlineExceeded) {
					prodDone <- err
					return
				}
				t.Logf("producer: %v; enqueueing the batch again", err)
				unknown.Add(int64(len(batch)))
			}
		}
		prodDone <- nil
	}()

	// waitAcked polls the ack count: there is no single event for "k more
	// tasks were acknowledged by any of four workers".
	// The ledger is the truth: a worker crashed right after sending its Ack
	// never learns that it committed. Count ledger entries as they appear.
	var ledgerN atomic.Int64
	lctx, stopLedger := context.WithCancel(ctx)
	defer stopLedger()
	lw := admin.Watch(lctx, name+"/ledger/", clientv3.WithPrefix())
	ledgerDone := make(chan struct{})
	go func() {
		defer close(ledgerDone)
		for resp := range lw {
			for _, ev := range resp.Events {
				if ev.Type == clientv3.EventTypePut && ev.IsCreate() {
					ledgerN.Add(1)
				}
			}
		}
	}()
	defer func() {
		stopLedger()
		<-ledgerDone
	}()

	start := time.Now()
	// finished counts the tasks acknowledged or canceled.
	finished := func() int64 { return ledgerN.Load() + canceledN.Load() }
	waitAcked := func(target int64) bool {
		tk := time.NewTicker(5 * time.Millisecond)
		defer tk.Stop()
		deadline := time.After(60 * time.Second)
		for finished() < target {
			select {
			case <-ctx.Done():
				return false
			case <-deadline:
				return false
			case <-tk.C:
			}
		}
		return true
	}

	faults := map[string]int{}
	step := int64(max(n/25, 20))
	restarted := false
	for i := 0; finished() < int64(n)*8/10; i++ {
		if !waitAcked(finished() + step) {
			break
		}
		w := workers[i%len(workers)]
		if testing.Verbose() {
			t.Logf("%v: %d acknowledged, fault %d", time.Since(start).Round(time.Millisecond), ledgerN.Load(), i%4)
		}
		switch i % 4 {
		case 0:
			w.kill()
			faults["kill"]++
		case 1:
			if g := w.gen(); g != nil {
				if l := g.k.Current(); l != nil {
					require.NoError(t, c.RevokeLease(ctx, l.ID()))
					faults["revoke"]++
				}
			}
		case 2:
			g := w.gen()
			if g == nil || g.killed.Load() {
				continue
			}
			victim := g.task.Load()
			events, stop := g.k.Subscribe()
			c.CutClient(g.cli)
			deadline := time.After(10 * time.Second)
		wait:
			for {
				select {
				case ev, ok := <-events:
					if !ok || ev.State == leasekeeper.Lost || ev.State == leasekeeper.Closed {
						break wait
					}
				case <-deadline:
					t.Error("cut-off worker never reported its lease lost")
					break wait
				}
			}
			stop()
			// Keep it cut off until its task was redelivered and acknowledged
			// by another worker; then its stalled writes go through late, like
			// a paused process's.
			if victim != nil {
				waitLedger(t, ctx, admin, name, victim.ID)
			}
			c.RestoreClient(g.cli)
			faults["cut"]++
		case 3:
			if restarted {
				continue
			}
			restarted = true
			m := (c.Leader() + 1) % c.Size()
			require.NoError(t, c.Kill(m))
			require.NoError(t, c.Restart(ctx, m))
			faults["member restart"]++
		}
	}
	require.NoError(t, <-prodDone)
	if !waitAcked(int64(n)) {
		resp, err := admin.Get(ctx, name+"/.queue/", clientv3.WithPrefix())
		require.NoError(t, err)
		for _, kv := range resp.Kvs {
			t.Logf("%s = %.200q (create %d, lease %x)", kv.Key, kv.Value, kv.CreateRevision, kv.Lease)
		}
		for i, w := range workers {
			if g := w.gen(); g != nil {
				t.Logf("worker %d: lease %x killed %v", i, g.k.Current().ID(), g.killed.Load())
			}
		}
		t.Fatalf("only %d of %d tasks acknowledged, %d canceled", ledgerN.Load(), n, canceledN.Load())
	}
	// Tasks enqueued twice (a batch retried after an unknown outcome) are
	// beyond n: wait for the queue to drain too.
	if unknown.Load() > 0 {
		tk := time.NewTicker(10 * time.Millisecond)
		defer tk.Stop()
		deadline := time.After(60 * time.Second)
	drain:
		for {
			st, err := producer.Stats(ctx)
			if err == nil && st.Ready+st.Delayed+st.Running == 0 {
				break
			}
			select {
			case <-tk.C:
			case <-deadline:
				t.Fatalf("queue not drained: %+v, %v", st, err)
			case <-ctx.Done():
				break drain
			}
		}
	}
	t.Logf("all acknowledged after %v", time.Since(start))
	stopWorkers()
	wg.Wait()

	// The ledger: exactly one entry per task, written by the fenced Ack,
	// or none for a canceled task: never both.
	resp, err := admin.Get(ctx, name+"/ledger/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	require.NoError(t, err)
	ledger := map[string]int{}
	ackRev := map[string]int64{}
	for _, kv := range resp.Kvs {
		id, _, _ := strings.Cut(strings.TrimPrefix(string(kv.Key), name+"/ledger/"), "/")
		ledger[id]++
		ackRev[id] = kv.CreateRevision
	}
	stopCanceler()
	<-cancelDone
	// A Cancel whose first answer was lost reports ErrFinished when it
	// tries again: the status says what happened.
	isCanceled := func(id string) bool {
		if canceled[id] {
			return true
		}
		if ledger[id] > 0 {
			return false
		}
		st, err := producer.Status(ctx, id)
		return err == nil && st.State == queue.StateCanceled
	}
	require.Len(t, ids, n)
	missing, dup, unconfirmed, canceledTotal := 0, 0, 0, 0
	for _, id := range ids {
		c := isCanceled(id)
		switch {
		case c && ledger[id] > 0:
			t.Errorf("task %s: canceled, and acknowledged %d times", id, ledger[id])
		case c:
			canceledTotal++
			continue
		case ledger[id] == 0:
			missing++
		case ledger[id] > 1:
			dup++
		}
		if log.acked[id] > 1 {
			t.Errorf("task %s: %d successful acks", id, log.acked[id])
		}
		if log.acked[id] == 0 {
			unconfirmed++ // its worker crashed before the answer came
		}
	}
	assert.Zero(t, missing, "tasks neither acknowledged nor canceled")
	assert.Zero(t, dup, "tasks acknowledged more than once")
	for id, k := range ledger {
		assert.Equal(t, 1, k, "task %s acknowledged %d times", id, k)
	}
	assert.GreaterOrEqual(t, len(ledger)+canceledTotal, n)
	assert.LessOrEqual(t, int64(len(ledger)), int64(n)+unknown.Load(), "tasks acknowledged that no batch enqueued")
	if n >= 100 {
		assert.Positive(t, canceledTotal, "no cancel took effect: the test proves nothing of cancels")
		assert.Positive(t, log.timedOut, "no timeout passed: the test proves nothing of timeouts")
	}

	// Groups: each group's tasks one at a time, in enqueue order.
	for _, v := range groupDisorder(ackRev, log.tokens, log.group) {
		t.Error(v)
	}

	// Fencing: once a newer claim exists, no older claim wrote work.
	resp, err = admin.Get(ctx, name+"/work/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	require.NoError(t, err)
	work := map[string][][2]int64{}
	for _, kv := range resp.Kvs {
		id, tok, _ := strings.Cut(strings.TrimPrefix(string(kv.Key), name+"/work/"), "/")
		token, _ := strconv.ParseInt(tok, 10, 64)
		work[id] = append(work[id], [2]int64{token, kv.CreateRevision})
	}
	for id, ws := range work {
		for _, a := range ws {
			for _, b := range ws {
				if a[0] < b[0] && a[1] > b[0] {
					t.Errorf("task %s: claim %d wrote at revision %d, after claim %d existed", id, a[0], a[1], b[0])
				}
			}
		}
	}

	// Redeliveries: only after a lost claim, flagged, and counted.
	lostTotal := 0
	for _, v := range log.lost {
		lostTotal += v
	}
	unseen := 0
	for id, atts := range log.deliveries {
		for _, a := range atts {
			if a > 1 && log.lost[id] == 0 {
				unseen++ // the lost claim never reached its worker (cut mid-claim, or lost in a batch buffer)
			}
		}
	}
	assert.Positive(t, log.redelivered, "the faults caused no redelivery: the test proves nothing")
	t.Logf("%d tasks; faults %v; %d redeliveries, %d claims seen lost by workers, %d deliveries after a claim its worker never saw; %d after an unused batch claim was given back; %d acks committed whose worker crashed before the answer; %d canceled (%d seen by their worker while running); %d attempts timed out",
		n, faults, log.redelivered, lostTotal, unseen, log.released, unconfirmed, canceledTotal, log.canceledRun, log.timedOut)

	// Nothing left but the ledgers.
	resp, err = admin.Get(ctx, name+"/.queue/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	require.NoError(t, err)
	for _, kv := range resp.Kvs {
		// Finished records and cancel markers, on their retention leases.
		if !strings.HasPrefix(string(kv.Key), name+"/.queue/f/") && !strings.HasPrefix(string(kv.Key), name+"/.queue/i/k/") {
			t.Errorf("left behind: %s", kv.Key)
		}
	}
	_ = producer.Close()
}

// waitLedger polls for the task's ledger entry: the acknowledgement comes
// from whichever worker claims it next, so there is no one event to wait on.
func waitLedger(t *testing.T, ctx context.Context, admin *clientv3.Client, name, id string) {
	t.Helper()
	tk := time.NewTicker(10 * time.Millisecond)
	defer tk.Stop()
	deadline := time.After(30 * time.Second)
	for {
		resp, err := admin.Get(ctx, name+"/ledger/"+id+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err == nil && resp.Count > 0 {
			return
		}
		select {
		case <-tk.C:
		case <-deadline:
			t.Errorf("task %s never acknowledged by another worker", id)
			return
		case <-ctx.Done():
			return
		}
	}
}

// Progress and Ack go on about one election after the etcd leader's process
// hangs (SIGSTOP), while the claim stands, instead of waiting for etcd's
// own request timeout and failing. Process mode only (Pause).
func TestTaskOpsGoOnWhileLeaderHangs(t *testing.T) {
	c := testcluster.New(t)
	if c.Binary() == "" {
		t.Skip("Pause needs process mode (CONCORD_ETCD)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cli, err := c.NewClient()
	require.NoError(t, err)
	defer cli.Close()
	const ttl = 20 * time.Second // far longer than the failover
	k, err := leasekeeper.New(ctx, cli, leasekeeper.WithTTL(ttl))
	require.NoError(t, err)
	defer k.Close(context.Background())
	q := queue.New(cli, "/qt/"+t.Name(), queue.WithRetention(0))
	defer q.Close()
	_, err = q.Enqueue(ctx, []byte("x"))
	require.NoError(t, err)
	task, err := q.Dequeue(ctx, k)
	require.NoError(t, err)

	lead, err := c.WaitLeader(ctx)
	require.NoError(t, err)
	require.NoError(t, c.Pause(lead))
	defer func() { _ = c.Resume(lead) }()
	start := time.Now()
	for i := range 3 {
		require.NoError(t, task.Progress(ctx, float64(i)/3, "working", nil), "Progress while the leader hangs")
	}
	require.NoError(t, task.Ack(ctx))
	t.Logf("3 Progress calls and an Ack in %v after the leader hung (election timeout %v)", time.Since(start), c.ElectionTimeout())
	require.Less(t, time.Since(start), ttl/2, "the calls waited for the hung leader")
}
