package queue

import (
	"context"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Stats counts a queue's tasks.
type Stats struct {
	Ready    int  // claimable now
	Delayed  int  // claimable later
	Running  int  // claimed
	Done     int  // acknowledged within the retention
	Canceled int  // canceled within the retention
	Dead     int  // dead letters
	Paused   bool // Pause is in force
}

// Stats counts the queue's tasks in one linearizable read transaction of
// count-only ranges. Its cost grows with the number of keys, and deleted
// keys not yet compacted, under the queue: it is for inspection, not for
// the hot path (the depth metric comes from each consumer's watched view).
func (q *Queue) Stats(ctx context.Context) (Stats, error) {
	if q.err != nil {
		return Stats{}, q.err
	}
	now := time.Now().UnixNano()
	dp := q.keys.delayedPrefix()
	dueEnd := dp + encTime(now+1)
	count := func(from, to string) clientv3.Op {
		return clientv3.OpGet(from, clientv3.WithRange(to), clientv3.WithCountOnly())
	}
	pend := func(p string) clientv3.Op { return count(p, clientv3.GetPrefixRangeEnd(p)) }
	resp, err := q.cli.Txn(ctx).Then(
		pend(q.keys.readyPrefix()),
		count(dp, dueEnd),
		count(dueEnd, clientv3.GetPrefixRangeEnd(dp)),
		pend(q.keys.claimPrefix()),
		pend(q.keys.prefix+"f/"),
		pend(q.keys.prefix+"x/"),
		pend(q.keys.canceledPrefix()),
		clientv3.OpGet(q.keys.paused(), clientv3.WithCountOnly()),
	).Commit()
	if err != nil {
		return Stats{}, fmt.Errorf("queue: stats: %w", err)
	}
	c := func(i int) int { return int(resp.Responses[i].GetResponseRange().GetCount()) }
	// A canceled task's finished record and marker share a lease.
	s := Stats{Delayed: c(2), Running: c(3), Done: max(c(4)-c(6), 0), Canceled: c(6), Dead: c(5), Paused: c(7) > 0}
	s.Ready = max(c(0)+c(1)-s.Running, 0)
	return s, nil
}

// Entry is one task in a List.
type Entry struct {
	ID       string
	State    State // queued, delayed or running
	Priority int
	ReadyAt  time.Time
}

// List returns up to limit unfinished tasks in the order consumers take
// them (ready ones by priority and time, then delayed ones by time), with
// running tasks marked. limit ≤ 0 means 1000. Keys under the queue that this
// package did not write are reported as an error wrapping ErrCorrupt.
func (q *Queue) List(ctx context.Context, limit int) ([]Entry, error) {
	if q.err != nil {
		return nil, q.err
	}
	if limit <= 0 {
		limit = 1000
	}
	var out []Entry
	claimed := map[string]bool{}
	cp := q.keys.claimPrefix()
	cresp, err := q.cli.Get(ctx, cp, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("queue: list: %w", err)
	}
	for _, kv := range cresp.Kvs {
		claimed[strings.TrimPrefix(string(kv.Key), cp)] = true
	}
	now := time.Now().UnixNano()
	for _, p := range []string{q.keys.readyPrefix(), q.keys.delayedPrefix()} {
		if len(out) >= limit {
			break
		}
		resp, err := q.cli.Get(ctx, p, clientv3.WithPrefix(), clientv3.WithKeysOnly(),
			clientv3.WithLimit(int64(limit-len(out))), clientv3.WithRev(cresp.Header.Revision))
		if err != nil {
			return nil, fmt.Errorf("queue: list: %w", err)
		}
		for _, kv := range resp.Kvs {
			k := string(kv.Key)
			e, err := parseIndexKey(k, strings.TrimPrefix(k, q.keys.index()))
			if err != nil {
				return out, err
			}
			st := StateQueued
			switch {
			case claimed[e.id]:
				st = StateRunning
			case !e.ready && e.at > now:
				st = StateDelayed
			}
			out = append(out, Entry{ID: e.id, State: st, Priority: int(e.prio), ReadyAt: time.Unix(0, e.at)})
		}
	}
	return out, nil
}

// DeadLetter is one task in the dead letters.
type DeadLetter struct {
	ID       string
	Reason   string
	Attempt  int
	Priority int
	At       time.Time
}

// DeadLetters returns up to limit dead letters (limit ≤ 0: 1000), oldest
// task first.
func (q *Queue) DeadLetters(ctx context.Context, limit int) ([]DeadLetter, error) {
	if q.err != nil {
		return nil, q.err
	}
	if limit <= 0 {
		limit = 1000
	}
	xp := q.keys.prefix + "x/"
	resp, err := q.cli.Get(ctx, xp, clientv3.WithPrefix(), clientv3.WithLimit(int64(limit)))
	if err != nil {
		return nil, fmt.Errorf("queue: dead letters: %w", err)
	}
	out := make([]DeadLetter, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		id := strings.TrimPrefix(string(kv.Key), xp)
		d, err := decodeDead(kv.Value)
		if err != nil || !validID(id) {
			return out, fmt.Errorf("queue: dead letter %q: %w", kv.Key, ErrCorrupt)
		}
		out = append(out, DeadLetter{ID: id, Reason: d.Reason, Attempt: d.Attempt, Priority: int(d.Prio), At: time.Unix(0, d.At)})
	}
	return out, nil
}

// Requeue puts a dead letter back in the queue, ready now, with its attempt
// count reset and its last checkpoint kept. A task of a group goes back to
// the end of its group. A task enqueued with a dedup ID
// holds it again, unfinished once more, unless another task took the ID
// while this one was dead: then both are queued and the other keeps the ID.
// It returns ErrNotDead if the task is not a dead letter. Two etcd requests
// (a read, a guarded write).
func (q *Queue) Requeue(ctx context.Context, id string) error {
	if q.err != nil {
		return q.err
	}
	if !validID(id) {
		return fmt.Errorf("queue: requeue: invalid task ID %q", id)
	}
	xk, sk := q.keys.dead(id), q.keys.status(id)
	resp, err := q.cli.Txn(ctx).Then(clientv3.OpGet(xk), clientv3.OpGet(sk), clientv3.OpGet(q.keys.task(id))).Commit()
	if err != nil {
		return fmt.Errorf("queue: requeue: %w", err)
	}
	xkvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(xkvs) == 0 {
		return fmt.Errorf("%w: %s", ErrNotDead, id)
	}
	d, err := decodeDead(xkvs[0].Value)
	if err != nil {
		return fmt.Errorf("queue: requeue %s: %w", id, err)
	}
	var prev statusRecord
	if skvs := resp.Responses[1].GetResponseRange().GetKvs(); len(skvs) > 0 {
		prev, _ = decodeStatus(skvs[0].Value)
	}
	now := time.Now().UnixNano()
	pos := q.keys.ready(d.Prio, now, id)
	st := statusRecord{State: StateQueued, Pos: q.rel(pos), At: now, Prio: d.Prio, Err: d.Reason, Dedup: prev.Dedup}
	ops := []clientv3.Op{
		clientv3.OpDelete(xk),
		clientv3.OpDelete(q.keys.attempt(id)),
		clientv3.OpDelete(q.keys.unused(id)),
		clientv3.OpPut(sk, string(encodeStatus(st))),
		clientv3.OpPut(pos, ""),
	}
	bounded := false
	if tkvs := resp.Responses[2].GetResponseRange().GetKvs(); len(tkvs) > 0 {
		meta, _, err := decodeTask(tkvs[0].Value)
		if err != nil {
			return fmt.Errorf("queue: requeue %s: %w", id, err)
		}
		bounded = meta.Bounded
		if meta.Group != "" {
			// Back in its group, after every task enqueued before now.
			ops = append(ops, clientv3.OpPut(q.keys.member(groupHash(meta.Group), id), ""))
		}
	}
	if prev.Dedup != "" {
		// Dead-lettering freed the ID; take it again if it is still free,
		// so that Enqueue with it finds this task, as for any unfinished one.
		dk := q.keys.dedup(prev.Dedup)
		ops = append(ops, clientv3.OpTxn(
			[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(dk), "=", 0)},
			[]clientv3.Op{clientv3.OpPut(dk, id)}, nil))
	}
	same := clientv3.Compare(clientv3.ModRevision(xk), "=", xkvs[0].ModRevision)
	changed := fmt.Errorf("%w: %s changed while being requeued", ErrNotDead, id)
	if bounded {
		// Back under the bound it was admitted under: it counts in again.
		err := q.admit(ctx, admission{k: 1, cmps: []clientv3.Cmp{same}, ops: ops, unchecked: q.o.maxSize == 0,
			onFail: []clientv3.Op{clientv3.OpGet(xk, clientv3.WithKeysOnly())},
			failed: func(rs []*clientv3.GetResponse) (bool, error) {
				if len(rs) == 0 || len(rs[0].Kvs) == 0 || rs[0].Kvs[0].ModRevision != xkvs[0].ModRevision {
					return true, changed
				}
				return false, nil
			}})
		return prefixed("requeue", err)
	}
	tr, err := q.cli.Txn(ctx).If(same).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("queue: requeue: %w", err)
	}
	if !tr.Succeeded {
		return changed
	}
	return nil
}

