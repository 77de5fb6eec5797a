package cron

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

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
	// Definitions sort after claims and controls: read them first, so that
	// the records of defined jobs are matched to them.
	for _, kv := range resp.Kvs {
		if strings.HasPrefix(string(kv.Key), l.s.keys.defs()) {
			if err := l.applyDef(kv); err != nil {
				return 0, nil, err
			}
		}
	}
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
	o := j.def().opts
	for t, a := range j.open {
		if o.reruns == 0 || j.paused || j.dones[t] ||
			a >= 1+o.retries+o.reruns || now.Sub(time.Unix(0, t)) > o.window {
			j.close(t, a)
			continue
		}
		rerun = append(rerun, openRun{t, a})
	}
	sort.Slice(rerun, func(a, b int) bool { return rerun[a].Time < rerun[b].Time })
	return rerun
}

// loadCtl reads the controls and definitions afresh (after a lost watch).
func (l *leader) loadCtl(ctx context.Context) (int64, []trigger, error) {
	resp, err := l.cli().Get(ctx, l.s.keys.ctl(), clientv3.WithRange(l.s.keys.followEnd()))
	if err != nil {
		return 0, nil, err
	}
	// Definitions first, as in load; then the jobs defined no more go.
	defined := map[string]bool{}
	for _, kv := range resp.Kvs {
		if job, ok := l.s.keys.parseDef(string(kv.Key)); ok {
			defined[job] = true
			if err := l.applyDef(kv); err != nil {
				return 0, nil, err
			}
		}
	}
	for _, j := range append([]*jobRun(nil), l.order...) {
		switch {
		case j.defRev != 0 && !defined[j.name]:
			l.removeRun(j, ErrRemoved)
		case j.defRev == 0 && !defined[j.name]:
			l.setNote(j, "")
		}
	}
	paused := map[*jobRun]bool{}
	var triggers []trigger
	for _, kv := range resp.Kvs {
		if strings.HasPrefix(string(kv.Key), l.s.keys.defs()) {
			continue
		}
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

// applyDef applies the definition kv: it adds the job it defines to the
// term's jobs, replaces an earlier definition of it, or notes a job added
// in code under the same name (which keeps running). A definition that
// decodes but is invalid (or names a handler this binary lacks) makes a
// job that does not run here and says why in its status. Called by the
// loop (or by begin); it does no I/O.
func (l *leader) applyDef(kv *mvccpb.KeyValue) error {
	job, ok := l.s.keys.parseDef(string(kv.Key))
	if !ok {
		return fmt.Errorf("%w: unexpected key %s", ErrCorrupt, kv.Key)
	}
	rec, err := decodeDef(kv.Value)
	if err != nil {
		return fmt.Errorf("%w (key %s)", err, kv.Key)
	}
	j := l.jobs[job]
	if j != nil && j.defRev == 0 {
		l.setNote(j, fmt.Sprintf("also defined at runtime (handler %q): the job added in code runs, the definition is ignored", rec.Handler))
		return nil
	}
	if j != nil && j.defRev == kv.CreateRevision {
		if j.defMod == kv.ModRevision {
			return nil // seen already
		}
		old := j.def()
		nj := l.build(job, rec.Definition)
		j.cur.Store(nj)
		j.defMod = kv.ModRevision
		j.recheck = !old.runnable() && nj.runnable()
		if nj.spec != old.spec || !old.runnable() {
			// The new schedule starts now: its times that passed before
			// are not caught up.
			j.cursor = time.Now()
		}
		j.setNext(time.Time{})
		j.publish = true
		return nil
	}
	if j != nil {
		l.removeRun(j, ErrRemoved) // removed and defined again
	}
	nj := l.addRun(l.build(job, rec.Definition), kv.CreateRevision, kv.ModRevision)
	nj.cursor = time.Now()
	return nil
}

// recheckTriggers runs the pending trigger of each job that just became
// runnable (a definition whose handler was missing, fixed by Update): the
// trigger's own event came while the job could not run, and was left. A
// failed read leaves it for the next leader.
func (l *leader) recheckTriggers(ctx context.Context) error {
	for _, j := range l.order {
		if !j.recheck {
			continue
		}
		j.recheck = false
		tctx, cancel := context.WithTimeout(ctx, l.try())
		resp, err := l.cli().Get(tctx, l.s.keys.trigger(j.name))
		cancel()
		if err != nil || len(resp.Kvs) == 0 {
			continue
		}
		tr, err := l.ctlRecord(resp.Kvs[0])
		if err != nil {
			return err
		}
		if tr != nil {
			if err := l.dispatchTrigger(ctx, *tr); err != nil {
				return err
			}
		}
	}
	return nil
}

// build returns the job d defines, with the handler this binary registered
// for it, or one that does not run here and says why.
func (l *leader) build(jobName string, d Definition) *job {
	jb, err := d.build(jobName)
	if err != nil {
		return &job{name: jobName, spec: d.Spec, defined: true, handler: d.Handler,
			problem: "invalid definition: " + strings.TrimPrefix(err.Error(), "cron: ")}
	}
	h, ok := l.handlers[d.Handler]
	switch {
	case !ok:
		jb.problem = fmt.Sprintf("no handler %q registered in the leader's binary", d.Handler)
	case h.disp != nil:
		if err := jb.opts.checkDispatch(jobName); err != nil {
			jb.problem = "invalid definition: " + strings.TrimPrefix(err.Error(), "cron: ")
			break
		}
		jb.disp = h.disp
	default:
		jb.fn = h.fn
	}
	return jb
}

// setNote sets the problem of a job added in code and has the loop write
// its status if it changed.
func (l *leader) setNote(j *jobRun, note string) {
	j.mu.Lock()
	changed := j.note != note
	j.note = note
	j.mu.Unlock()
	j.publish = j.publish || changed
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

// onEvent follows a change of a control record or a definition.
func (l *leader) onEvent(ctx context.Context, ev *clientv3.Event) error {
	job, ok := l.s.keys.parseDef(string(ev.Kv.Key))
	switch {
	case !strings.HasPrefix(string(ev.Kv.Key), l.s.keys.defs()):
		return l.onCtl(ctx, ev)
	case !ok:
		return fmt.Errorf("%w: unexpected key %s", ErrCorrupt, ev.Kv.Key)
	case ev.Type != clientv3.EventTypeDelete:
		return l.applyDef(ev.Kv)
	}
	switch j := l.jobs[job]; {
	case j == nil:
	case j.defRev == 0:
		l.setNote(j, "")
	default:
		l.removeRun(j, ErrRemoved)
	}
	return nil
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
