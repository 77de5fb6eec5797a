package queue

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/retry"
)

// cancelTries bounds how many times Cancel reads the task again after the
// task changed between its read and its write (claimed, nacked, moved).
const cancelTries = 10

// Cancel cancels a task from any process. A queued or delayed task is
// removed and its dedup ID freed. A running task's claim is deleted in the
// same transaction, and its worker's Context ends with a cause that
// errors.Is ErrCanceled (and ErrLost) as soon as that worker's Queue sees
// the change; the task ends as canceled whatever the worker does next: its
// Ack, Nack and Fail return that error (or ErrLost, from a worker that was
// cut off while it happened) and its guarded writes are refused. Status
// then reports StateCanceled for the retention (WithRetention).
//
// It returns ErrNotFound for a task the queue does not know, and an error
// wrapping ErrFinished for one already finished (acknowledged, canceled or a
// dead letter: Purge deletes those). Cost: one read transaction and one
// write transaction (more if the task changes meanwhile), plus a retention
// lease grant once per retention/4 per process.
func (q *Queue) Cancel(ctx context.Context, id string) error {
	if q.err != nil {
		return q.err
	}
	if !validID(id) {
		return fmt.Errorf("queue: cancel: invalid task ID %q", id)
	}
	for range cancelTries {
		done, err := q.cancelOnce(ctx, id)
		if err != nil {
			return err
		}
		if done {
			return nil
		}
	}
	return fmt.Errorf("queue: cancel %s: the task changed under each of %d tries", id, cancelTries)
}

// cancelOnce reads the task and cancels it with a transaction that holds
// only if nothing changed since the read. It reports false when something
// did.
func (q *Queue) cancelOnce(ctx context.Context, id string) (bool, error) {
	k := q.keys
	resp, err := q.cli.Txn(ctx).Then(
		clientv3.OpGet(k.task(id)),
		clientv3.OpGet(k.status(id)),
		clientv3.OpGet(k.claim(id)),
		clientv3.OpGet(k.finished(id)),
		clientv3.OpGet(k.dead(id)),
		clientv3.OpGet(k.attempt(id)),
		clientv3.OpGet(k.unused(id)),
		clientv3.OpGet(k.progress(id)),
	).Commit()
	if err != nil {
		return false, fmt.Errorf("queue: cancel %s: %w", id, err)
	}
	kv := func(i int) ([]byte, int64, int64, int64, bool) {
		kvs := resp.Responses[i].GetResponseRange().GetKvs()
		if len(kvs) == 0 {
			return nil, 0, 0, 0, false
		}
		return kvs[0].Value, kvs[0].CreateRevision, kvs[0].ModRevision, kvs[0].Version, true
	}
	tv, _, tmod, _, tok := kv(0)
	sv, _, smod, _, sok := kv(1)
	cv, token, _, _, cok := kv(2)
	fv, _, _, _, fok := kv(3)
	if _, _, _, _, ok := kv(4); ok {
		return false, fmt.Errorf("%w: task %s is a dead letter (Purge deletes it)", ErrFinished, id)
	}
	if !tok {
		if fok {
			if rec, err := decodeStatus(fv); err == nil {
				return false, fmt.Errorf("%w: task %s was %s", ErrFinished, id, rec.State)
			}
		}
		return false, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	meta, _, err := decodeTask(tv)
	if err != nil {
		return false, fmt.Errorf("queue: cancel %s: %w", id, err)
	}
	rec, err := q.statusOrTask(id, sv, sok, tv)
	if err != nil {
		return false, fmt.Errorf("queue: cancel %s: %w", id, err)
	}
	pos := k.prefix + rec.Pos
	if _, err := parseIndexKey(pos, strings.TrimPrefix(pos, k.index())); err != nil {
		return false, fmt.Errorf("queue: cancel %s: status: %w", id, err)
	}
	final := statusRecord{State: StateCanceled, At: time.Now().UnixNano(), Prio: meta.Prio, Dedup: meta.Dedup}
	if _, _, _, claims, ok := kv(5); ok {
		_, _, _, unused, _ := kv(6)
		final.Attempt = spent(claims, unused)
	}
	if cok {
		final.Token = token
		if c, err := decodeClaim(cv); err == nil {
			final.Worker = c.Worker
		}
	}
	// The last progress stays readable, as a finished task's does (a
	// Progress landing after this read is not in it).
	if pv, _, _, _, ok := kv(7); ok {
		if p, _, err := decodeProgress(pv); err == nil {
			final.Fraction, final.Message = p.Fraction, p.Message
		}
	}
	lease, err := q.retentionLeaseID(ctx, ctx, false, retry.Attempt(q.retentionPeriod()))
	if err != nil {
		return false, fmt.Errorf("queue: cancel %s: %w", id, err)
	}
	cmps := []clientv3.Cmp{
		clientv3.Compare(clientv3.ModRevision(k.task(id)), "=", tmod),
		clientv3.Compare(clientv3.ModRevision(k.status(id)), "=", smod),
		clientv3.Compare(clientv3.CreateRevision(k.claim(id)), "=", token),
	}
	ops := []clientv3.Op{
		clientv3.OpDelete(pos),
		clientv3.OpDelete(k.task(id)),
		clientv3.OpDelete(k.status(id)),
		clientv3.OpDelete(k.attempt(id)),
		clientv3.OpDelete(k.unused(id)),
		clientv3.OpDelete(k.progress(id)),
		clientv3.OpPut(k.finished(id), string(encodeStatus(final)), clientv3.WithLease(lease)),
		// The marker tells the worker's Queue, through its index watch,
		// that its claim was canceled rather than lost; Stats counts them.
		clientv3.OpPut(k.canceled(id), strconv.FormatInt(token, 10), clientv3.WithLease(lease)),
	}
	if cok {
		ops = append(ops, clientv3.OpDelete(k.claim(id)))
	}
	if meta.Group != "" {
		ops = append(ops, clientv3.OpDelete(k.member(groupHash(meta.Group), id)))
	}
	ops = append(ops, k.departOps(meta.Bounded)...)
	if meta.Dedup != "" {
		dk := k.dedup(meta.Dedup)
		ops = append(ops, clientv3.OpTxn(
			[]clientv3.Cmp{clientv3.Compare(clientv3.Value(dk), "=", id)},
			[]clientv3.Op{clientv3.OpDelete(dk)}, nil))
	}
	w, err := q.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return false, fmt.Errorf("queue: cancel %s: %w", id, err)
	}
	return w.Succeeded, nil
}

// canceledToken parses a cancel marker's value: the token of the claim the
// cancel deleted, 0 if the task was not running.
func canceledToken(v []byte) (int64, bool) {
	n, err := strconv.ParseInt(string(v), 10, 64)
	return n, err == nil && n >= 0
}

// canceledRemotely ends the task as canceled by Cancel (in another process,
// or this one): called by the index when it sees the cancel marker of this
// task's claim. A finishing call in flight finds out from its transaction.
func (t *Task) canceledRemotely() {
	cause := fmt.Errorf("%w: %w: task %s", ErrCanceled, ErrLost, t.ID)
	t.mu.Lock()
	if t.outcome != pending || t.finishing.Load() {
		t.mu.Unlock()
		return
	}
	t.outcome, t.result = lostIt, cause
	t.mu.Unlock()
	t.End(cause)
}