// Purge deletes a dead letter for good. It returns ErrNotDead if the task is
// not a dead letter. One etcd transaction.
func (q *Queue) Purge(ctx context.Context, id string) error {
	if q.err != nil {
		return q.err
	}
	if !validID(id) {
		return fmt.Errorf("queue: purge: invalid task ID %q", id)
	}
	xk := q.keys.dead(id)
	tr, err := q.cli.Txn(ctx).If(clientv3.Compare(clientv3.Version(xk), ">", 0)).Then(
		clientv3.OpDelete(xk),
		clientv3.OpDelete(q.keys.task(id)),
		clientv3.OpDelete(q.keys.status(id)),
		clientv3.OpDelete(q.keys.progress(id)),
		clientv3.OpDelete(q.keys.attempt(id)),
		clientv3.OpDelete(q.keys.unused(id)),
	).Commit()
	if err != nil {
		return fmt.Errorf("queue: purge: %w", err)
	}
	if !tr.Succeeded {
		return fmt.Errorf("%w: %s", ErrNotDead, id)
	}
	return nil
}

// PurgeDead deletes every dead letter and returns how many.
func (q *Queue) PurgeDead(ctx context.Context) (int, error) {
	if q.err != nil {
		return 0, q.err
	}
	n := 0
	for {
		ds, err := q.DeadLetters(ctx, 100)
		if err != nil {
			return n, err
		}
		if len(ds) == 0 {
			return n, nil
		}
		for _, d := range ds {
			if err := q.Purge(ctx, d.ID); err != nil {
				return n, err
			}
			n++
		}
	}
}

// Delete deletes every key of the queue — tasks in every state, claims and
// records — in one request. Workers holding claims lose them (their Ack
// fails with ErrLost).
func (q *Queue) Delete(ctx context.Context) error {
	if q.err != nil {
		return q.err
	}
	if _, err := q.cli.Delete(ctx, q.keys.prefix, clientv3.WithPrefix()); err != nil {
		return fmt.Errorf("queue: delete: %w", err)
	}
	return nil
}
