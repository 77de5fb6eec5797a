package cron

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

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
	*job
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

	mu     sync.Mutex // protects status, next (written by the loop, read by runs)
	status JobStatus
	next   time.Time
}

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
	s     *Scheduler
	t     *election.Term
	jobs  map[string]*jobRun
	order []*jobRun

	wg      sync.WaitGroup // joins run goroutines
	retries chan retryReq
}

var errTermGone = errors.New("cron: leadership ended")

func newLeader(s *Scheduler, t *election.Term, jobs []*job) *leader {
	l := &leader{s: s, t: t, jobs: map[string]*jobRun{}, retries: make(chan retryReq, len(jobs)+1)}
	for _, j := range jobs {
		jr := &jobRun{job: j}
		l.jobs[j.name] = jr
		l.order = append(l.order, jr)
	}
	return l
}

func (l *leader) cli() *clientv3.Client { return l.s.k.Client() }

// run schedules until ctx ends (the term was lost or the scheduler stops).
// It returns nil when a guarded write finds the term gone, so the election
// loop campaigns again; an error only for corrupt records.
func (l *leader) run(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	err := l.loop(ctx)
	// Runs must not outlive the loop that claimed them.
	cancel(fmt.Errorf("%w: scheduler loop ended: %v", election.ErrLost, err))
	l.wg.Wait()
	if errors.Is(err, errTermGone) {
		return nil
	}
	return err
}

func (l *leader) loop(ctx context.Context) error {
	var triggers []trigger
	rev, err := retryRead(ctx, l.try(), func(tctx context.Context) (int64, error) {
		var err error
		var rev int64
		rev, triggers, err = l.load(tctx)
		return rev, err
	})
	if err != nil {
		return err
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
		for _, o := range j.takeOver(now) {
			if err := l.dispatch(ctx, j, time.Unix(0, o.Time), o.Attempt+1, rerunRun); err != nil {
				return err
			}
		}
	}
	for _, tr := range triggers {
		if err := l.dispatchTrigger(ctx, tr); err != nil {
			return err
		}
	}

	// Publish every job's next time now, so Status shows it before the
	// job's first run (a daily job would otherwise show nothing all day).
	if err := l.fireAll(ctx, time.Now()); err != nil {
		return err
	}
	l.publishNext(ctx)

	w := l.watchCtl(ctx, rev)
	defer func() { w.Stop() }()
	wch := w.C
	var rewatch <-chan time.Time
	delay := 20 * time.Millisecond // before reading the controls again after a lost watch
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := time.Now()
		if err := l.fireAll(ctx, now); err != nil {
			return err
		}
		var next time.Time
		for _, j := range l.order {
			if !j.paused && !j.next.IsZero() && (next.IsZero() || j.next.Before(next)) {
				next = j.next
			}
		}
		if next.IsZero() {
			next = now.Add(time.Hour)
		}
		timer.Reset(time.Until(next))

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
			tctx, cancel := context.WithTimeout(ctx, l.try())
			r, trs, err := l.loadCtl(tctx)
			cancel()
			if err != nil {
				if errors.Is(err, ErrCorrupt) {
					return err
				}
				rewatch = time.After(delay)
				delay = min(delay*2, time.Second)
				continue
			}
			delay = 20 * time.Millisecond
			for _, tr := range trs {
				if err := l.dispatchTrigger(ctx, tr); err != nil {
					return err
				}
			}
			w.Stop()
			w = l.watchCtl(ctx, r)
			wch = w.C
		case wr, ok := <-wch:
			if !ok {
				if ctx.Err() != nil {
					return context.Cause(ctx)
				}
				// internal/watch resumes a broken watch by itself; it ends
				// when its history was compacted (or etcd refuses it).
				// Read the controls afresh, then watch from there.
				wch = nil
				rewatch = time.After(delay)
				delay = min(delay*2, time.Second)
				continue
			}
			for _, ev := range wr.Events {
				if err := l.onCtl(ctx, ev); err != nil {
					return err
				}
			}
		}
	}
}

