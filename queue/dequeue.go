package queue

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/names"
	"github.com/concordkit/concord/internal/retry"
	"github.com/concordkit/concord/internal/turn"
	"github.com/concordkit/concord/leasekeeper"
)

// Dequeue blocks until a task is ready and claims it for the worker whose
// lease k keeps, or until ctx ends (ctx's cause) or the Queue is closed
// (ErrClosed). The claim is a key bound to k's lease: if the worker crashes
// or is cut off, the lease expires, the claim key goes with it, and the task
// is ready again for another worker. The task's Context is canceled before
// that can happen (see leasekeeper's safe deadline).
//
// A claim costs one etcd transaction (one Raft write); waiting costs none:
// this Queue keeps a watch on the queue's index and is woken by the event.
//
// When ctx ends while a claim is in flight, Dequeue waits up to 2 s more to
// give the claim back if it landed, so that the task is not hidden for the
// life of the worker's lease; a claim it could not settle is given back
// later, in the background.
//
// A task whose record cannot be read (not written by this package) is
// returned as an error wrapping ErrCorrupt once, and skipped afterwards by
// this Queue.
func (q *Queue) Dequeue(ctx context.Context, k *leasekeeper.Keeper) (*Task, error) {
	return q.dequeue(ctx, k, true)
}

// TryDequeue claims a task if one is ready now, and returns ErrEmpty
// otherwise. It waits only for this Queue's index to load (once).
func (q *Queue) TryDequeue(ctx context.Context, k *leasekeeper.Keeper) (*Task, error) {
	return q.dequeue(ctx, k, false)
}

func (q *Queue) dequeue(ctx context.Context, k *leasekeeper.Keeper, wait bool) (t *Task, err error) {
	if q.err != nil {
		return nil, q.err
	}
	if k == nil {
		return nil, errors.New("queue: dequeue: nil lease keeper")
	}
	ix, err := q.indexFor()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	ctx, finish := q.tel.startDequeue(ctx)
	defer func() { finish(t, err, time.Since(start)) }()
	bo := retry.RequestPolicy.New()
	for {
		lease, err := k.Lease(ctx)
		if err != nil {
			return nil, fmt.Errorf("queue: dequeue: %w", err)
		}
		// While paused, buffered tasks stay put: they are given back
		// with the others not handed out in time.
		if t := ix.takeBufferedUnlessPaused(lease); t != nil {
			t.handOut()
			return t, nil
		}
		es, err := ix.pick(ctx, wait, maxBatch)
		if err != nil {
			return nil, err
		}
		t, err := q.claim(ctx, ix, lease, es, k.TTL())
		switch {
		case t != nil:
			t.handOut()
			return t, nil
		case err == nil:
			// Lost the race for e, or e was dead-lettered: take the next.
			bo.Reset()
		case errors.Is(err, ErrCorrupt):
			return nil, err
		case ctx.Err() != nil:
			return nil, context.Cause(ctx)
		case errors.Is(err, rpctypes.ErrLeaseNotFound), retry.Retriable(err):
			if errors.Is(err, rpctypes.ErrLeaseNotFound) {
				// Have the keeper replace the lease now rather than at its
				// next renewal: until then every claim would fail on it.
				k.Invalidate(lease, err)
			}
			if werr := bo.Wait(ctx); werr != nil {
				return nil, werr
			}
		default:
			return nil, fmt.Errorf("queue: dequeue: %w", err)
		}
	}
}

// maxBatch is how many tasks one claim transaction takes at most. Extra
// tasks are only this worker's own (see choose) and wait in this
// Queue's buffer for its next Dequeue calls, so a batch saves round trips
// and Raft writes when a backlog exists, and is never larger than one when
// the queue is idle.
const maxBatch = 4

