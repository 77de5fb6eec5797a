package queue

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel/trace"

	"github.com/concordkit/concord/internal/guard"
	"github.com/concordkit/concord/internal/holding"
	"github.com/concordkit/concord/internal/retry"
	"github.com/concordkit/concord/internal/turn"
	"github.com/concordkit/concord/leasekeeper"
)

// Task is a claimed task. Its exported fields are read-only. Its methods are
// safe for concurrent use; Ack, Nack, Fail and Progress are serialized, and
// one waiting for another returns when its own ctx ends.
//
// A task is a holding in concord's sense (see internal/holding), whose key
// is its claim: Token is the claim's create revision, the fencing token,
// which increases strictly across the claims of the task; Key and Lease are
// the claim's key and lease; Guard fences writes into etcd that must not be
// applied by a worker that lost the task. Context is canceled when the
// claim is lost (cause errors.Is ErrLost) or the task is finished by this
// worker (cause errors.Is ErrFinished): work on the task should run under
// it. Ack, Nack and Fail end it.
type Task struct {
	holding.Core
	ID          string
	Payload     []byte
	Attempt     int       // 1 for the first delivery
	Priority    int       // as enqueued
	EnqueuedAt  time.Time // producer's clock
	Redelivered bool      // a previous attempt's claim was lost (not nacked)
	Group       string    // the task's group (WithGroup), "" if none

	q           *Queue
	ix          *index
	entry       entry
	buffered    time.Time // when a batch put it in the Queue's buffer
	handedOut   time.Time // when Dequeue returned it, for the hold metric
	dedup       string
	bounded     bool // admitted under a bound: counts out when it leaves
	maxAttempts int
	checkpoint  []byte
	ttl         time.Duration // the claim's lease TTL: bound of a finishing call
	// hasStatus and hasProgress say whether s/<id> and p/<id> may exist:
	// the claim read them, and while the claim stands only this worker
	// writes them, so Ack deletes only keys that are there.
	hasStatus   bool
	hasProgress bool    // also set by Progress (under op)
	hasUnused   bool    // a claim of the task was given back unused
	fraction    float64 // the last Progress known (under op)
	message     string
	timeout     time.Duration // how long this worker may hold it; 0: no bound
	lease       *leasekeeper.Lease
	producer    trace.SpanContext // the Enqueue's span, if its context had one

	finishing atomic.Bool // a finishing transaction is in flight or done
	// op serializes Ack, Nack, Fail and Progress; a caller waiting behind
	// one stalled on etcd still returns when its own ctx ends.
	op      turn.Turn
	mu      sync.Mutex // protects outcome, result, timer
	outcome outcome    // pending until finished or lost
	result  error
	timer   *time.Timer // fires at the timeout; stopped when the task ends
}

// claimDeleted is called by the index when the claim key was deleted at rev.
func (t *Task) claimDeleted(rev int64) {
	if rev <= t.Token() || t.finishing.Load() {
		return
	}
	t.Lose(fmt.Errorf("claim key deleted at revision %d", rev))
}

// Checkpoint returns the checkpoint the last Progress call of an earlier
// attempt saved, or nil.
func (t *Task) Checkpoint() []byte { return t.checkpoint }

// MaxMessageLen bounds a progress message, in bytes.
const MaxMessageLen = 4096