// try bounds one try of a request that is retried on an unknown outcome:
// about an election timeout, not the TTL, so that a request sent to an etcd
// leader that died or hangs is sent again to the next one soon after it is
// elected (retry.Attempt); the retries are bounded by ctx and the term.
func (l *leader) try() time.Duration { return retry.Attempt(l.s.k.TTL()) }

func (l *leader) watchCtl(ctx context.Context, rev int64) *watch.Watch {
	return watch.Open(ctx, l.cli(), l.s.keys.ctl(), watch.Config{From: rev + 1, Options: []clientv3.OpOption{clientv3.WithPrefix()}})
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

// load reads claims, statuses and controls of every job.
func (l *leader) load(ctx context.Context) (int64, []trigger, error) {
	resp, err := l.cli().Get(ctx, l.s.keys.prefix, clientv3.WithPrefix())
	if err != nil {
		return 0, nil, fmt.Errorf("cron: load: %w", err)
	}
	var triggers []trigger
	type doneAt struct {
		j   *jobRun
		t   time.Time
		key string
	}
	var dones []doneAt
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		switch {
		case strings.HasPrefix(key, l.s.keys.prefix+"claim/"):
			j := l.jobs[strings.TrimPrefix(key, l.s.keys.prefix+"claim/")]
			if j == nil {
				continue // a job this replica does not run
			}
			c, err := decodeClaim(kv.Value)
			if err != nil {
				return 0, nil, fmt.Errorf("%w (key %s)", err, key)
			}
			j.adopt(c, kv.ModRevision)
		case strings.HasPrefix(key, l.s.keys.prefix+"done/"):
			job, t, trig, ok := l.s.keys.parseDone(key)
			if !ok {
				return 0, nil, fmt.Errorf("%w: unexpected key %s", ErrCorrupt, key)
			}
			if _, err := decodeDone(kv.Value); err != nil {
				return 0, nil, fmt.Errorf("%w (key %s)", err, key)
			}
			if j := l.jobs[job]; j != nil {
				if trig {
					// A trigger is never run again: its record is stale.
					j.stale = append(j.stale, staleRecord{key: key, t: t.UnixNano(), trigger: true})
				} else {
					dones = append(dones, doneAt{j, t, key})
				}
			}
		case strings.HasPrefix(key, l.s.keys.prefix+"status/"):
			j := l.jobs[strings.TrimPrefix(key, l.s.keys.prefix+"status/")]
			if j == nil {
				continue
			}
			st, err := decodeStatus(kv.Value)
			if err != nil {
				return 0, nil, fmt.Errorf("%w (key %s)", err, key)
			}
			j.status = st
		case strings.HasPrefix(key, l.s.keys.ctl()):
			tr, err := l.ctlRecord(kv)
			if err != nil {
				return 0, nil, err
			}
			if tr != nil {
				triggers = append(triggers, *tr)
			}
		}
	}
	// Commit records sort after the claims; match them once all are read.
	for _, d := range dones {
		if _, open := d.j.open[d.t.UnixNano()]; open {
			if d.j.dones == nil {
				d.j.dones = map[int64]bool{}
			}
			d.j.dones[d.t.UnixNano()] = true
		}
		// Either way the record has done its work once this term decided.
		d.j.stale = append(d.j.stale, staleRecord{key: d.key, t: d.t.UnixNano()})
	}
	return resp.Header.Revision, triggers, nil
}

// adopt takes the claim record c, read at mod revision rev, as j's state.
func (j *jobRun) adopt(c claim, rev int64) {
	j.w, j.attempt, j.claimRev = time.Unix(0, c.Time), c.Attempt, rev
	j.open = make(map[int64]int, len(c.Open))
	for _, o := range c.Open {
		if a, ok := j.closed[o.Time]; ok && a >= o.Attempt {
			continue // closed here; the write saying so may not have landed
		}
		j.open[o.Time] = o.Attempt
	}
}

// close marks the open run (t, attempt) closed. Called with wmu held.
func (j *jobRun) close(t int64, attempt int) {
	delete(j.open, t)
	if j.closed == nil {
		j.closed = map[int64]int{}
	}
	j.closed[t] = max(j.closed[t], attempt)
}