// claim tries to claim es in one transaction, each candidate in a nested
// transaction of its own: its index key must still exist and no claim may
// exist. Each nested transaction also bumps the attempt counter and reads the
// task record, the previous status and the last progress, so a claim needs
// no other round trip. It returns the first claimed task (the others are
// buffered), or (nil, nil) when others were first.
func (q *Queue) claim(ctx context.Context, ix *index, lease *leasekeeper.Lease, es []entry, ttl time.Duration) (*Task, error) {
	now := time.Now().UnixNano()
	vals := make([]string, len(es))
	ops := make([]clientv3.Op, len(es))
	for i, e := range es {
		ck := q.keys.claim(e.id)
		vals[i] = string(encodeClaim(claimRecord{Worker: q.worker, Nonce: names.NewID(), Lease: int64(lease.ID()), At: now}))
		ops[i] = clientv3.OpTxn(
			[]clientv3.Cmp{
				clientv3.Compare(clientv3.Version(e.key), ">", 0),
				clientv3.Compare(clientv3.CreateRevision(ck), "=", 0),
			},
			[]clientv3.Op{
				clientv3.OpPut(ck, vals[i], clientv3.WithLease(lease.ID())),
				clientv3.OpPut(q.keys.attempt(e.id), ""),
				clientv3.OpGet(q.keys.task(e.id)),
				clientv3.OpGet(q.keys.attempt(e.id)),
				clientv3.OpGet(q.keys.status(e.id)),
				clientv3.OpGet(q.keys.progress(e.id)),
				clientv3.OpGet(q.keys.unused(e.id)),
			}, nil)
	}
	sent := time.Now()
	// One attempt, about an election timeout long (retry.Attempt): a claim
	// sent to an etcd leader that died or hangs is given up, taken back
	// below, and Dequeue claims again once another leader is elected.
	actx, cancel := context.WithTimeout(ctx, retry.Attempt(ttl))
	// Guarded by the pause marker: once Pause has returned, no claim
	// lands, whatever this process's view of the index says.
	resp, err := q.cli.Txn(actx).If(clientv3.Compare(clientv3.CreateRevision(q.keys.paused()), "=", 0)).Then(ops...).Commit()
	cancel()
	if err == nil {
		ix.observeClaim(time.Since(sent))
	}
	if err != nil {
		// The claims may have been applied without our hearing of it.
		if outcomeUnknown(err) {
			q.takeBackUnsure(ctx, ix, lease, es, vals)
		}
		for _, e := range es {
			ix.release(e.id, 0)
		}
		return nil, err
	}
	if !resp.Succeeded {
		// Paused: the view learns it from the watch; hide the candidates
		// until it has caught up.
		for _, e := range es {
			ix.release(e.id, resp.Header.Revision)
		}
		return nil, nil
	}
	var first *Task
	var firstErr error
	var rest []*Task
	for i, e := range es {
		sub := resp.Responses[i].GetResponseTxn()
		ok := sub != nil && sub.Succeeded
		ix.count(!ok)
		q.tel.claimed(ctx, ok)
		if !ok {
			ix.release(e.id, resp.Header.Revision)
			continue
		}
		t, err := q.claimed(ctx, ix, lease, e, resp.Header.Revision, sub.Responses, ttl)
		switch {
		case err != nil && i == 0:
			firstErr = err
		case t == nil:
		case first == nil:
			first = t
		default:
			rest = append(rest, t)
		}
	}
	if len(rest) > 0 {
		ix.buffer(rest)
	}
	if first == nil && firstErr != nil {
		return nil, firstErr
	}
	return first, nil
}

// claimed turns one successful claim into a Task; rs are the responses of
// its nested transaction. A task that went over its attempts goes to the
// dead letters instead (nil, nil).
func (q *Queue) claimed(ctx context.Context, ix *index, lease *leasekeeper.Lease, e entry, token int64, rs []*etcdserverpb.ResponseOp, ttl time.Duration) (*Task, error) {
	id := e.id
	ck := q.keys.claim(id)
	get := func(i int) *mvccpb.KeyValue {
		if i >= len(rs) {
			return nil
		}
		kvs := rs[i].GetResponseRange().GetKvs()
		if len(kvs) == 0 {
			return nil
		}
		return kvs[0]
	}
	var meta taskMeta
	var payload []byte
	var err error
	if kv := get(2); kv == nil {
		err = fmt.Errorf("%w: index key %q has no task record", ErrCorrupt, e.key)
	} else {
		meta, payload, err = decodeTask(kv.Value)
	}
	if err != nil {
		q.giveBackCorrupt(ctx, ix, lease, id, token, get(3))
		return nil, fmt.Errorf("queue: dequeue: task %s: %w", id, err)
	}
	if meta.Timeout == 0 {
		meta.Timeout = int64(q.o.taskTimeout)
	}
	var claims, unused int64
	if kv := get(3); kv != nil {
		claims = kv.Version
	}
	if kv := get(6); kv != nil {
		unused = kv.Version
	}
	attempt := max(spent(claims, unused), 1) // this claim is one
	var prev statusRecord
	statusKV, progressKV := get(4), get(5)
	if statusKV != nil {
		prev, _ = decodeStatus(statusKV.Value) // only its attempt count is used; zero if unreadable
	}
	var checkpoint []byte
	var last progressRecord
	if progressKV != nil {
		if p, cp, perr := decodeProgress(progressKV.Value); perr == nil {
			checkpoint, last = cp, p
		}
	}
	t := &Task{
		ID:          id,
		Payload:     payload,
		Attempt:     attempt,
		Priority:    int(meta.Prio),
		EnqueuedAt:  time.Unix(0, meta.Enq),
		Redelivered: attempt > prev.Attempt+1 || prev.Taken,
		q:           q,
		ix:          ix,
		entry:       e,
		Group:       meta.Group,
		dedup:       meta.Dedup,
		bounded:     meta.Bounded,
		maxAttempts: meta.MaxAtt,
		checkpoint:  checkpoint,
		hasStatus:   statusKV != nil,
		hasProgress: progressKV != nil,
		hasUnused:   unused > 0,
		fraction:    last.Fraction,
		message:     last.Message,
		timeout:     time.Duration(meta.Timeout),
		producer:    producerOf(meta.Trace),
		lease:       lease,
		ttl:         ttl,
		op:          turn.New(),
	}
	// The claim key lives exactly as long as the lease: the lease's loss
	// is the claim's loss.
	t.Init(q.cli, lease, ttl, ck, token, func(cause error) error {
		return fmt.Errorf("%w: task %s: %w", ErrLost, id, cause)
	})
	ix.track(t)
	ix.release(id, token)
	if t.Redelivered {
		q.tel.redelivered(ctx)
	}
	if attempt > meta.MaxAtt {
		// The previous attempt was the last and its claim was lost: the task
		// goes to the dead letters rather than to a worker.
		return nil, q.deadOnClaim(ctx, ix, lease, t, fmt.Sprintf("claim lost on attempt %d of %d", attempt-1, meta.MaxAtt))
	}
	return t, nil
}

