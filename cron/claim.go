package cron

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/election"
	"github.com/concordkit/concord/internal/retry"
	"github.com/concordkit/concord/queue"
)

// runKind says why a time is dispatched.
type runKind int

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

// runs reports whether j is one of the term's jobs (not removed since a
// retry of it was asked for) and runs here.
func (l *leader) runs(j *jobRun) bool { return l.jobs[j.name] == j && j.def().runnable() }

// dispatch claims (j, t, attempt) and starts the run, or records a skip.
func (l *leader) dispatch(ctx context.Context, j *jobRun, t time.Time, attempt int, kind runKind) error {
	if !l.runs(j) {
		return nil
	}
	j.wmu.Lock()
	ok := j.claimable(t, attempt, kind)
	j.wmu.Unlock()
	if !ok {
		return nil
	}
	jb := j.def() // what this run runs, whatever updates come meanwhile
	skip := jb.disp == nil && jb.opts.overlap == SkipIfRunning && j.running.Load() > 0
	r := Run{Job: j.name, Time: t, Token: l.t.Token(), Attempt: attempt, term: l.t, fence: l.guard(j)}
	r.commit = l.newCommit(j, r)
	enq, err := l.enqueueFor(ctx, jb, r)
	if err != nil {
		return err
	}
	claimed, err := l.claim(ctx, j, r, kind, skip, enq)
	if err != nil || !claimed {
		return err
	}
	l.start(ctx, j, jb, r, skip, enq)
	return nil
}

// enqueueFor prepares the task of a dispatched job's run r (nil for a job
// that runs on the leader).
func (l *leader) enqueueFor(ctx context.Context, jb *job, r Run) (*queue.TxEnqueue, error) {
	if jb.disp == nil {
		return nil, nil
	}
	return l.enqueueOf(ctx, jb.disp, r)
}

func (l *leader) dispatchTrigger(ctx context.Context, tr trigger) error {
	j := tr.job
	if !l.runs(j) {
		return nil // the trigger stays pending for a leader that runs the job
	}
	jb := j.def()
	skip := jb.disp == nil && jb.opts.overlap == SkipIfRunning && j.running.Load() > 0
	r := Run{Job: j.name, Time: tr.at, Token: l.t.Token(), Attempt: 1, Trigger: true, term: l.t, fence: l.guard(j)}
	r.commit = l.newCommit(j, r)
	enq, err := l.enqueueFor(ctx, jb, r)
	if err != nil {
		return err
	}
	ok, err := l.claimTrigger(ctx, j, r, tr.rev, skip, enq)
	if err != nil || !ok {
		return err
	}
	l.start(ctx, j, jb, r, skip, enq)
	return nil
}