// takeOver decides, on becoming leader, what becomes of the runs the
// previous terms left open (claimed, and fn had not returned when the term
// ended): with WithRerun, those within the catch-up window that did not
// commit and have attempts left run again, oldest first; the others are
// forgotten with the next claim.
func (j *jobRun) takeOver(now time.Time) []openRun {
	var rerun []openRun
	for t, a := range j.open {
		if j.opts.reruns == 0 || j.paused || j.dones[t] ||
			a >= 1+j.opts.retries+j.opts.reruns || now.Sub(time.Unix(0, t)) > j.opts.window {
			j.close(t, a)
			continue
		}
		rerun = append(rerun, openRun{t, a})
	}
	sort.Slice(rerun, func(a, b int) bool { return rerun[a].Time < rerun[b].Time })
	return rerun
}

// loadCtl reads the controls afresh (after a lost watch).
func (l *leader) loadCtl(ctx context.Context) (int64, []trigger, error) {
	resp, err := l.cli().Get(ctx, l.s.keys.ctl(), clientv3.WithPrefix())
	if err != nil {
		return 0, nil, err
	}
	paused := map[*jobRun]bool{}
	var triggers []trigger
	for _, kv := range resp.Kvs {
		job, what, ok := l.s.keys.parseCtl(string(kv.Key))
		if ok && what == "paused" && l.jobs[job] != nil {
			paused[l.jobs[job]] = true
		}
		tr, err := l.ctlRecord(kv)
		if err != nil {
			return 0, nil, err
		}
		if tr != nil {
			triggers = append(triggers, *tr)
		}
	}
	for _, j := range l.order {
		l.setPaused(j, paused[j])
	}
	return resp.Header.Revision, triggers, nil
}

// ctlRecord applies a paused key and returns a pending trigger.
func (l *leader) ctlRecord(kv *mvccpb.KeyValue) (*trigger, error) {
	job, what, ok := l.s.keys.parseCtl(string(kv.Key))
	if !ok {
		return nil, fmt.Errorf("%w: unexpected key %s", ErrCorrupt, kv.Key)
	}
	c, err := decodeControl(kv.Value)
	if err != nil {
		return nil, fmt.Errorf("%w (key %s)", err, kv.Key)
	}
	j := l.jobs[job]
	if j == nil {
		return nil, nil
	}
	if what == "paused" {
		l.setPaused(j, true)
		return nil, nil
	}
	return &trigger{job: j, at: time.Unix(0, c.At), rev: kv.ModRevision}, nil
}

func (l *leader) setPaused(j *jobRun, paused bool) {
	if j.paused && !paused {
		// Times that passed while paused are not caught up.
		j.cursor = time.Now()
		j.setNext(time.Time{})
	}
	j.paused = paused
}

func (l *leader) onCtl(ctx context.Context, ev *clientv3.Event) error {
	job, what, ok := l.s.keys.parseCtl(string(ev.Kv.Key))
	if !ok {
		return fmt.Errorf("%w: unexpected key %s", ErrCorrupt, ev.Kv.Key)
	}
	j := l.jobs[job]
	if j == nil {
		return nil
	}
	if ev.Type == clientv3.EventTypeDelete {
		if what == "paused" {
			l.setPaused(j, false)
		}
		return nil
	}
	tr, err := l.ctlRecord(ev.Kv)
	if err != nil || tr == nil {
		return err
	}
	return l.dispatchTrigger(ctx, *tr)
}

// publishNext writes each job's status with its next scheduled time, fenced
// by the term. Best effort: a failure only delays what Status shows until
// the job runs.
func (l *leader) publishNext(ctx context.Context) {
	for _, j := range l.order {
		j.mu.Lock()
		j.status.Job, j.status.Spec, j.status.Next, j.status.Paused, j.status.Pending = j.name, j.spec, j.next, false, false
		j.mu.Unlock()
		l.writeStatus(ctx, j, l.t.Guard())
	}
}

