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
