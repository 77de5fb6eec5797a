package cron

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/election"
	"github.com/concordkit/concord/internal/retry"
	"github.com/concordkit/concord/internal/watch"
)

// maxDue bounds how many times of one job are enumerated at once.
const maxDue = 10000

// maxStaleDeletes bounds the commit records one claim deletes.
const maxStaleDeletes = 64

// lateSlack is how late a time may be and still count as due now, with any
// catch-up window (even zero).
const lateSlack = time.Second

// jobRun is a job's state during one term.
type jobRun struct {
	name string
	cur  atomic.Pointer[job] // the job as it is defined now (see def)
	// defRev is a defined job's definition's create revision (0: a job
	// added in code). Every write for the job is fenced by it, so that no
	// record of a removed job is written again after Remove deleted it.
	defRev int64
	defMod int64 // the mod revision of the definition in use
	// ctx is the runs' context: it ends with the term, or with the job's
	// removal (cause ErrRemoved).
	ctx     context.Context
	cancel  context.CancelCauseFunc
	publish bool // the loop writes the status once it computed the next time
	// recheck: the job just became runnable; a trigger left pending while
	// it was not is read and run (the loop's).
	recheck bool

	w        time.Time      // watermark: the latest scheduled time claimed
	attempt  int            // attempt of the watermark's claim
	claimRev int64          // mod revision of the claim key (0: absent)
	cursor   time.Time      // the latest time considered (claimed or passed over)
	dones    map[int64]bool // scheduled times with a commit record, as read on becoming leader
	paused   bool
	running  atomic.Int32

	// wmu serializes status and claim writes, each of which encodes the
	// status as it is when sent: the last write to land carries the latest
	// status. It protects w, attempt, claimRev, open, closed and stale once
	// the term's loop started runs.
	wmu  sync.Mutex
	open map[int64]int // claimed times (Unix nanoseconds) whose runs have not finished → attempt
	// closed holds the runs this term closed (time → attempt) whose removal
	// from the record in etcd is not known to have landed: a record read
	// back must not bring them back. Emptied by every write of the record,
	// which is built without them.
	closed map[int64]int
	stale  []staleRecord // commit records to delete with a later claim

	mu     sync.Mutex // protects status, next, note (written by the loop, read by runs)
	status JobStatus
	next   time.Time
	// note is a job added in code's problem: a definition of the same name
	// exists, and is ignored.
	note string
}

// def returns the job as defined now. A definition's update replaces it:
// a run uses the one it started with.
func (j *jobRun) def() *job { return j.cur.Load() }

// staleRecord is a commit record that no rerun needs once its time is no
// longer open. A claim deletes it in the same transaction that writes the
// open runs without its time, never while the time may be open in etcd: a
// rerun of an open time without its commit record would commit again.
type staleRecord struct {
	key     string
	t       int64     // the time, Unix nanoseconds
	trigger bool      // a trigger's record: triggers are never open
	since   time.Time // when this term committed it (zero: an earlier term's)
}

// commitHold is how long a commit record of this term is kept after its run
// finished: a try of Commit that etcd applies late (its reply lost, the
// next try refused because the first had applied) must still find it.
// Records of earlier terms go at once: their Commits fail the term guard.
const commitHold = time.Minute

type trigger struct {
	job *jobRun
	at  time.Time
	rev int64 // mod revision of the trigger key
}

type retryReq struct {
	job     *jobRun
	t       time.Time
	attempt int
}

// leader runs the jobs during one term.
type leader struct {
	s        *Scheduler
	t        *election.Term
	static   []*job
	handlers map[string]handler
	jobs     map[string]*jobRun // the loop's; runs hold their own *jobRun
	order    []*jobRun

	wg      sync.WaitGroup // joins run goroutines
	retries chan retryReq
	// runCtx is the runs' context: it ends with the term, or when the loop
	// ended (at once, or after the drain of a graceful stop).
	runCtx context.Context
	// loopCtx ends with the loop: a retry waiting for its backoff gives up
	// then, as nothing would dispatch it.
	loopCtx context.Context
}

var errTermGone = errors.New("cron: leadership ended")

func newLeader(s *Scheduler, t *election.Term, jobs []*job, handlers map[string]handler) *leader {
	return &leader{s: s, t: t, static: jobs, handlers: handlers, jobs: map[string]*jobRun{},
		retries: make(chan retryReq, len(jobs)+16)}
}

// addRun adds j to the jobs of the term. Called by the loop, once runCtx
// is set.
func (l *leader) addRun(j *job, defRev, defMod int64) *jobRun {
	jr := &jobRun{name: j.name, defRev: defRev, defMod: defMod, publish: true}
	jr.cur.Store(j)
	jr.ctx, jr.cancel = context.WithCancelCause(l.runCtx)
	l.jobs[j.name] = jr
	l.order = append(l.order, jr)
	return jr
}