// spent is the number of attempts made: the claims made (the claim
// counter's Version) less those given back unused. Never negative, even
// for counters written by hand.
func spent(claims, unused int64) int {
	return int(max(claims-unused, 0))
}

// takeBackUnsure takes back the claims of a transaction whose outcome is
// unknown. They may have been applied without our hearing of it; bound to
// a lease this process keeps alive, they would hide the tasks until the
// process exits. What cannot be taken back now, the index goroutine
// retries, and a claim still on its way is given back when the watch shows
// it land. vals are the claim values the transaction wrote.
func (q *Queue) takeBackUnsure(ctx context.Context, ix *index, lease *leasekeeper.Lease, es []entry, vals []string) {
	refs := make([]claimRef, len(es))
	keys := make([]string, len(es))
	for i, e := range es {
		keys[i] = q.keys.claim(e.id)
		refs[i] = claimRef{keys[i], clientv3.Compare(clientv3.Value(keys[i]), "=", vals[i])}
	}
	ix.watchUnsure(keys, vals, lease)
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	ix.giveBackClaims(cctx, refs, lease)
	cancel()
}

// giveBackCorrupt gives back the claim token on a task whose record cannot
// be read, and hides the task from this Queue: the error is reported once,
// not on every Dequeue. counter is the attempt counter the claim read.
func (q *Queue) giveBackCorrupt(ctx context.Context, ix *index, lease *leasekeeper.Lease, id string, token int64, counter *mvccpb.KeyValue) {
	ck := q.keys.claim(id)
	held := clientv3.Compare(clientv3.CreateRevision(ck), "=", token)
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	gaveBack := false
	if counter != nil && counter.Version == 1 {
		// This claim created the task's claim counter: take it back with
		// the claim, so that nothing of it stays behind.
		_, err := q.cli.Txn(cctx).If(held).Then(clientv3.OpDelete(ck), clientv3.OpDelete(q.keys.attempt(id)), clientv3.OpDelete(q.keys.unused(id))).Commit()
		gaveBack = err == nil
	}
	if !gaveBack {
		ix.giveBackClaims(cctx, []claimRef{{ck, held}}, lease)
	}
	ix.release(id, math.MaxInt64)
}

// deadOnClaim dead-letters a task claimed past its last attempt. It returns
// nil once the task is a dead letter (or the claim was lost meanwhile).
func (q *Queue) deadOnClaim(ctx context.Context, ix *index, lease *leasekeeper.Lease, t *Task, reason string) error {
	// Detached: the claim is already written, and a canceled caller must not
	// leave the task claimed by a lease this process keeps.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := t.Fail(fctx, reason); err != nil && !errors.Is(err, ErrLost) {
		// Give the claim back rather than hide the task until the lease
		// ends; the next claim dead-letters it.
		ix.giveBackClaims(fctx, []claimRef{{t.Key(), t.Guard()[0]}}, lease)
		ix.untrack(t)
		t.Lose(fmt.Errorf("dead-lettering failed: %w", err))
		return err
	}
	return nil
}

// trimPrefix returns key below the queue prefix.
func (q *Queue) rel(key string) string { return strings.TrimPrefix(key, q.keys.prefix) }