// Progress records how far the task got, fenced: it is written only while
// this worker's claim stands, so a worker that lost the task cannot
// overwrite its new worker's progress (ErrLost). The checkpoint is handed to
// the next attempt by Task.Checkpoint if this one does not finish. One etcd
// transaction.
func (t *Task) Progress(ctx context.Context, fraction float64, message string, checkpoint []byte) error {
	if math.IsNaN(fraction) || fraction < 0 || fraction > 1 {
		return fmt.Errorf("queue: progress: fraction %v: must be in [0, 1]", fraction)
	}
	if len(message) > MaxMessageLen {
		return fmt.Errorf("queue: progress: message of %d bytes: at most %d", len(message), MaxMessageLen)
	}
	if !utf8.ValidString(message) {
		return fmt.Errorf("queue: progress: message %q: not valid UTF-8", message)
	}
	if limit := t.q.o.maxRequestBytes - requestOverhead; len(checkpoint) > limit {
		return fmt.Errorf("queue: progress: checkpoint of %d bytes is over the %d bytes one etcd request may carry (%d, less %d)",
			len(checkpoint), limit, t.q.o.maxRequestBytes, requestOverhead)
	}
	if err := t.op.Take(ctx); err != nil {
		return fmt.Errorf("queue: progress: task %s: %w", t.ID, err)
	}
	defer t.op.Done()
	if err := t.ended(pending); err != nil {
		return err
	}
	// Set before sending: a request whose answer is lost may have written it.
	t.hasProgress = true
	v := encodeProgress(progressRecord{Fraction: fraction, Message: message, Worker: t.q.worker, Attempt: t.Attempt, Token: t.Token(), At: time.Now().UnixNano()}, checkpoint)
	var resp *clientv3.TxnResponse
	err := t.send(ctx, func(ctx context.Context) (err error) {
		resp, err = t.q.cli.Txn(ctx).If(t.Guard()...).Then(clientv3.OpPut(t.q.keys.progress(t.ID), string(v))).Commit()
		return err
	})
	if err != nil {
		return fmt.Errorf("queue: progress: task %s: %w", t.ID, err)
	}
	if !resp.Succeeded {
		return t.lost("progress")
	}
	t.fraction, t.message = fraction, message
	return nil
}

// send runs one request of the task: each try bounded by retry.Attempt (about
// an election timeout, see retry.Attempt), tried again while its outcome is
// unknown (a request to an etcd leader that died or hangs), until ctx ends
// or the claim is lost (the task's context ends). fn must be safe to
// repeat: the guarded Progress writes the same value again; a finishing
// transaction recognises its own earlier commit (committedEarlier). A try
// given up may still land after a later Progress: the checkpoint the next
// attempt sees is then an earlier one, which at-least-once processing
// tolerates.
func (t *Task) send(ctx context.Context, fn func(context.Context) error) error {
	rctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer context.AfterFunc(t.Context(), func() { cancel(context.Cause(t.Context())) })()
	var last error
	err := retry.Attempts(rctx, retry.RequestPolicy, retry.Attempt(t.ttl), func(ctx context.Context) error {
		last = fn(ctx)
		return last
	})
	if err != nil && last != nil && rctx.Err() != nil && ctx.Err() == nil {
		// Stopped because the claim is gone: say what etcd said last.
		return fmt.Errorf("%w (after: %w)", err, last)
	}
	return err
}

// ended reports why the task can no longer be changed: the result of the
// same finishing call again (idempotence), ErrFinished for a different one,
// ErrLost once lost. Called with op held.
func (t *Task) ended(kind outcome) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch t.outcome {
	case pending:
		if kind != pending {
			// Under mu, so that the timeout sees a finishing call that
			// got past this check and leaves it to finish.
			t.finishing.Store(true)
		}
		return nil
	case lostIt:
		return t.result
	case kind:
		return errAgain
	}
	return fmt.Errorf("%w: task %s was %s", ErrFinished, t.ID, t.outcome)
}

// errAgain marks a repeated finishing call that already succeeded.
var errAgain = errors.New("again")

// lost records that the claim is gone. Called with op held.
func (t *Task) lost(what string) error {
	return t.endLost(fmt.Errorf("%w: task %s: %s: claim %d no longer held", ErrLost, t.ID, what, t.Token()))
}

// endLost ends the task as lost with err, which later calls return. Called
// with op held.
func (t *Task) endLost(err error) error {
	t.mu.Lock()
	t.outcome, t.result = lostIt, err
	t.mu.Unlock()
	t.End(err)
	t.cleanup()
	return err
}

func (t *Task) cleanup() {
	t.stopTimeout()
	t.StopFollowing()
	t.ix.untrack(t)
}

// stopTimeout stops the task's timer, if it has one and it has not fired.
func (t *Task) stopTimeout() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.timer != nil {
		t.timer.Stop()
	}
}

