package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/queue"
	"github.com/concordkit/concord/testcluster"
)

// The queue checker. A producer enqueues tasks (retrying with a dedup ID, so
// each acknowledged enqueue is one task); workers in separate "processes"
// claim them, report progress with a message naming their claim's token, and
// acknowledge them with a result key written in Ack's fenced transaction. An
// observer watches everything in revision order and checks:
//   - no progress and no result from a stale claim: a progress record or a
//     result naming token T for a task whose newest claim is newer than T;
//   - no result written twice, and no claim of a task after its result;
//   - no task lost: at the end every acknowledged enqueue has a result.

var claimMark = regexp.MustCompile(`claim-(\d+)-end`)

type queueObserver struct {
	r                  *report
	claimPrefix        string // the queue's claim keys: <P>i/c/<id>
	progPrefix         string // the queue's progress records: <P>p/<id>
	rawProgPrefix      string // progress written without fencing (unprotected variant)
	resultPrefix       string
	mu                 sync.Mutex       // protects the maps
	newest             map[string]int64 // task → newest claim token seen
	results            map[string]int64 // task → token of its result
	staleProg, claimed int
	gaps               int
	ackRetriedLost     map[string]int64 // task → token of an Ack that failed, was retried, then answered lost
	lastRev            int64            // the newest revision applied
	changed            chan struct{}    // closed and replaced after each response applied
}

// advance records that everything up to rev was applied and wakes waiters.
func (o *queueObserver) advance(rev int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.lastRev = max(o.lastRev, rev)
	close(o.changed)
	o.changed = make(chan struct{})
}

// waitFor waits until cond (called with mu held) holds, or ctx ends.
func (o *queueObserver) waitFor(ctx context.Context, cond func() bool) bool {
	for {
		o.mu.Lock()
		ok, ch := cond(), o.changed
		o.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}

func (o *queueObserver) apply(ev *clientv3.Event) {
	if ev.Type != clientv3.EventTypePut {
		return
	}
	key, val := string(ev.Kv.Key), string(ev.Kv.Value)
	o.mu.Lock()
	defer o.mu.Unlock()
	switch {
	case strings.HasPrefix(key, o.claimPrefix):
		id := strings.TrimPrefix(key, o.claimPrefix)
		if tok, done := o.results[id]; done {
			o.r.violate("task %s claimed (token %d) after its result was written by claim %d", id, ev.Kv.CreateRevision, tok)
		}
		o.newest[id] = max(o.newest[id], ev.Kv.CreateRevision)
		o.claimed++
	case strings.HasPrefix(key, o.progPrefix), strings.HasPrefix(key, o.rawProgPrefix):
		id := strings.TrimPrefix(strings.TrimPrefix(key, o.progPrefix), o.rawProgPrefix)
		m := claimMark.FindStringSubmatch(val)
		if m == nil {
			return
		}
		tok, _ := strconv.ParseInt(m[1], 10, 64)
		if tok < o.newest[id] {
			o.staleProg++
			o.r.violate("progress of task %s from claim %d at revision %d, after claim %d", id, tok, ev.Kv.ModRevision, o.newest[id])
		}
	case strings.HasPrefix(key, o.resultPrefix):
		id := strings.TrimPrefix(key, o.resultPrefix)
		tok, _ := strconv.ParseInt(val, 10, 64)
		if prev, ok := o.results[id]; ok {
			o.r.violate("result of task %s written again, by claim %d (first by claim %d)", id, tok, prev)
		}
		if tok < o.newest[id] {
			o.r.violate("result of task %s from claim %d at revision %d, after claim %d", id, tok, ev.Kv.ModRevision, o.newest[id])
		}
		o.results[id] = tok
	}
}

// observe applies every event under prefix in revision order until ctx
// ends. If the history it needs was compacted while its watch was
// disconnected, it counts a gap and goes on from the present: the checks
// then miss that window, but report nothing false.
func (o *queueObserver) observe(ctx context.Context, admin *clientv3.Client, prefix string, ready chan<- struct{}) {
	var rev int64
	for ctx.Err() == nil {
		opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithCreatedNotify()}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		wctx, cancel := context.WithCancel(ctx)
		for resp := range admin.Watch(wctx, prefix, opts...) {
			if resp.Created && ready != nil {
				close(ready)
				ready = nil
			}
			if resp.Err() != nil {
				if resp.CompactRevision > 0 {
					o.mu.Lock()
					o.gaps++
					o.mu.Unlock()
					rev = 0
				}
				break
			}
			for _, ev := range resp.Events {
				o.apply(ev)
			}
			if len(resp.Events) > 0 {
				rev = resp.Events[len(resp.Events)-1].Kv.ModRevision + 1
				o.advance(rev - 1)
			}
		}
		cancel()
	}
}