// removeRun drops j from the jobs of the term and cancels its runs with
// cause. Its runs' writes already fail: the definition they were fenced by
// is gone.
func (l *leader) removeRun(j *jobRun, cause error) {
	delete(l.jobs, j.name)
	for i, o := range l.order {
		if o == j {
			l.order = append(l.order[:i], l.order[i+1:]...)
			break
		}
	}
	j.cancel(cause)
}

// guard returns the comparisons a write for j is fenced by: the term and,
// for a defined job, its definition.
func (l *leader) guard(j *jobRun) []clientv3.Cmp {
	cmps := l.t.Guard()
	if j.defRev != 0 {
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(l.s.keys.def(j.name)), "=", j.defRev))
	}
	return cmps
}

// defGone reports whether the read of j's definition among rs (the second
// of a failed transaction's reads, see claimReads) shows it removed or
// replaced.
func (j *jobRun) defGone(rs []*etcdserverpb.ResponseOp) bool {
	if j.defRev == 0 || len(rs) < 2 {
		return false
	}
	kvs := rs[1].GetResponseRange().Kvs
	return len(kvs) == 0 || kvs[0].CreateRevision != j.defRev
}

func (l *leader) cli() *clientv3.Client { return l.s.k.Client() }

// run schedules until ctx ends (the term was lost or the scheduler stops).
// It returns nil when a guarded write finds the term gone, so the election
// loop campaigns again; an error only for corrupt records.
func (l *leader) run(ctx context.Context) error {
	// Runs stand on the term, not on ctx: when ctx ends because the
	// scheduler stops, they get the drain (WithDrain) first.
	runCtx, cancelRuns := context.WithCancelCause(context.WithoutCancel(ctx))
	defer context.AfterFunc(l.t.Context(), func() { cancelRuns(context.Cause(l.t.Context())) })()
	l.runCtx = runCtx
	for _, j := range l.static {
		l.addRun(j, 0, 0)
	}
	outer := ctx
	ctx, cancel := context.WithCancelCause(ctx)
	l.loopCtx = ctx
	err := l.loop(ctx)
	cancel(fmt.Errorf("%w: scheduler loop ended: %v", election.ErrLost, err))
	// Graceful: the scheduler stops (Run's ctx ended) while the term
	// stands; not an error of the loop's own.
	if graceful := outer.Err() != nil && l.t.Err() == nil && errors.Is(err, context.Cause(outer)); graceful && l.s.opts.drain > 0 {
		l.drain(l.s.opts.drain)
	}
	// Runs must not outlive the loop that claimed them, but for the drain.
	cancelRuns(fmt.Errorf("%w: scheduler loop ended: %v", election.ErrLost, err))
	l.wg.Wait()
	if errors.Is(err, errTermGone) {
		return nil
	}
	return err
}

// drain waits for the runs in progress, for up to d or until the term
// ends.
func (l *leader) drain(d time.Duration) {
	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	case <-l.runCtx.Done():
	}
}

func (l *leader) loop(ctx context.Context) error {
	rev, err := l.begin(ctx)
	if err != nil {
		return err
	}
	w := l.watchCtl(ctx, rev)
	defer func() { w.Stop() }()
	wch := w.C
	var rewatch <-chan time.Time
	bo := retry.WatchPolicy.New() // before reading the controls again after a lost watch
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := time.Now()
		if err := l.fireAll(ctx, now); err != nil {
			return err
		}
		l.publishChanged(ctx)
		timer.Reset(time.Until(l.nextFire(now)))

		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-timer.C:
		case r := <-l.retries:
			if err := l.dispatch(ctx, r.job, r.t, r.attempt, retryRun); err != nil {
				return err
			}
		case <-rewatch:
			rewatch = nil
			nw, err := l.reloadCtl(ctx)
			switch {
			case err != nil:
				return err
			case nw == nil:
				rewatch = time.After(bo.Next())
				continue
			}
			bo.Reset()
			w.Stop()
			w, wch = nw, nw.C
		case wr, ok := <-wch:
			if !ok {
				if ctx.Err() != nil {
					return context.Cause(ctx)
				}
				// internal/watch resumes a broken watch by itself; it ends
				// when its history was compacted (or etcd refuses it).
				// Read the controls afresh, then watch from there.
				wch = nil
				rewatch = time.After(bo.Next())
				continue
			}
			for _, ev := range wr.Events {
				if err := l.onEvent(ctx, ev); err != nil {
					return err
				}
			}
			if err := l.recheckTriggers(ctx); err != nil {
				return err
			}
		}
	}
}