// claim writes the claim of (j, r.Time, r.Attempt), fenced by the term and
// by the claim key's mod revision, so that no time is claimed twice: a
// fresh time moves the watermark, a retry or rerun bumps the attempt of its
// time; a run that starts is listed as open until it finishes. The same
// transaction writes the status (running, or skipped) and deletes stale
// commit records. For a dispatched job it also enqueues enq, the run's
// task, and the run is not listed as open: the queue holds it now. An
// unknown outcome is settled by reading the claim back. It reports false
// when the time turned out to be claimed already.
func (l *leader) claim(ctx context.Context, j *jobRun, r Run, kind runKind, skip bool, enq *queue.TxEnqueue) (bool, error) {
	j.startStatus(r, skip, enq)
	notOpen := skip || enq != nil
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
	for {
		if !j.claimable(r.Time, r.Attempt, kind) {
			return false, nil
		}
		c := j.claimWith(r, notOpen, at)
		rec, err := encode(c)
		if err != nil {
			return false, err
		}
		deleted := j.staleDeletes(c)
		ops := []clientv3.Op{clientv3.OpPut(key, rec), clientv3.OpPut(l.s.keys.status(j.name), st)}
		for _, sr := range deleted {
			ops = append(ops, clientv3.OpDelete(sr.key))
		}
		cmps := append(l.guard(j), clientv3.Compare(clientv3.ModRevision(key), "=", j.claimRev))
		if enq != nil {
			ops = append(ops, enq.Ops...)
			cmps = append(cmps, enq.Cmps...)
		}
		// Each try is bounded, as in Commit: the fence on the claim's mod
		// revision and the read-back below settle a try applied late.
		tctx, cancel := tr.next(ctx)
		resp, err := l.cli().Txn(tctx).If(cmps...).Then(ops...).Else(l.claimReads(j)...).Commit()
		tr.ended(err)
		cancel()
		var read *mvccpb.KeyValue // the claim record as it stands
		switch {
		case err == nil && resp.Succeeded:
			j.adopt(c, resp.Header.Revision)
			j.dropStale(deleted)
			j.closed = nil // the record just written was built without them
			return true, nil
		case err == nil:
			if errors.Is(l.t.Err(), election.ErrLost) || !l.termHeld(ctx) {
				return false, errTermGone
			}
			if j.defGone(resp.Responses) {
				return false, nil // removed: the watch brings the deletion
			}
			// The claim moved under us: adopt it (the loop checks again
			// whether r may still be claimed). Only a leader writes claims,
			// so this is a foreign writer or our own write whose reply was
			// lost.
			if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
				read = kvs[0]
			}
		case ctx.Err() != nil:
			return false, context.Cause(ctx)
		case !retry.Unknown(err):
			return false, fmt.Errorf("cron: claim %s: %w", key, err)
		default:
			// Unknown outcome: read the claim back.
			kvs, ok, werr := l.readBack(ctx, tr, bo, key)
			if werr != nil {
				return false, werr
			}
			if !ok {
				continue
			}
			if len(kvs) > 0 {
				read = kvs[0]
			}
		}
		if ours, err := j.adoptRead(key, read, r, notOpen, deleted); err != nil || ours {
			return ours, err
		}
	}
}

// claimReads are what a failed claim reads: the claim record and, for a
// defined job, its definition.
func (l *leader) claimReads(j *jobRun) []clientv3.Op {
	ops := []clientv3.Op{clientv3.OpGet(l.s.keys.claim(j.name))}
	if j.defRev != 0 {
		ops = append(ops, clientv3.OpGet(l.s.keys.def(j.name)))
	}
	return ops
}

// readBack reads key back after a write whose outcome is unknown, after
// bo's delay, in one try bounded like the write's. ok is false when the read
// failed too: the caller tries the write again. err is bo's wait ending
// with ctx.
func (l *leader) readBack(ctx context.Context, tr *tries, bo *retry.Backoff, key string) (kvs []*mvccpb.KeyValue, ok bool, err error) {
	if err := bo.Wait(ctx); err != nil {
		return nil, false, err
	}
	tctx, cancel := tr.next(ctx)
	defer cancel()
	g, gerr := l.cli().Get(tctx, key)
	tr.ended(gerr)
	if gerr != nil {
		return nil, false, nil
	}
	return g.Kvs, true, nil
}

// staleDeletes picks the stale commit records a write of claim c deletes:
// a batch at a time, well within etcd's limit on operations per
// transaction, and only those whose time c leaves out of the open runs.
// Called with wmu held.
func (j *jobRun) staleDeletes(c claim) []staleRecord {
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
		}
	}
	return deleted
}