// writeStatus writes j's current status, fenced by cmps. The write is not
// canceled with ctx but bounded by the TTL: a canceled write may still be
// applied after the next one, and an older status would then replace a
// newer one.
func (l *leader) writeStatus(ctx context.Context, j *jobRun, cmps []clientv3.Cmp) {
	j.wmu.Lock()
	defer j.wmu.Unlock()
	val, err := j.statusValue()
	if err != nil {
		return
	}
	wctx, cancel := l.detached(ctx)
	defer cancel()
	_, _ = l.cli().Txn(wctx).If(cmps...).Then(clientv3.OpPut(l.s.keys.status(j.name), val)).Commit()
}

// detached returns the context of a fenced write that must not end with ctx
// (see writeStatus): bounded by the TTL, and ended once the term is lost,
// whose guard the write could then never pass. Without that, a scheduler
// stopping on a client cut off from etcd would wait out the TTL for each
// such write.
func (l *leader) detached(ctx context.Context) (context.Context, context.CancelFunc) {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.s.k.TTL())
	stop := context.AfterFunc(l.t.Context(), func() {
		if errors.Is(l.t.Err(), election.ErrLost) {
			cancel()
		}
	})
	return wctx, func() {
		stop()
		cancel()
	}
}

// fireAll fires the due times of every job. Jobs are independent (each has
// its own claim key), so their claims go out concurrently: ten jobs due in
// the same second all start one round trip after their time, not ten.
func (l *leader) fireAll(ctx context.Context, now time.Time) error {
	if len(l.order) == 1 {
		return l.fireDue(ctx, l.order[0], now)
	}
	errs := make([]error, len(l.order))
	var wg sync.WaitGroup
	for i, j := range l.order {
		if j.paused || j.next.After(now) {
			// Not due: advance its cursor here, without a goroutine.
			errs[i] = l.fireDue(ctx, j, now)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = l.fireDue(ctx, j, now)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (j *jobRun) setNext(t time.Time) {
	j.mu.Lock()
	j.next = t
	j.mu.Unlock()
}

// fireDue runs the times of j that are due at now, per its catch-up policy.
func (l *leader) fireDue(ctx context.Context, j *jobRun, now time.Time) error {
	var due []time.Time
	from := j.cursor
	// The timer and the claim make a time a little late at best; within
	// lateSlack it is due now, not missed, whatever the window.
	lo := now.Add(-max(j.opts.window, lateSlack))
	if from.Before(lo) {
		// Only times within the window count; start just before it.
		from = lo.Add(-time.Nanosecond)
	}
	t := j.sched.Next(from)
	for ; !t.IsZero() && !t.After(now) && len(due) < maxDue; t = j.sched.Next(t) {
		due = append(due, t)
	}
	j.setNext(t)
	if len(due) == 0 {
		return nil
	}
	j.cursor = due[len(due)-1]
	if j.paused {
		return nil
	}
	if j.opts.catchUp == CatchUpLatest {
		due = due[len(due)-1:]
	}
	for _, t := range due {
		if err := l.dispatch(ctx, j, t, 1, freshRun); err != nil {
			return err
		}
	}
	return nil
}

// runKind says why a time is dispatched.
type runKind int

const (
	freshRun runKind = iota // a scheduled time, first attempt
	retryRun                // fn failed and WithRetries asks for another attempt
	rerunRun                // the run was interrupted by the end of a term (WithRerun)
)

// claimable reports whether (t, attempt) of kind may be claimed given j's
// claim state: a fresh time only after the watermark (never twice), a retry
// only of the watermark's time and attempt (a later time makes it moot), a
// rerun only of an open run's next attempt. Called with wmu held.
func (j *jobRun) claimable(t time.Time, attempt int, kind runKind) bool {
	switch kind {
	case retryRun:
		return j.w.Equal(t) && j.attempt == attempt-1
	case rerunRun:
		a, ok := j.open[t.UnixNano()]
		return ok && a == attempt-1
	}
	return j.w.IsZero() || t.After(j.w)
}

// dispatch claims (j, t, attempt) and starts the run, or records a skip.
func (l *leader) dispatch(ctx context.Context, j *jobRun, t time.Time, attempt int, kind runKind) error {
	j.wmu.Lock()
	ok := j.claimable(t, attempt, kind)
	j.wmu.Unlock()
	if !ok {
		return nil
	}
	skip := j.opts.overlap == SkipIfRunning && j.running.Load() > 0
	r := Run{Job: j.name, Time: t, Token: l.t.Token(), Attempt: attempt, term: l.t}
	r.commit = l.newCommit(j, r)
	ok, err := l.claim(ctx, j, r, kind, skip)
	if err != nil || !ok {
		return err
	}
	l.start(ctx, j, r, skip)
	return nil
}

func (l *leader) dispatchTrigger(ctx context.Context, tr trigger) error {
	j := tr.job
	skip := j.opts.overlap == SkipIfRunning && j.running.Load() > 0
	r := Run{Job: j.name, Time: tr.at, Token: l.t.Token(), Attempt: 1, Trigger: true, term: l.t}
	r.commit = l.newCommit(j, r)
	ok, err := l.claimTrigger(ctx, j, r, tr.rev, skip)
	if err != nil || !ok {
		return err
	}
	l.start(ctx, j, r, skip)
	return nil
}

func (l *leader) start(ctx context.Context, j *jobRun, r Run, skip bool) {
	if skip {
		l.s.runs.Add(ctx, 1, metric.WithAttributes(attribute.String("cron.job", j.name), attribute.String("cron.outcome", string(Skipped))))
		return
	}
	j.running.Add(1)
	l.wg.Add(1)
	go l.execute(ctx, j, r)
}

// startStatus records a run that starts now in j's status.
func (j *jobRun) startStatus(r Run, skip bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	st := j.status
	st.Job, st.Spec = j.name, j.spec
	st.LastTime, st.Start, st.Token, st.Attempt, st.Trigger = r.Time, time.Now(), r.Token, r.Attempt, r.Trigger
	st.Outcome, st.Error, st.Duration = Running, "", 0
	if skip {
		st.Outcome = Skipped
	}
	st.Next, st.Paused, st.Pending = j.next, false, false
	j.status = st
}

// statusValue encodes j's current status.
func (j *jobRun) statusValue() (string, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return encode(j.status)
}

// claim writes the claim of (j, r.Time, r.Attempt), fenced by the term and
// by the claim key's mod revision, so that no time is claimed twice: a
// fresh time moves the watermark, a retry or rerun bumps the attempt of its
// time; a run that starts is listed as open until it finishes. The same
// transaction writes the status (running, or skipped) and deletes stale
// commit records. An unknown outcome is settled by reading the claim back.
// It reports false when the time turned out to be claimed already.
func (l *leader) claim(ctx context.Context, j *jobRun, r Run, kind runKind, skip bool) (bool, error) {
	j.startStatus(r, skip)
	j.wmu.Lock()
	defer j.wmu.Unlock()
	st, err := j.statusValue()
	if err != nil {
		return false, err
	}
	key := l.s.keys.claim(j.name)
	at := time.Now().UnixNano()
	bo := retry.RequestPolicy.New()
	tr := newTries(l.try())
	// adopted takes a claim record read back, reporting whether it is one
	// of this call's own writes whose reply was lost: only this term writes
	// its token, and it claims (r.Time, r.Attempt) once.
	adopted := func(c claim, rev int64, deleted []staleRecord) bool {
		j.adopt(c, rev)
		ours := c.Token == r.Token
		if skip {
			ours = ours && c.Time == r.Time.UnixNano() && c.Attempt == r.Attempt
		} else {
			ours = ours && j.open[r.Time.UnixNano()] == r.Attempt
		}
		if ours {
			j.dropStale(deleted)
			j.closed = nil
		}
		return ours
	}
	for {
		if !j.claimable(r.Time, r.Attempt, kind) {
			return false, nil
		}
		c := j.claimWith(r, skip, at)
		rec, err := encode(c)
		if err != nil {
			return false, err
		}
		ops := []clientv3.Op{clientv3.OpPut(key, rec), clientv3.OpPut(l.s.keys.status(j.name), st)}
		// Stale commit records go a batch at a time, well within etcd's
		// limit on operations per transaction, and only those whose time
		// this write leaves out of the open runs.
		open := make(map[int64]bool, len(c.Open))
		for _, o := range c.Open {
			open[o.Time] = true
		}
		var deleted []staleRecord
		for _, sr := range j.stale {
			if len(deleted) == maxStaleDeletes {
				break
			}
			if (sr.trigger || !open[sr.t]) && (sr.since.IsZero() || time.Since(sr.since) >= commitHold) {
				deleted = append(deleted, sr)
				ops = append(ops, clientv3.OpDelete(sr.key))
			}
		}
		cmps := append(l.t.Guard(), clientv3.Compare(clientv3.ModRevision(key), "=", j.claimRev))
		// Each try is bounded, as in Commit: the fence on the claim's mod
		// revision and the read-back below settle a try applied late.
		tctx, cancel := tr.next(ctx)
		resp, err := l.cli().Txn(tctx).If(cmps...).Then(ops...).Else(clientv3.OpGet(key)).Commit()
		tr.ended(err)
		cancel()
		if err == nil && resp.Succeeded {
			j.adopt(c, resp.Header.Revision)
			j.dropStale(deleted)
			j.closed = nil // the record just written was built without them
			return true, nil
		}
		if err == nil {
			if errors.Is(l.t.Err(), election.ErrLost) || !l.termHeld(ctx) {
				return false, errTermGone
			}
			// The claim moved under us: adopt it (the loop checks again
			// whether r may still be claimed). Only a leader writes claims,
			// so this is a foreign writer or our own write whose reply was
			// lost.
			kvs := resp.Responses[0].GetResponseRange().Kvs
			if len(kvs) == 0 {
				j.claimRev = 0
				continue
			}
			c, derr := decodeClaim(kvs[0].Value)
			if derr != nil {
				return false, fmt.Errorf("%w (key %s)", derr, key)
			}
			if adopted(c, kvs[0].ModRevision, deleted) {
				return true, nil
			}
			continue
		}
		if ctx.Err() != nil {
			return false, context.Cause(ctx)
		}
		if !retry.Unknown(err) {
			return false, fmt.Errorf("cron: claim %s: %w", key, err)
		}
		// Unknown outcome: read the claim back.
		if werr := bo.Wait(ctx); werr != nil {
			return false, werr
		}
		tctx, cancel = tr.next(ctx)
		g, gerr := l.cli().Get(tctx, key)
		tr.ended(gerr)
		cancel()
		if gerr != nil {
			continue
		}
		if len(g.Kvs) == 0 {
			j.claimRev = 0
			continue
		}
		c, derr := decodeClaim(g.Kvs[0].Value)
		if derr != nil {
			return false, fmt.Errorf("%w (key %s)", derr, key)
		}
		if adopted(c, g.Kvs[0].ModRevision, deleted) {
			return true, nil
		}
	}
}

// dropStale forgets the stale records a claim deleted. Called with wmu held.
func (j *jobRun) dropStale(deleted []staleRecord) {
	if len(deleted) == 0 {
		return
	}
	gone := make(map[string]bool, len(deleted))
	for _, sr := range deleted {
		gone[sr.key] = true
	}
	kept := j.stale[:0]
	for _, sr := range j.stale {
		if !gone[sr.key] {
			kept = append(kept, sr)
		}
	}
	j.stale = kept
}

// claimWith returns j's claim record with r claimed at at. Called with wmu
// held.
func (j *jobRun) claimWith(r Run, skip bool, at int64) claim {
	w, attempt := j.w, j.attempt
	if w.IsZero() || r.Time.After(w) {
		w, attempt = r.Time, r.Attempt
	} else if r.Time.Equal(w) {
		attempt = max(attempt, r.Attempt)
	}
	c := claim{Time: w.UnixNano(), Token: r.Token, Attempt: attempt, At: at}
	for t, a := range j.open {
		if t != r.Time.UnixNano() {
			c.Open = append(c.Open, openRun{t, a})
		}
	}
	if !skip {
		c.Open = append(c.Open, openRun{r.Time.UnixNano(), r.Attempt})
	}
	sort.Slice(c.Open, func(a, b int) bool { return c.Open[a].Time < c.Open[b].Time })
	if len(c.Open) > maxOpen {
		c.Open = c.Open[len(c.Open)-maxOpen:]
	}
	return c
}

// recordWithout returns j's claim record as it stands, less the open run at
// time t. Called with wmu held.
func (j *jobRun) recordWithout(t int64, token int64) claim {
	c := claim{Time: j.w.UnixNano(), Token: token, Attempt: j.attempt, At: time.Now().UnixNano()}
	for ot, a := range j.open {
		if ot != t {
			c.Open = append(c.Open, openRun{ot, a})
		}
	}
	sort.Slice(c.Open, func(a, b int) bool { return c.Open[a].Time < c.Open[b].Time })
	return c
}

// finish records the end of run r: its status and, unless the run was
// interrupted (its context ended before fn returned, and it did not
// commit), its removal from the open runs, so that no later leader reruns
// it. Fenced by the term, and best effort: if the term is gone the write is
// dropped, the run stays open, and the next leader decides (WithRerun). The
// write is not canceled with ctx but bounded by the TTL and the term (see
// detached).
//
// The run's commit record is not deleted here but with a later claim: a try
// of Commit that etcd applies late must still find it.
func (l *leader) finish(ctx context.Context, j *jobRun, r Run, interrupted bool) {
	j.wmu.Lock()
	defer j.wmu.Unlock()
	val, err := j.statusValue()
	if err != nil {
		return
	}
	committed := r.commit != nil && r.commit.committed.Load()
	if committed {
		j.stale = append(j.stale, staleRecord{key: r.commit.key, t: r.Time.UnixNano(), trigger: r.Trigger, since: time.Now()})
	}
	wctx, cancel := l.detached(ctx)
	defer cancel()
	t := r.Time.UnixNano()
	key := l.s.keys.claim(j.name)
	for range 3 {
		cmps := r.Guard()
		ops := []clientv3.Op{clientv3.OpPut(l.s.keys.status(j.name), val)}
		a, open := j.open[t]
		closing := open && !r.Trigger && a == r.Attempt && j.claimRev != 0 && (committed || !interrupted)
		if closing {
			rec, err := encode(j.recordWithout(t, r.Token))
			if err != nil {
				return
			}
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(key), "=", j.claimRev))
			ops = append(ops, clientv3.OpPut(key, rec))
		}
		resp, err := l.cli().Txn(wctx).If(cmps...).Then(ops...).Else(clientv3.OpGet(key)).Commit()
		if err != nil {
			// Unknown outcome: the next claim writes the open runs as they
			// stand here, without this one.
			if closing {
				j.close(t, r.Attempt)
			}
			return
		}
		if resp.Succeeded {
			if closing {
				delete(j.open, t)
				j.claimRev = resp.Header.Revision
				j.closed = nil // the record just written was built without them
			}
			return
		}
		// The term is gone, or the claim moved (an earlier write of ours
		// whose reply was lost): read it back and try again.
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if !closing || len(kvs) == 0 || errors.Is(l.t.Err(), election.ErrLost) {
			return
		}
		c, err := decodeClaim(kvs[0].Value)
		if err != nil || c.Token != r.Token {
			return // another term's record: ours is gone
		}
		j.adopt(c, kvs[0].ModRevision)
	}
}

// termHeld reads whether the term's key still stands.
func (l *leader) termHeld(ctx context.Context) bool {
	// The Then op makes the transaction linearizable: etcd serves a
	// transaction without operations as a serializable read, which a lagging
	// member answers from its own, older state.
	tctx, cancel := context.WithTimeout(ctx, l.try()) // bounded as in claim
	defer cancel()
	resp, err := l.cli().Txn(tctx).If(l.t.Guard()...).Then(clientv3.OpGet(l.s.keys.ctl(), clientv3.WithCountOnly())).Commit()
	return err != nil || resp.Succeeded // on error, assume held and retry
}

// claimTrigger consumes the trigger key (deleting it, fenced by the term and
// its mod revision). It reports false if the trigger was replaced or
// withdrawn meanwhile (a replacement arrives on the watch).
func (l *leader) claimTrigger(ctx context.Context, j *jobRun, r Run, rev int64, skip bool) (bool, error) {
	j.startStatus(r, skip)
	j.wmu.Lock()
	defer j.wmu.Unlock()
	st, err := j.statusValue()
	if err != nil {
		return false, err
	}
	key := l.s.keys.trigger(j.name)
	bo := retry.RequestPolicy.New()
	tr := newTries(l.try())
	for {
		cmps := append(l.t.Guard(), clientv3.Compare(clientv3.ModRevision(key), "=", rev))
		// Each try is bounded, as in claim; the read-back below settles a
		// try applied late.
		tctx, cancel := tr.next(ctx)
		resp, err := l.cli().Txn(tctx).If(cmps...).
			Then(clientv3.OpDelete(key), clientv3.OpPut(l.s.keys.status(j.name), st)).Commit()
		tr.ended(err)
		cancel()
		if err == nil {
			if resp.Succeeded {
				return true, nil
			}
			if !l.termHeld(ctx) {
				return false, errTermGone
			}
			return false, nil
		}
		if ctx.Err() != nil {
			return false, context.Cause(ctx)
		}
		if !retry.Unknown(err) {
			return false, fmt.Errorf("cron: claim trigger %s: %w", key, err)
		}
		if werr := bo.Wait(ctx); werr != nil {
			return false, werr
		}
		tctx, cancel = tr.next(ctx)
		g, gerr := l.cli().Get(tctx, key)
		tr.ended(gerr)
		cancel()
		if gerr != nil {
			continue
		}
		if len(g.Kvs) == 0 || g.Kvs[0].ModRevision != rev {
			// Only the leader deletes triggers: ours went through (or a
			// newer trigger replaced it, which the watch brings).
			return len(g.Kvs) == 0, nil
		}
	}
}

// execute runs fn, records its outcome, and asks for a retry if it failed.
func (l *leader) execute(ctx context.Context, j *jobRun, r Run) {
	defer l.wg.Done()
	defer j.running.Add(-1)
	start := time.Now()
	attrs := metric.WithAttributes(attribute.String("cron.job", j.name))
	if !r.Trigger {
		l.s.lag.Record(ctx, start.Sub(r.Time).Seconds(), attrs)
	}
	sctx, span := l.s.tracer.Start(ctx, "cron.run", trace.WithAttributes(
		attribute.String("cron.name", l.s.name), attribute.String("cron.job", j.name),
		attribute.String("cron.time", r.Time.Format(time.RFC3339Nano)),
		attribute.Int64("cron.token", r.Token), attribute.Int("cron.attempt", r.Attempt),
		attribute.Bool("cron.trigger", r.Trigger)))
	err := call(sctx, j.fn, r)
	dur := time.Since(start)
	outcome := OK
	switch {
	case err != nil && ctx.Err() != nil:
		outcome = Lost
	case err != nil:
		outcome = Failed
	}
	span.SetAttributes(attribute.String("cron.outcome", string(outcome)))
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
	l.s.runs.Add(context.WithoutCancel(ctx), 1, metric.WithAttributes(attribute.String("cron.job", j.name), attribute.String("cron.outcome", string(outcome))))

	j.mu.Lock()
	st := j.status
	// With AllowOverlap runs end in any order: the status describes the run
	// that started or ended last.
	st.Job, st.Spec, st.Outcome, st.Duration, st.Next = j.name, j.spec, outcome, dur, j.next
	st.LastTime, st.Start, st.Token, st.Attempt, st.Trigger = r.Time, start, r.Token, r.Attempt, r.Trigger
	st.Error = ""
	if err != nil {
		st.Error = err.Error()
	}
	j.status = st
	j.mu.Unlock()
	l.finish(ctx, j, r, outcome == Lost)

	// A run that committed is not retried: its effects are in.
	if outcome == Failed && !r.Trigger && r.Attempt <= j.opts.retries && !r.commit.committed.Load() {
		t := time.NewTimer(j.opts.backoff)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
			select {
			case l.retries <- retryReq{job: j, t: r.Time, attempt: r.Attempt + 1}:
			case <-ctx.Done():
			}
		}
	}
}

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
