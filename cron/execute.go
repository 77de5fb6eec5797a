package cron

import (
	"context"
	"errors"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/concordkit/concord/election"
	"github.com/concordkit/concord/queue"
)

// publishChanged writes the status of each job whose definition (or
// term) is new, with its next scheduled time, fenced by the term. Best
// effort: a failure only delays what Status shows until the job runs.
func (l *leader) publishChanged(ctx context.Context) {
	for _, j := range l.order {
		if !j.publish {
			continue
		}
		j.publish = false
		j.mu.Lock()
		j.describe(&j.status)
		j.status.Next, j.status.Paused, j.status.Pending = j.next, false, false
		j.mu.Unlock()
		l.writeStatus(ctx, j)
	}
}

// describe sets what st says of the job itself: its name, spec, handler
// and problem. Called with mu held.
func (j *jobRun) describe(st *JobStatus) {
	jb := j.def()
	st.Job, st.Spec, st.Defined, st.Handler, st.Problem = j.name, jb.spec, jb.defined, jb.handler, jb.problem
	if j.note != "" {
		st.Problem = j.note
	}
}

// writeStatus writes j's current status, fenced by cmps. The write is not
// canceled with ctx but bounded by the TTL: a canceled write may still be
// applied after the next one, and an older status would then replace a
// newer one.
func (l *leader) writeStatus(ctx context.Context, j *jobRun) {
	cmps := l.guard(j)
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
	jb := j.def()
	if !jb.runnable() {
		j.setNext(time.Time{}) // it does not run here: no next time
		return nil
	}
	var due []time.Time
	from := j.cursor
	// The timer and the claim make a time a little late at best; within
	// lateSlack it is due now, not missed, whatever the window.
	lo := now.Add(-max(jb.opts.window, lateSlack))
	if from.Before(lo) {
		// Only times within the window count; start just before it.
		from = lo.Add(-time.Nanosecond)
	}
	t := jb.sched.Next(from)
	for ; !t.IsZero() && !t.After(now) && len(due) < maxDue; t = jb.sched.Next(t) {
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
	if jb.opts.catchUp == CatchUpLatest {
		due = due[len(due)-1:]
	}
	for _, t := range due {
		if err := l.dispatch(ctx, j, t, 1, freshRun); err != nil {
			return err
		}
	}
	return nil
}

func (l *leader) start(ctx context.Context, j *jobRun, jb *job, r Run, skip bool, enq *queue.TxEnqueue) {
	if enq != nil {
		// Enqueued with the claim: the workers run it.
		attrs := metric.WithAttributes(attribute.String("cron.job", j.name))
		if !r.Trigger {
			l.s.lag.Record(ctx, time.Since(r.Time).Seconds(), attrs)
		}
		l.s.runs.Add(ctx, 1, metric.WithAttributes(attribute.String("cron.job", j.name), attribute.String("cron.outcome", string(Dispatched))))
		return
	}
	if skip {
		l.s.runs.Add(ctx, 1, metric.WithAttributes(attribute.String("cron.job", j.name), attribute.String("cron.outcome", string(Skipped))))
		return
	}
	j.running.Add(1)
	l.wg.Add(1)
	go l.execute(j.ctx, j, jb, r)
}

// startStatus records a run that starts now in j's status (or, with enq,
// is enqueued now).
func (j *jobRun) startStatus(r Run, skip bool, enq *queue.TxEnqueue) {
	j.mu.Lock()
	defer j.mu.Unlock()
	st := j.status
	j.describe(&st)
	st.LastTime, st.Start, st.Token, st.Attempt, st.Trigger = r.Time, time.Now(), r.Token, r.Attempt, r.Trigger
	st.Outcome, st.Error, st.Duration = Running, "", 0
	st.Task = ""
	switch {
	case enq != nil:
		st.Outcome, st.Task = Dispatched, enq.ID
	case skip:
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

// execute runs fn, records its outcome, and asks for a retry if it failed.
func (l *leader) execute(ctx context.Context, j *jobRun, jb *job, r Run) {
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
	err := call(sctx, jb.fn, r)
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
	j.describe(&st)
	st.Outcome, st.Duration, st.Next = outcome, dur, j.next
	st.LastTime, st.Start, st.Token, st.Attempt, st.Trigger = r.Time, start, r.Token, r.Attempt, r.Trigger
	st.Error = ""
	if err != nil {
		st.Error = err.Error()
	}
	j.status = st
	j.mu.Unlock()
	l.finish(ctx, j, r, outcome == Lost)

	// A run that committed is not retried: its effects are in.
	if outcome == Failed && !r.Trigger && r.Attempt <= jb.opts.retries && !r.commit.committed.Load() {
		t := time.NewTimer(jb.opts.backoff)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-l.loopCtx.Done():
		case <-t.C:
			select {
			case l.retries <- retryReq{job: j, t: r.Time, attempt: r.Attempt + 1}:
			case <-ctx.Done():
			case <-l.loopCtx.Done():
			}
		}
	}
}