// handOut starts the task's timeout, if it has one, as Dequeue hands it to
// the worker's code.
func (t *Task) handOut() {
	if t.timeout <= 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.outcome == pending {
		t.timer = time.AfterFunc(t.timeout, t.timedOut)
	}
}

// timedOut takes the task from a worker that held it past its timeout: the
// context first, with a cause that errors.Is ErrTimeout and ErrLost, so
// that the worker is told before another can have the task; then the
// claim, released in etcd under the guard, so that another worker can take
// the task at once — or, after the last attempt, the task goes to the dead
// letters. The attempt counts. A finishing call already under way is left
// to finish.
func (t *Task) timedOut() {
	// Owned by the Queue: Close waits for it, and it does not start after.
	q := t.q
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return
	}
	q.timeouts.Add(1)
	q.mu.Unlock()
	defer q.timeouts.Done()
	reason := fmt.Sprintf("timed out after %v on attempt %d of %d", t.timeout, t.Attempt, t.maxAttempts)
	cause := fmt.Errorf("%w: %w: task %s %s", ErrTimeout, ErrLost, t.ID, reason)
	t.mu.Lock()
	if t.outcome != pending || t.finishing.Load() || t.Context().Err() != nil {
		t.mu.Unlock()
		return
	}
	t.outcome, t.result = lostIt, cause
	t.mu.Unlock()
	t.End(cause)

	// Detached and bounded like every release of a holding. The turn is
	// free at once: calls in flight ended with the context.
	ctx, cancel := context.WithTimeout(context.Background(), t.ttl)
	defer cancel()
	defer t.cleanup()
	if err := t.op.Take(ctx); err != nil {
		t.giveBackTaken()
		return
	}
	defer t.op.Done()
	last := t.Attempt >= t.maxAttempts
	var ops []clientv3.Op
	if last {
		ops = t.deadOps(reason)
	} else {
		st := statusRecord{State: StateQueued, Pos: t.q.rel(t.entry.key), Attempt: t.Attempt, Err: reason, At: time.Now().UnixNano(),
			Prio: int32(t.Priority), Dedup: t.dedup, Token: t.Token(), Worker: t.q.worker, Taken: true}
		if !t.entry.ready {
			st.State = StateDelayed
		}
		ops = []clientv3.Op{clientv3.OpDelete(t.Key()), clientv3.OpPut(t.q.keys.status(t.ID), string(encodeStatus(st)))}
	}
	var resp *clientv3.TxnResponse
	err := retry.Attempts(ctx, retry.RequestPolicy, retry.Attempt(t.ttl), func(ctx context.Context) (err error) {
		resp, err = t.q.cli.Txn(ctx).If(t.Guard()...).Then(ops...).Commit()
		return err
	})
	switch {
	case err != nil:
		t.giveBackTaken()
	case resp.Succeeded:
		t.q.tel.finished(ctx, t, "timeout")
		if last {
			t.q.tel.deadLettered(ctx)
		}
	}
}

// giveBackTaken leaves the claim of a timed-out task to the index's
// give-backs when it could not be released now: on a lease this process
// keeps alive, it would otherwise hide the task for as long as the process
// lives. The attempt stays spent.
func (t *Task) giveBackTaken() {
	if t.LeaseLost() {
		return // the claim goes with the lease
	}
	t.ix.addGiveBack(giveBack{key: t.Key(), held: t.Guard()[0], lease: t.lease, spent: true})
}

// Ack marks the task done: its claim, index key, record, attempt counter and
// progress are deleted and a finished record is kept for the retention (see
// WithRetention). ops, if any, are applied in the same fenced transaction, so
// a result can be recorded exactly once together with the acknowledgement
// (they must not touch the queue's keys, count against --max-txn-ops, and
// must fit in one request with the acknowledgement: both are checked before
// anything is sent).
// One etcd transaction, plus a lease grant once per retention/4.
//
// Ack is idempotent: once it succeeded, it returns nil again. It returns
// ErrLost if the claim was lost (the task may run again elsewhere) and
// ErrFinished if the task was nacked or failed. Like every finishing call
// (Nack, Fail), it is not cut short when ctx ends: it goes on, bounded by
// the claim's lease TTL, so that a worker that gives up does not leave the
// task claimed by a lease its process keeps alive.
func (t *Task) Ack(ctx context.Context, ops ...clientv3.Op) error {
	return t.ack(ctx, Completion{Ops: ops})
}

