package queue

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/retry"
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
	bo := retry.Backoff{Min: 20 * time.Millisecond, Max: time.Second}
	for {
		lease, err := k.Lease(ctx)
		if err != nil {
			return nil, fmt.Errorf("queue: dequeue: %w", err)
		}
		e, err := ix.pick(ctx, wait)
		if err != nil {
			return nil, err
		}
		t, err := q.claim(ctx, ix, lease, e)
		switch {
		case t != nil:
			return t, nil
		case err == nil:
			// Lost the race for e, or e was dead-lettered: take the next.
			bo.Reset()
		case errors.Is(err, ErrCorrupt):
			return nil, err
		case ctx.Err() != nil:
			return nil, context.Cause(ctx)
		case errors.Is(err, rpctypes.ErrLeaseNotFound), retry.Retriable(err):
			if werr := bo.Wait(ctx); werr != nil {
				return nil, werr
			}
		default:
			return nil, fmt.Errorf("queue: dequeue: %w", err)
		}
	}
}

func newNonce() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// claim tries to claim e in one transaction: the index key must still exist
// and no claim may exist. The same transaction bumps the attempt counter and
// reads the task record, the previous status and the last progress, so the
// claim needs no other round trip. It returns (nil, nil) when someone else
// was first.
func (q *Queue) claim(ctx context.Context, ix *index, lease *leasekeeper.Lease, e entry) (*Task, error) {
	id := e.id
	ck := q.keys.claim(id)
	cv := string(encodeClaim(claimRecord{Worker: q.worker, Nonce: newNonce(), Lease: int64(lease.ID()), At: time.Now().UnixNano()}))
	resp, err := q.cli.Txn(ctx).If(
		clientv3.Compare(clientv3.Version(e.key), ">", 0),
		clientv3.Compare(clientv3.CreateRevision(ck), "=", 0),
	).Then(
		clientv3.OpPut(ck, cv, clientv3.WithLease(lease.ID())),
		clientv3.OpPut(q.keys.attempt(id), ""),
		clientv3.OpGet(q.keys.task(id)),
		clientv3.OpGet(q.keys.attempt(id)),
		clientv3.OpGet(q.keys.status(id)),
		clientv3.OpGet(q.keys.progress(id)),
	).Commit()
	if err != nil {
		ix.release(id, 0)
		// The claim may have been applied without our hearing of it. Bound
		// to a lease this process keeps alive, it would hide the task until
		// the process exits, so take it back if it is ours.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		_, _ = q.cli.Txn(cctx).If(clientv3.Compare(clientv3.Value(ck), "=", cv)).Then(clientv3.OpDelete(ck)).Commit()
		cancel()
		return nil, err
	}
	ix.count(!resp.Succeeded)
	q.tel.claimed(ctx, resp.Succeeded)
	if !resp.Succeeded {
		ix.release(id, resp.Header.Revision)
		return nil, nil
	}
	token := resp.Header.Revision
	held := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(ck), "=", token)}
	rs := resp.Responses
	get := func(i int) []byte {
		kvs := rs[i].GetResponseRange().GetKvs()
		if len(kvs) == 0 {
			return nil
		}
		return kvs[0].Value
	}
	tkvs := rs[2].GetResponseRange().GetKvs()
	var meta taskMeta
	var payload []byte
	if len(tkvs) == 0 {
		err = fmt.Errorf("%w: index key %q has no task record", ErrCorrupt, e.key)
	} else {
		meta, payload, err = decodeTask(tkvs[0].Value)
	}
	if err != nil {
		// Give the claim back and hide the entry from this Queue: the
		// error is reported once, not on every Dequeue.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		_, _ = q.cli.Txn(cctx).If(held...).Then(clientv3.OpDelete(ck)).Commit()
		cancel()
		ix.release(id, math.MaxInt64)
		return nil, fmt.Errorf("queue: dequeue: task %s: %w", id, err)
	}
	attempt := 1
	if akvs := rs[3].GetResponseRange().GetKvs(); len(akvs) > 0 {
		attempt = int(akvs[0].Version)
	}
	var prev statusRecord
	if b := get(4); b != nil {
		prev, _ = decodeStatus(b) // only its attempt count is used; zero if unreadable
	}
	var checkpoint []byte
	var prog progressRecord
	if b := get(5); b != nil {
		if p, cp, perr := decodeProgress(b); perr == nil {
			prog, checkpoint = p, cp
		}
	}
	t := &Task{
		ID:          id,
		Payload:     payload,
		Attempt:     attempt,
		Priority:    int(meta.Prio),
		EnqueuedAt:  time.Unix(0, meta.Enq),
		Redelivered: attempt > prev.Attempt+1,
		q:           q,
		ix:          ix,
		entry:       e,
		token:       token,
		claimKey:    ck,
		held:        held,
		dedup:       meta.Dedup,
		maxAttempts: meta.MaxAtt,
		checkpoint:  checkpoint,
		progress:    prog,
	}
	t.bind(lease)
	ix.track(t)
	ix.release(id, token)
	if t.Redelivered {
		q.tel.redelivered(ctx)
	}
	if attempt > meta.MaxAtt {
		// The previous attempt was the last and its claim was lost: the task
		// goes to the dead letters rather than to a worker.
		reason := fmt.Sprintf("claim lost on attempt %d of %d", attempt-1, meta.MaxAtt)
		if err := t.Fail(ctx, reason); err != nil && !errors.Is(err, ErrLost) {
			return nil, err
		}
		return nil, nil
	}
	return t, nil
}

// trimPrefix returns key below the queue prefix.
func (q *Queue) rel(key string) string { return strings.TrimPrefix(key, q.keys.prefix) }