// begin starts a term: it loads the jobs' records, reruns the runs the last
// leader left open, runs the pending triggers and publishes every job's
// next time. It returns the revision the loaded records were read at.
func (l *leader) begin(ctx context.Context) (int64, error) {
	var triggers []trigger
	rev, err := retryRead(ctx, l.try(), func(tctx context.Context) (int64, error) {
		var err error
		var rev int64
		rev, triggers, err = l.load(tctx)
		return rev, err
	})
	if err != nil {
		return 0, err
	}
	now := time.Now()
	for _, j := range l.order {
		if j.claimRev == 0 || j.paused {
			j.cursor = now // nothing to catch up: start from now
		} else {
			j.cursor = j.w
		}
	}
	for _, j := range l.order {
		if !j.def().runnable() {
			continue // its open runs wait for a leader that can run it
		}
		for _, o := range j.takeOver(now) {
			if err := l.dispatch(ctx, j, time.Unix(0, o.Time), o.Attempt+1, rerunRun); err != nil {
				return 0, err
			}
		}
	}
	for _, tr := range triggers {
		if err := l.dispatchTrigger(ctx, tr); err != nil {
			return 0, err
		}
	}
	// Publish every job's next time now, so Status shows it before the
	// job's first run (a daily job would otherwise show nothing all day).
	if err := l.fireAll(ctx, time.Now()); err != nil {
		return 0, err
	}
	l.publishChanged(ctx)
	return rev, nil
}

// nextFire is when the next unpaused job is due, or an hour from now if
// none is.
func (l *leader) nextFire(now time.Time) time.Time {
	var next time.Time
	for _, j := range l.order {
		if !j.paused && !j.next.IsZero() && (next.IsZero() || j.next.Before(next)) {
			next = j.next
		}
	}
	if next.IsZero() {
		next = now.Add(time.Hour)
	}
	return next
}

// reloadCtl reads the control records afresh after the control watch
// ended, runs the triggers it finds, and returns a watch from there. After
// a transient failure it returns no watch and no error: try again later.
func (l *leader) reloadCtl(ctx context.Context) (*watch.Watch, error) {
	tctx, cancel := context.WithTimeout(ctx, l.try())
	r, trs, err := l.loadCtl(tctx)
	cancel()
	if err != nil {
		if errors.Is(err, ErrCorrupt) {
			return nil, err
		}
		return nil, nil
	}
	for _, tr := range trs {
		if err := l.dispatchTrigger(ctx, tr); err != nil {
			return nil, err
		}
	}
	return l.watchCtl(ctx, r), nil
}

// try bounds one try of a request that is retried on an unknown outcome:
// about an election timeout, not the TTL, so that a request sent to an etcd
// leader that died or hangs is sent again to the next one soon after it is
// elected (retry.Attempt); the retries are bounded by ctx and the term.
func (l *leader) try() time.Duration { return retry.Attempt(l.s.k.TTL()) }

func (l *leader) watchCtl(ctx context.Context, rev int64) *watch.Watch {
	return watch.Open(ctx, l.cli(), l.s.keys.ctl(), watch.Config{From: rev + 1,
		Options: []clientv3.OpOption{clientv3.WithRange(l.s.keys.followEnd())}})
}

// retryRead retries a read with backoff until it succeeds, fails for good,
// or ctx ends. Each try is bounded by try, like claims and Commits: a read
// stuck on a member that lost the Raft leadership waits for etcd's own
// request timeout, while another member could answer at once.
func retryRead(ctx context.Context, try time.Duration, fn func(context.Context) (int64, error)) (int64, error) {
	bo := retry.RequestPolicy.New()
	tr := newTries(try)
	for {
		tctx, cancel := tr.next(ctx)
		rev, err := fn(tctx)
		tr.ended(err)
		cancel()
		if err == nil {
			return rev, nil
		}
		if ctx.Err() != nil {
			return 0, context.Cause(ctx)
		}
		if errors.Is(err, ErrCorrupt) || !retry.Unknown(err) {
			return 0, err
		}
		if werr := bo.Wait(ctx); werr != nil {
			return 0, werr
		}
	}
}

const (
	freshRun runKind = iota // a scheduled time, first attempt
	retryRun                // fn failed and WithRetries asks for another attempt
	rerunRun                // the run was interrupted by the end of a term (WithRerun)
)

// call runs fn, turning a panic into an error so one job cannot take the
// scheduler down.
func call(ctx context.Context, fn Func, r Run) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("cron: job %q panicked: %v", r.Job, p)
		}
	}()
	return fn(ctx, r)
}
