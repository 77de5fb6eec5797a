package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/watch"
)

// State is where a task is in its life.
type State string

// States. Running is not stored: it is the existence of the claim key.
const (
	StateQueued  State = "queued"  // ready for a worker
	StateDelayed State = "delayed" // ready from Status.ReadyAt on
	StateRunning State = "running" // claimed by Status.Worker
	StateDone    State = "done"    // acknowledged (kept for the retention)
	StateDead    State = "dead"    // in the dead letters
	// StateCanceled: canceled by Cancel (kept for the retention).
	StateCanceled State = "canceled"
)

// Status is what anyone can see of a task.
type Status struct {
	ID            string
	State         State
	Priority      int
	Attempt       int       // the running attempt, or the attempts made so far
	Worker        string    // running: the claim's worker; done/dead: the last worker
	Token         int64     // running: the claim's fencing token
	ReadyAt       time.Time // queued/delayed: when it is (or was) ready
	Fraction      float64   // last Progress of the current or last attempt (kept when done)
	Message       string
	HasCheckpoint bool
	LastError     string // how the last unsuccessful attempt ended
	UpdatedAt     time.Time
	Group         string // WithGroup's name, while the task record exists (not after Ack or Cancel)
}

// Status returns the task's status, or ErrNotFound. One linearizable read
// transaction (which reads the task record, payload included, for a task
// that has not moved since it was enqueued).
func (q *Queue) Status(ctx context.Context, id string) (Status, error) {
	if q.err != nil {
		return Status{}, q.err
	}
	st, _, err := q.status(ctx, id)
	return st, err
}