type queueRun struct {
	workers   int
	tasks     int
	protected bool // false: progress and result written without Guard, context ignored
	work      span // time per progress step
	steps     int  // progress steps per task, at most
	nemesis   nemesisConfig
	duration  time.Duration // of the nemesis; the workers then drain the queue
}

func runQueue(t *testing.T, c *testcluster.Cluster, seed int64, cfg queueRun) (*report, *nemesis) {
	ctx := ctxT(t, cfg.duration+3*time.Minute)
	r := newReport(t, seed)
	base := "chaos/" + strings.ReplaceAll(t.Name(), "/", "_") + "/"
	name := base + "q"
	qp := name + "/.queue/"
	o := &queueObserver{
		r: r, claimPrefix: qp + "i/c/", progPrefix: qp + "p/", rawProgPrefix: base + "rawprogress/",
		resultPrefix: base + "results/", newest: map[string]int64{}, results: map[string]int64{},
		changed: make(chan struct{}), ackRetriedLost: map[string]int64{},
	}
	octx, ostop := context.WithCancel(ctx)
	ready := make(chan struct{})
	var obs sync.WaitGroup
	obs.Go(func() { o.observe(octx, c.Admin(), base, ready) })
	defer func() { ostop(); obs.Wait() }()
	select {
	case <-ready:
	case <-ctx.Done():
		t.Fatal("observer watch not created")
	}

	keepers, closeKeepers := workloadKeepers(ctx, t, c, &cfg.nemesis, cfg.workers)
	defer closeKeepers()
	var queues []*queue.Queue
	for i, k := range keepers {
		q := queue.New(k.Client(), name, queue.WithMaxAttempts(1000), queue.WithWorkerName(fmt.Sprint("w", i)),
			queue.WithRetryBackoff(10*time.Millisecond, 100*time.Millisecond))
		queues = append(queues, q)
	}
	defer func() {
		for _, q := range queues {
			_ = q.Close()
		}
	}()
	pcli, err := c.NewClient()
	require.NoError(t, err)
	producer := queue.New(pcli, name)
	defer producer.Close()

	// holding[i] counts the tasks worker i holds, for aiming client cuts.
	holding := make([]atomic.Int32, cfg.workers)
	cfg.nemesis.holder = func() int {
		for i := range holding {
			if holding[i].Load() > 0 {
				return i
			}
		}
		return -1
	}

	var enqueued sync.Map // id → struct{}
	var nEnq, acks, lostClaims, dequeueErrs atomic.Int64
	n := newNemesis(t, c, seed, cfg.nemesis)
	wctx, wstop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	// The producer spreads its tasks over the nemesis's run.
	wg.Go(func() {
		every := cfg.duration / time.Duration(cfg.tasks+1)
		for j := 0; j < cfg.tasks && wctx.Err() == nil; j++ {
			for wctx.Err() == nil {
				ectx, cancel := context.WithTimeout(wctx, 5*time.Second)
				id, err := producer.Enqueue(ectx, []byte(fmt.Sprint(j)), queue.WithDedupID(fmt.Sprint("task-", j)))
				cancel()
				if err == nil {
					enqueued.Store(id, struct{}{})
					nEnq.Add(1)
					r.ops.Add(1)
					break
				}
				pause(wctx, 20*time.Millisecond)
			}
			pause(wctx, every)
		}
	})
	for i := range cfg.workers {
		rng := rand.New(rand.NewPCG(uint64(seed), uint64(200+i)))
		cli := keepers[i].Client()
		wg.Go(func() {
			for wctx.Err() == nil {
				task, err := queues[i].Dequeue(wctx, keepers[i])
				if err != nil {
					if wctx.Err() != nil {
						return
					}
					dequeueErrs.Add(1)
					pause(wctx, 20*time.Millisecond)
					continue
				}
				holding[i].Add(1)
				r.ops.Add(1)
				if queueWork(wctx, r, cli, task, rng, cfg, o) {
					acks.Add(1)
				} else {
					lostClaims.Add(1)
				}
				holding[i].Add(-1)
			}
		})
	}
	nctx, ncancel := context.WithTimeout(ctx, nemesisTime(c, cfg.duration))
	n.run(nctx)
	ncancel()
	// Drain: every enqueued task must get its result.
	if cfg.protected {
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		o.waitFor(dctx, func() bool { return nEnq.Load() == int64(cfg.tasks) && len(o.results) >= cfg.tasks })
		cancel()
	}
	wstop()
	wg.Wait()
	// Let the observer apply everything written so far: a marker written
	// now is seen after all of it.
	mctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	end, err := c.Admin().Put(mctx, base+"end", "")
	require.NoError(t, err)
	require.True(t, o.waitFor(mctx, func() bool { return o.lastRev >= end.Header.Revision }), "observer did not catch up")
	cancel()
	ostop()
	obs.Wait()

	o.mu.Lock()
	defer o.mu.Unlock()
	if cfg.protected {
		missing := 0
		enqueued.Range(func(k, _ any) bool {
			if _, ok := o.results[k.(string)]; !ok {
				missing++
				if missing <= 10 {
					st, err := producer.Status(ctx, k.(string))
					r.violate("task %s acknowledged by Enqueue has no result: status %+v, %v", k, st, err)
				}
			}
			return true
		})
		if missing > 10 {
			r.violate("... %d tasks without a result in all", missing)
		}
	}
	ambiguous := 0
	for id, tok := range o.ackRetriedLost {
		if o.results[id] == tok {
			ambiguous++
		}
	}
	if ambiguous > 0 {
		r.note("%d Acks failed in transit, were retried and answered ErrLost although the first one had committed", ambiguous)
	}
	dead, _ := producer.DeadLetters(ctx, 0)
	r.note("%d tasks enqueued, %d claims, %d acks, %d claims lost, %d results, %d dead letters, %d Dequeue errors, %d observer gaps",
		nEnq.Load(), o.claimed, acks.Load(), lostClaims.Load(), len(o.results), len(dead), dequeueErrs.Load(), o.gaps)
	if o.claimed == 0 {
		t.Errorf("no claim observed: the checker checked nothing")
	}
	return r, n
}