// adoptRead adopts the claim record read back at key (nil: there is none)
// and reports whether it is this claim's own write whose reply was lost:
// only this term writes its token, and it claims (r.Time, r.Attempt) once.
// deleted are the stale records that write deleted. Called with wmu held.
func (j *jobRun) adoptRead(key string, kv *mvccpb.KeyValue, r Run, skip bool, deleted []staleRecord) (bool, error) {
	if kv == nil {
		j.claimRev = 0
		return false, nil
	}
	c, err := decodeClaim(kv.Value)
	if err != nil {
		return false, fmt.Errorf("%w (key %s)", err, key)
	}
	j.adopt(c, kv.ModRevision)
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
	return ours, nil
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
func (l *leader) claimTrigger(ctx context.Context, j *jobRun, r Run, rev int64, skip bool, enq *queue.TxEnqueue) (bool, error) {
	j.startStatus(r, skip, enq)
	j.wmu.Lock()
	defer j.wmu.Unlock()
	st, err := j.statusValue()
	if err != nil {
		return false, err
	}
	key := l.s.keys.trigger(j.name)
	bo := retry.RequestPolicy.New()
	tr := newTries(l.try())
	unsure := false // a try's outcome is unknown: it may have applied
	for {
		cmps := append(l.guard(j), clientv3.Compare(clientv3.ModRevision(key), "=", rev))
		// Each try is bounded, as in claim; the read-back below settles a
		// try applied late.
		tctx, cancel := tr.next(ctx)
		ops := []clientv3.Op{clientv3.OpDelete(key), clientv3.OpPut(l.s.keys.status(j.name), st)}
		if enq != nil {
			ops = append(ops, enq.Ops...)
			cmps = append(cmps, enq.Cmps...)
		}
		resp, err := l.cli().Txn(tctx).If(cmps...).Then(ops...).Commit()
		tr.ended(err)
		cancel()
		switch {
		case err == nil && resp.Succeeded:
			return true, nil
		case err == nil && !unsure:
			if !l.termHeld(ctx) {
				return false, errTermGone
			}
			return false, nil // withdrawn, replaced (the watch brings it) or removed
		case err == nil:
			// Refused after a try whose outcome is unknown: that try may be
			// why. Read back below.
		case ctx.Err() != nil:
			return false, context.Cause(ctx)
		case !retry.Unknown(err):
			return false, fmt.Errorf("cron: claim trigger %s: %w", key, err)
		default:
			unsure = true
			if werr := bo.Wait(ctx); werr != nil {
				return false, werr
			}
		}
		ours, settled, err := l.triggerApplied(ctx, tr, j, key, rev, st)
		if err != nil || settled {
			return ours, err
		}
	}
}

// triggerApplied reads back whether a consumption of the trigger key (at
// mod revision rev) that wrote the status st applied. settled is false
// when the read failed or the trigger still stands: try again. A removed
// job's trigger is never its run: Remove deletes trigger keys too.
func (l *leader) triggerApplied(ctx context.Context, tr *tries, j *jobRun, key string, rev int64, st string) (ours, settled bool, err error) {
	tctx, cancel := tr.next(ctx)
	defer cancel()
	reads := []clientv3.Op{clientv3.OpGet(key), clientv3.OpGet(l.s.keys.status(j.name))}
	if j.defRev != 0 {
		reads = append(reads, clientv3.OpGet(l.s.keys.def(j.name)))
	}
	resp, gerr := l.cli().Txn(tctx).Then(reads...).Commit()
	tr.ended(gerr)
	if gerr != nil {
		if ctx.Err() != nil {
			return false, true, context.Cause(ctx)
		}
		return false, false, nil
	}
	trig := resp.Responses[0].GetResponseRange().Kvs
	status := resp.Responses[1].GetResponseRange().Kvs
	switch {
	case j.defGone(resp.Responses[1:]):
		return false, true, nil
	case len(trig) > 0 && trig[0].ModRevision == rev:
		return false, false, nil // not applied: try again
	case len(trig) > 0:
		return false, true, nil // replaced by a newer trigger, which the watch brings
	}
	// Gone: only this leader consumes triggers of a job that is still
	// defined, and it writes st with the consumption while it holds wmu.
	return len(status) > 0 && string(status[0].Value) == st, true, nil
}