// Completion is what AckWith writes along with the acknowledgement, in the
// same transaction.
type Completion struct {
	Result []byte // stored as AckResult stores it (nil: none)
	// Enqueue are follow-up tasks (EnqueueTx, of this queue or another on
	// the same cluster): they are enqueued if and only if the Ack lands.
	// One whose dedup ID an unfinished task holds makes AckWith fail with
	// ErrDedupHeld, having written nothing: the task is still held.
	Enqueue []TxEnqueue
	Ops     []clientv3.Op // the caller's writes, as Ack's ops
}

// ErrDedupHeld is returned by AckWith when a follow-up task's dedup ID is
// held by an unfinished task: nothing was written, and the task is still
// held (Ack it without that follow-up, or later).
var ErrDedupHeld = errors.New("queue: a follow-up's dedup ID is held by an unfinished task")

// AckWith is Ack with a result and follow-up tasks: a pipeline step acks
// its task and enqueues the next step's in one transaction, so the next
// step exists if and only if this one is done. Idempotent like Ack.
func (t *Task) AckWith(ctx context.Context, c Completion) error {
	if len(c.Result) > MaxResultBytes {
		return fmt.Errorf("queue: ack of task %s: result of %d bytes, over MaxResultBytes (%d)", t.ID, len(c.Result), MaxResultBytes)
	}
	for i, e := range c.Enqueue {
		if e.ID == "" || len(e.Ops) == 0 {
			return fmt.Errorf("queue: ack of task %s: follow-up %d: not made by EnqueueTx", t.ID, i)
		}
	}
	return t.ack(ctx, c)
}

// MaxResultBytes is the largest result AckResult stores.
const MaxResultBytes = 256 << 10

// AckResult is Ack that also stores result (up to MaxResultBytes; a nil
// result stores none), kept as long as the finished record (WithRetention)
// and read by Result from any process. The result is written in the same
// transaction as the acknowledgement and ops.
func (t *Task) AckResult(ctx context.Context, result []byte, ops ...clientv3.Op) error {
	return t.AckWith(ctx, Completion{Result: result, Ops: ops})
}

func (t *Task) ack(ctx context.Context, c Completion) error {
	result, ops := c.Result, c.Ops
	// The result and the follow-ups share the request with ops: they leave
	// them less room. The follow-ups' own operations may write under this
	// queue's prefix; the caller's may not.
	room := t.q.o.maxRequestBytes - len(result)
	var cmps []clientv3.Cmp
	var follow []clientv3.Op
	for _, e := range c.Enqueue {
		cmps = append(cmps, e.Cmps...)
		follow = append(follow, e.Ops...)
		for _, op := range e.Ops {
			room -= len(op.KeyBytes()) + len(op.ValueBytes())
		}
	}
	if err := guard.CheckOps("queue: ack of task "+t.ID, ops, room, t.q.keys.prefix); err != nil {
		return err
	}
	ops = append(ops[:len(ops):len(ops)], follow...)
	return t.finish(ctx, true, acked, cmps, func(lease clientv3.LeaseID) []clientv3.Op {
		out := t.endOps()
		out = append(out,
			clientv3.OpDelete(t.q.keys.task(t.ID)),
			clientv3.OpDelete(t.q.keys.attempt(t.ID)),
		)
		// Deleting a key that is not there still costs every member an
		// index lookup; most tasks never had a progress or status record,
		// or a claim given back unused.
		if t.hasUnused {
			out = append(out, clientv3.OpDelete(t.q.keys.unused(t.ID)))
		}
		if t.hasProgress {
			out = append(out, clientv3.OpDelete(t.q.keys.progress(t.ID)))
		}
		if t.hasStatus {
			out = append(out, clientv3.OpDelete(t.q.keys.status(t.ID)))
		}
		out = append(out, clientv3.OpPut(t.q.keys.finished(t.ID), string(encodeStatus(statusRecord{
			State: StateDone, Attempt: t.Attempt, At: time.Now().UnixNano(), Prio: int32(t.Priority),
			Dedup: t.dedup, Token: t.Token(), Worker: t.q.worker, Fraction: t.fraction, Message: t.message,
		})), clientv3.WithLease(lease)))
		out = append(out, t.leaveOps()...)
		if result != nil {
			out = append(out, clientv3.OpPut(t.q.keys.result(t.ID), string(result), clientv3.WithLease(lease)))
		}
		return append(out, ops...)
	}, true)
}