func (q *Queue) status(ctx context.Context, id string) (Status, int64, error) {
	if !validID(id) {
		return Status{}, 0, fmt.Errorf("queue: status: invalid task ID %q", id)
	}
	resp, err := q.cli.Txn(ctx).Then(
		clientv3.OpGet(q.keys.status(id)),
		clientv3.OpGet(q.keys.claim(id)),
		clientv3.OpGet(q.keys.attempt(id)),
		clientv3.OpGet(q.keys.progress(id)),
		clientv3.OpGet(q.keys.finished(id)),
		clientv3.OpGet(q.keys.task(id)),
		clientv3.OpGet(q.keys.unused(id)),
	).Commit()
	if err != nil {
		return Status{}, 0, fmt.Errorf("queue: status: %w", err)
	}
	rev := resp.Header.Revision
	kv := func(i int) ([]byte, int64, int64, bool) {
		kvs := resp.Responses[i].GetResponseRange().GetKvs()
		if len(kvs) == 0 {
			return nil, 0, 0, false
		}
		return kvs[0].Value, kvs[0].CreateRevision, kvs[0].Version, true
	}
	st := Status{ID: id}
	sv, _, _, sok := kv(0)
	fv, _, _, fok := kv(4)
	tv, _, _, tok := kv(5)
	switch {
	case sok || tok:
		rec, err := q.statusOrTask(id, sv, sok, tv)
		if err != nil {
			return Status{}, 0, fmt.Errorf("queue: status of %s: %w", id, err)
		}
		st.fill(rec)
		if tok {
			if m, _, err := decodeTask(tv); err == nil {
				st.Group = m.Group
			}
		}
		if e, perr := parseIndexKey(q.keys.prefix+rec.Pos, strings.TrimPrefix(rec.Pos, "i/")); perr == nil {
			st.ReadyAt = time.Unix(0, e.at)
			if !e.ready && time.Now().After(st.ReadyAt) {
				st.State = StateQueued
			}
		}
	case fok:
		rec, err := decodeStatus(fv)
		if err != nil {
			return Status{}, 0, fmt.Errorf("queue: status of %s: %w", id, err)
		}
		st.fill(rec)
		return st, rev, nil
	default:
		return Status{}, rev, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if cv, crev, _, ok := kv(1); ok {
		st.State = StateRunning
		st.Token = crev
		c, err := decodeClaim(cv)
		if err != nil {
			return Status{}, 0, fmt.Errorf("queue: status of %s: claim: %w", id, err)
		}
		st.Worker = c.Worker
	}
	// The counters are the truth while they exist: a lost claim leaves no
	// status record behind.
	if _, _, claims, ok := kv(2); ok {
		_, _, unused, _ := kv(6)
		st.Attempt = spent(claims, unused)
	}
	if pv, _, _, ok := kv(3); ok {
		if p, cp, err := decodeProgress(pv); err == nil {
			st.Fraction, st.Message, st.HasCheckpoint = p.Fraction, p.Message, len(cp) > 0
			if p.At > st.UpdatedAt.UnixNano() {
				st.UpdatedAt = time.Unix(0, p.At)
			}
		}
	}
	return st, rev, nil
}

// statusOrTask returns the status record sv if there is one (ok), or the
// one the task record tv implies: a task that never moved since Enqueue
// has no status record, and its task record says where it is.
func (q *Queue) statusOrTask(id string, sv []byte, ok bool, tv []byte) (statusRecord, error) {
	if ok {
		return decodeStatus(sv)
	}
	m, _, err := decodeTask(tv)
	if err != nil {
		return statusRecord{}, err
	}
	rec := statusRecord{State: StateQueued, Pos: q.rel(q.enqueuedPos(id, m)), At: m.Enq, Prio: m.Prio, Dedup: m.Dedup}
	if m.Ready > 0 {
		rec.State = StateDelayed
	}
	return rec, nil
}

func (st *Status) fill(rec statusRecord) {
	st.State = rec.State
	st.Priority = int(rec.Prio)
	st.Attempt = rec.Attempt
	st.Fraction, st.Message = rec.Fraction, rec.Message
	st.LastError = rec.Err
	st.Worker = rec.Worker
	st.UpdatedAt = time.Unix(0, rec.At)
}

// WatchStatus sends the task's status now and after every change, until ctx
// ends or the task's keys cannot be watched (etcd refuses it); then it
// closes the channel. A reader that falls behind sees the latest status,
// not every intermediate one. The goroutine it starts ends with ctx.
// Broken watches resume where they stopped; after a compaction the status
// is read again and watched from there.
func (q *Queue) WatchStatus(ctx context.Context, id string) (<-chan Status, error) {
	if q.err != nil {
		return nil, q.err
	}
	first, rev, err := q.status(ctx, id)
	if err != nil {
		return nil, err
	}
	out := make(chan Status, 1)
	out <- first
	go q.followStatus(ctx, id, first, rev, out)
	return out, nil
}

func (q *Queue) followStatus(ctx context.Context, id string, last Status, rev int64, out chan Status) {
	defer close(out)
	keys := [4]string{q.keys.status(id), q.keys.claim(id), q.keys.progress(id), q.keys.finished(id)}
	var ws [4]*watch.Watch
	open := func(rev int64) {
		// From rev+1: nothing after the read can slip between it and the
		// watches.
		for i, k := range keys {
			ws[i] = watch.Open(ctx, q.cli, k, watch.Config{From: rev + 1})
		}
	}
	stopAll := func() {
		for _, w := range ws {
			w.Stop()
		}
	}
	open(rev)
	defer func() { stopAll() }()
	for {
		var ok bool
		var ended *watch.Watch
		select {
		case <-ctx.Done():
			return
		case _, ok = <-ws[0].C:
			ended = ws[0]
		case _, ok = <-ws[1].C:
			ended = ws[1]
		case _, ok = <-ws[2].C:
			ended = ws[2]
		case _, ok = <-ws[3].C:
			ended = ws[3]
		}
		if !ok {
			if !errors.Is(ended.Err(), rpctypes.ErrCompacted) {
				return // refused for good
			}
			// History was compacted: read afresh, watch from there.
			stopAll()
			st, r, err := q.status(ctx, id)
			if err != nil {
				return
			}
			open(r)
			if st != last {
				last = st
				replace(out, st)
			}
			continue
		}
		st, err := q.Status(ctx, id)
		if err != nil {
			if errors.Is(err, ErrNotFound) {
				continue
			}
			return
		}
		if st == last {
			continue
		}
		last = st
		replace(out, st)
	}
}

// replace puts st on the one-place channel out, replacing an unread status.
func replace(out chan Status, st Status) {
	select {
	case out <- st:
	default:
		select {
		case <-out:
		default:
		}
		out <- st
	}
}