// queueWork processes one claimed task; it reports whether the task was
// acknowledged.
func queueWork(ctx context.Context, r *report, cli *clientv3.Client, task *queue.Task, rng *rand.Rand, cfg queueRun, o *queueObserver) bool {
	mark := fmt.Sprintf("claim-%d-end", task.Token())
	steps := 1 + rng.IntN(cfg.steps)
	wctx := task.Context()
	if !cfg.protected {
		wctx = context.WithoutCancel(ctx)
	}
	for s := range steps {
		if !pause(wctx, cfg.work.draw(rng)) {
			break
		}
		pctx, cancel := context.WithTimeout(wctx, 5*time.Second)
		var err error
		if cfg.protected {
			err = task.Progress(pctx, float64(s+1)/float64(steps+1), mark, nil)
		} else {
			_, err = cli.Put(pctx, o.rawProgPrefix+task.ID, mark)
		}
		cancel()
		if err == nil {
			r.ops.Add(1)
		} else if errors.Is(err, queue.ErrLost) {
			return false
		}
	}
	if ctx.Err() != nil {
		return false
	}
	result := clientv3.OpPut(o.resultPrefix+task.ID, strconv.FormatInt(task.Token(), 10))
	if !cfg.protected {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if _, err := cli.Do(actx, result); err != nil {
			return false
		}
		return task.Ack(actx) == nil
	}
	// An Ack that failed on a transient error may or may not have been
	// applied; Ack is idempotent, so it is retried until etcd answers.
	for retried := false; ctx.Err() == nil; retried = true {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := task.Ack(actx, result)
		cancel()
		switch {
		case err == nil:
			r.ops.Add(1)
			return true
		case errors.Is(err, queue.ErrLost), errors.Is(err, queue.ErrFinished):
			if retried {
				o.mu.Lock()
				o.ackRetriedLost[task.ID] = task.Token()
				o.mu.Unlock()
			}
			return false
		}
		pause(ctx, 20*time.Millisecond)
	}
	return false
}

func TestChaosQueue(t *testing.T) {
	s := seed(t)
	c := testcluster.New(t)
	r, n := runQueue(t, c, s, queueRun{
		workers: 3, tasks: 80, protected: true, work: span{5 * time.Millisecond, 60 * time.Millisecond}, steps: 4,
		nemesis: defaultNemesis(), duration: chaosDuration(6 * time.Second),
	})
	r.expectNone(t, n)
}

// TestChaosQueueCheckerCatchesStaleClaims runs workers that ignore their
// task's context and write progress and results without Guard: a worker
// cut off past its claim's expiry finishes a task another worker now holds.
func TestChaosQueueCheckerCatchesStaleClaims(t *testing.T) {
	s := seed(t)
	c := testcluster.New(t)
	cfg := defaultNemesis()
	cfg.kinds = nil
	cfg.cutGap = span{100 * time.Millisecond, 300 * time.Millisecond}
	cfg.holderAlways = true
	r, n := runQueue(t, c, s, queueRun{
		workers: 3, tasks: 8, protected: false, work: span{200 * time.Millisecond, 500 * time.Millisecond}, steps: 6,
		nemesis: cfg, duration: 5 * time.Second,
	})
	r.expectSome(t, n)
}