// Nack gives the task back for another attempt after retryAfter (if
// positive; otherwise the queue's retry backoff for this attempt). Its last
// progress checkpoint is kept for the next attempt. On the last attempt
// (WithMaxAttempts) the task goes to the dead letters instead. One etcd
// transaction. Idempotent like Ack.
func (t *Task) Nack(ctx context.Context, retryAfter time.Duration) error {
	if t.Attempt >= t.maxAttempts {
		return t.dead(ctx, nacked, fmt.Sprintf("nacked on attempt %d of %d", t.Attempt, t.maxAttempts))
	}
	if retryAfter <= 0 {
		retryAfter = t.q.backoffFor(t.Attempt)
	}
	if at := time.Now().Add(retryAfter); at.After(latestReady) {
		return fmt.Errorf("queue: nack of task %s: retry at %s is past %s, the latest a task's record can hold",
			t.ID, at.UTC().Format(time.RFC3339), latestReady.Format(time.RFC3339))
	}
	return t.finish(ctx, true, nacked, nil, func(clientv3.LeaseID) []clientv3.Op {
		now := time.Now()
		at := now.Add(retryAfter).UnixNano()
		st := statusRecord{State: StateDelayed, Attempt: t.Attempt, Err: "nacked", At: now.UnixNano(),
			Prio: int32(t.Priority), Dedup: t.dedup, Token: t.Token(), Worker: t.q.worker}
		pos := t.q.keys.delayed(at, int32(t.Priority), t.ID)
		if retryAfter == 0 {
			st.State = StateQueued
			pos = t.q.keys.ready(int32(t.Priority), at, t.ID)
		}
		st.Pos = t.q.rel(pos)
		out := t.endOps()
		return append(out,
			clientv3.OpPut(pos, ""),
			clientv3.OpPut(t.q.keys.status(t.ID), string(encodeStatus(st))),
		)
	}, false)
}

// Fail sends the task straight to the dead letters with reason, whatever
// attempts remain. Its record and last checkpoint are kept there until it is
// requeued or purged. One etcd transaction. Idempotent like Ack.
func (t *Task) Fail(ctx context.Context, reason string) error {
	return t.dead(ctx, failed, reason)
}

func (t *Task) dead(ctx context.Context, kind outcome, reason string) error {
	if len(reason) > MaxMessageLen {
		// Cut at a character boundary: the record is JSON, which would
		// replace a split character's bytes.
		cut := MaxMessageLen
		for cut > 0 && !utf8.RuneStart(reason[cut]) {
			cut--
		}
		reason = reason[:cut]
	}
	err := t.finish(ctx, true, kind, nil, func(clientv3.LeaseID) []clientv3.Op { return t.deadOps(reason) }, false)
	if err == nil {
		t.q.tel.deadLettered(ctx)
	}
	return err
}

// deadOps moves the task to the dead letters with reason.
func (t *Task) deadOps(reason string) []clientv3.Op {
	now := time.Now().UnixNano()
	out := t.endOps()
	out = append(out,
		clientv3.OpDelete(t.q.keys.attempt(t.ID)),
		clientv3.OpDelete(t.q.keys.unused(t.ID)),
		clientv3.OpPut(t.q.keys.dead(t.ID), string(encodeDead(deadRecord{Reason: reason, Attempt: t.Attempt, At: now, Prio: int32(t.Priority), Token: t.Token()}))),
		clientv3.OpPut(t.q.keys.status(t.ID), string(encodeStatus(statusRecord{State: StateDead, Attempt: t.Attempt, Err: reason, At: now,
			Prio: int32(t.Priority), Dedup: t.dedup, Token: t.Token(), Worker: t.q.worker}))),
	)
	return append(out, t.leaveOps()...)
}

// endOps deletes the claim and the index key.
func (t *Task) endOps() []clientv3.Op {
	return []clientv3.Op{clientv3.OpDelete(t.Key()), clientv3.OpDelete(t.entry.key)}
}

// dedupRelease frees the dedup ID if this task still holds it.
func (t *Task) dedupRelease() []clientv3.Op {
	if t.dedup == "" {
		return nil
	}
	dk := t.q.keys.dedup(t.dedup)
	return []clientv3.Op{clientv3.OpTxn(
		[]clientv3.Cmp{clientv3.Compare(clientv3.Value(dk), "=", t.ID)},
		[]clientv3.Op{clientv3.OpDelete(dk)}, nil)}
}

// finish runs one fenced finishing transaction. Local state changes only
// after etcd answered. With detached, the requests are detached from ctx's
// cancellation and bounded by the claim's TTL, as every release of a
// holding is: a caller that gives up still finishes the task, instead of
// leaving it claimed by a lease its process keeps alive. Waits behind
// another call's turn (this task's, or the queue's retention grant) still
// end with ctx. extra are comparisons the transaction needs besides the
// claim's guard (follow-ups' dedup IDs): one that fails while the claim
// stands is ErrDedupHeld, and the task stays held.
func (t *Task) finish(ctx context.Context, detached bool, kind outcome, extra []clientv3.Cmp, build func(clientv3.LeaseID) []clientv3.Op, wantLease bool) error {
	if err := t.op.Take(ctx); err != nil {
		return fmt.Errorf("queue: %s: task %s: %w", kind.verb(), t.ID, err)
	}
	defer t.op.Done()
	wait := ctx
	if detached {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), t.ttl)
		defer cancel()
	}
	switch err := t.ended(kind); {
	case errors.Is(err, errAgain):
		return nil
	case err != nil:
		return err
	}
	var lease clientv3.LeaseID
	for try := 0; ; try++ {
		if wantLease {
			var err error
			if lease, err = t.q.retentionLeaseID(wait, ctx, try > 0, retry.Attempt(t.ttl)); err != nil {
				t.finishing.Store(false)
				return err
			}
		}
		ops := build(lease)
		if len(ops) > t.q.o.maxTxnOps {
			t.finishing.Store(false)
			return fmt.Errorf("queue: %s: %d operations in one transaction, over the %d etcd accepts", kind.verb(), len(ops), t.q.o.maxTxnOps)
		}
		// The Else reads let a retry after an answer that never came (the
		// first attempt may have committed) recognise its own outcome by the
		// token in the record it wrote, rather than report a lost claim.
		var resp *clientv3.TxnResponse
		err := t.send(ctx, func(ctx context.Context) (err error) {
			resp, err = t.q.cli.Txn(ctx).If(append(t.Guard(), extra...)...).Then(ops...).Else(
				clientv3.OpGet(t.q.keys.finished(t.ID)),
				clientv3.OpGet(t.q.keys.status(t.ID)),
				clientv3.OpGet(t.q.keys.dead(t.ID)),
				clientv3.OpGet(t.q.keys.claim(t.ID)),
			).Commit()
			return err
		})
		if err != nil {
			if wantLease && try == 0 && errors.Is(err, rpctypes.ErrLeaseNotFound) {
				continue // the retention lease expired early (clock or restart): grant another
			}
			// Unknown outcome: the claim stands or is gone; a retry tells.
			t.finishing.Store(false)
			return fmt.Errorf("queue: %s: task %s: %w", kind.verb(), t.ID, err)
		}
		if !resp.Succeeded && !t.committedEarlier(kind, resp) {
			if claim := resp.Responses[3].GetResponseRange().GetKvs(); len(extra) > 0 && len(claim) > 0 && claim[0].CreateRevision == t.Token() {
				// The claim stands: a follow-up's dedup ID refused it.
				t.finishing.Store(false)
				return fmt.Errorf("%w: ack of task %s: nothing written", ErrDedupHeld, t.ID)
			}
			if canceledClaim(resp, t.Token()) {
				return t.canceledMeanwhile(kind.verb())
			}
			return t.lost(kind.verb())
		}
		t.mu.Lock()
		t.outcome = kind
		t.mu.Unlock()
		t.End(fmt.Errorf("%w: task %s: %s", ErrFinished, t.ID, kind))
		t.cleanup()
		t.q.tel.finished(ctx, t, kind.verb())
		return nil
	}
}

// canceledClaim reports whether the finished record read by a failed
// finishing transaction (its first Else read) says the claim with token
// was canceled.
func canceledClaim(resp *clientv3.TxnResponse, token int64) bool {
	if len(resp.Responses) == 0 {
		return false
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) == 0 {
		return false
	}
	st, err := decodeStatus(kvs[0].Value)
	return err == nil && st.State == StateCanceled && st.Token == token
}

// canceledMeanwhile records that the task was canceled before this
// worker's call landed. Called with op held.
func (t *Task) canceledMeanwhile(what string) error {
	return t.endLost(fmt.Errorf("%w: %w: task %s: %s: canceled", ErrCanceled, ErrLost, t.ID, what))
}

// committedEarlier reports whether the records read by a failed finishing
// transaction show that an earlier attempt of this worker, whose answer was
// lost, committed the same outcome.
func (t *Task) committedEarlier(kind outcome, resp *clientv3.TxnResponse) bool {
	return committedEarlier(kind, t.Attempt, t.maxAttempts, t.Token(), resp)
}

func committedEarlier(kind outcome, attempt, maxAttempts int, token int64, resp *clientv3.TxnResponse) bool {
	val := func(i int) []byte {
		if i >= len(resp.Responses) {
			return nil
		}
		kvs := resp.Responses[i].GetResponseRange().GetKvs()
		if len(kvs) == 0 {
			return nil
		}
		return kvs[0].Value
	}
	switch kind {
	case acked:
		if b := val(0); b != nil {
			st, err := decodeStatus(b)
			return err == nil && st.State == StateDone && st.Token == token
		}
	case nacked:
		if b := val(1); b != nil {
			st, err := decodeStatus(b)
			if err == nil && (st.State == StateQueued || st.State == StateDelayed) && st.Token == token {
				return true
			}
		}
		// A Nack on the last attempt dead-letters the task, like Fail.
		if attempt >= maxAttempts {
			if b := val(2); b != nil {
				d, err := decodeDead(b)
				return err == nil && d.Token == token
			}
		}
	case failed:
		if b := val(2); b != nil {
			d, err := decodeDead(b)
			return err == nil && d.Token == token
		}
	}
	return false
}

// release gives back a claim never handed to a worker: the task keeps its
// place, the claim spends no attempt (the unused counter takes it back), and
// the next claim is not taken for a redelivery.
func (t *Task) release(ctx context.Context) error {
	// Not detached: the give-back's caller bounds it, and gives back what
	// it could not later.
	return t.finish(ctx, false, released, nil, func(clientv3.LeaseID) []clientv3.Op {
		st := statusRecord{State: StateQueued, Pos: t.q.rel(t.entry.key), Attempt: t.Attempt - 1, At: time.Now().UnixNano(),
			Prio: int32(t.Priority), Dedup: t.dedup, Token: t.Token(), Worker: t.q.worker}
		if !t.entry.ready {
			st.State = StateDelayed
		}
		return []clientv3.Op{
			clientv3.OpDelete(t.Key()),
			clientv3.OpPut(t.q.keys.unused(t.ID), ""),
			clientv3.OpPut(t.q.keys.status(t.ID), string(encodeStatus(st))),
		}
	}, false)
}
