package queue

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"
	"unicode/utf8"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// EnqueueOption sets a property of one task.
type EnqueueOption func(*enqueueOptions)

type enqueueOptions struct {
	prio      int32
	notBefore time.Time
	delay     time.Duration
	dedup     string
	timeout   time.Duration
	group     string
	wait      bool
	errs      []error
}

// WithPriority sets the task's priority: higher is dequeued first. Default 0;
// any value that fits in an int32.
func WithPriority(p int) EnqueueOption {
	return func(o *enqueueOptions) {
		if p < math.MinInt32 || p > math.MaxInt32 {
			o.errs = append(o.errs, fmt.Errorf("priority %d: out of int32 range", p))
			return
		}
		o.prio = int32(p)
	}
}

// WithNotBefore makes the task ready at t rather than now.
func WithNotBefore(t time.Time) EnqueueOption {
	return func(o *enqueueOptions) { o.notBefore = t }
}

// WithDelay makes the task ready d from now.
func WithDelay(d time.Duration) EnqueueOption {
	return func(o *enqueueOptions) {
		if d < 0 {
			o.errs = append(o.errs, fmt.Errorf("delay %v: must not be negative", d))
		}
		o.delay = d
	}
}

// WithTimeout bounds how long a worker may hold the task, from the moment
// Dequeue hands it out. When the time passes and the worker has not
// finished the task, its Context ends with a cause that errors.Is ErrTimeout
// and ErrLost, and then its claim is released in etcd, guarded, so that
// another worker can take it at once (or, after the last attempt, it goes to
// the dead letters). The worker's later Ack, Nack, Fail and Progress return
// that error, and its guarded writes are refused. The timed-out attempt
// counts. The timer runs in the worker's process: a process that is paused
// or cut off is handled by its lease instead, and so is a task whose
// Queue was closed (Close stops the timers). It overrides the consumer's
// WithTaskTimeout.
func WithTimeout(d time.Duration) EnqueueOption {
	return func(o *enqueueOptions) {
		if d <= 0 {
			o.errs = append(o.errs, fmt.Errorf("timeout %v: must be positive", d))
		}
		o.timeout = d
	}
}

// checkLabel reports why s cannot be a caller's label of the kind what
// (a dedup ID, a group or worker name): 1 to max bytes of UTF-8 without NUL,
// which etcd keys and the JSON records carry unchanged.
func checkLabel(what, s string, max int) error {
	switch {
	case s == "" || len(s) > max:
		return fmt.Errorf("%s of %d bytes: must be 1 to %d", what, len(s), max)
	case !utf8.ValidString(s) || strings.ContainsRune(s, 0):
		return fmt.Errorf("%s %q: must be valid UTF-8 without NUL", what, s)
	}
	return nil
}

// MaxDedupIDLen is the longest dedup ID accepted, in bytes.
const MaxDedupIDLen = 512

// WithDedupID makes the enqueue idempotent: while a task enqueued with the same
// dedup ID is not finished (acknowledged or dead), Enqueue returns that
// task's ID and writes nothing.
func WithDedupID(s string) EnqueueOption {
	return func(o *enqueueOptions) {
		if err := checkLabel("dedup ID", s, MaxDedupIDLen); err != nil {
			o.errs = append(o.errs, err)
		}
		o.dedup = s
	}
}

// WithWaitIfFull makes an enqueue into a bounded queue (WithMaxSize) that
// finds it full wait under its context until a task leaves, rather than
// return ErrFull. An EnqueueBatch waits if any of its items says so.
func WithWaitIfFull() EnqueueOption {
	return func(o *enqueueOptions) { o.wait = true }
}

// MaxGroupLen is the longest group name accepted, in bytes.
const MaxGroupLen = 512

// WithGroup puts the task in a group: the tasks of one group are handed
// out one at a time, in the order their enqueues committed in etcd, each
// only once the one before it is finished (acknowledged, dead-lettered or
// canceled); tasks of different groups, and tasks in no group, run in
// parallel. Within a group, this order goes before priority and ready
// time: a delayed or retried task holds its group up until it is done.
// See Groups in the package doc.
func WithGroup(name string) EnqueueOption {
	return func(o *enqueueOptions) {
		if err := checkLabel("group name", name, MaxGroupLen); err != nil {
			o.errs = append(o.errs, err)
		}
		o.group = name
	}
}

// Item is one task of an EnqueueBatch.
type Item struct {
	Payload []byte
	Options []EnqueueOption
}

// prepared is a task ready to be written.
type prepared struct {
	id    string
	dedup string
	ops   []clientv3.Op
	bytes int
	wait  bool // WithWaitIfFull
}

// latestReady is the latest ready time a task can have: records and index
// keys hold times as Unix nanoseconds in an int64.
var latestReady = time.Unix(0, math.MaxInt64).UTC()

// requestOverhead leaves room in a request for keys, the status record and
// framing around a task's payload.
const requestOverhead = 16 * 1024

func (q *Queue) prepare(ctx context.Context, payload []byte, opts []EnqueueOption) (prepared, error) {
	var eo enqueueOptions
	for _, opt := range opts {
		opt(&eo)
	}
	if len(eo.errs) > 0 {
		return prepared{}, fmt.Errorf("invalid option: %w", errors.Join(eo.errs...))
	}
	if limit := q.o.maxRequestBytes - requestOverhead; len(payload) > limit {
		return prepared{}, fmt.Errorf("payload of %d bytes is over the %d bytes one etcd request may carry (%d, less %d for keys and records)",
			len(payload), limit, q.o.maxRequestBytes, requestOverhead)
	}
	now := time.Now()
	id, ns := q.ids.next(now)
	readyAt := now
	if !eo.notBefore.IsZero() && eo.notBefore.After(readyAt) {
		readyAt = eo.notBefore
	}
	if eo.delay > 0 && now.Add(eo.delay).After(readyAt) {
		readyAt = now.Add(eo.delay)
	}
	if readyAt.After(latestReady) {
		return prepared{}, fmt.Errorf("ready time %s is past %s, the latest a task's record can hold",
			readyAt.UTC().Format(time.RFC3339), latestReady.Format(time.RFC3339))
	}
	meta := taskMeta{Prio: eo.prio, Enq: ns, Dedup: eo.dedup, MaxAtt: q.o.maxAttempts, Timeout: int64(eo.timeout), Trace: traceOf(ctx), Group: eo.group, Bounded: q.o.maxSize > 0}
	if readyAt.After(now) {
		meta.Ready = readyAt.UnixNano()
	}
	pos := q.enqueuedPos(id, meta)
	tv := encodeTask(meta, payload)
	p := prepared{
		id:    id,
		dedup: eo.dedup,
		ops: []clientv3.Op{
			clientv3.OpPut(q.keys.task(id), string(tv)),
			clientv3.OpPut(pos, ""),
		},
		bytes: len(tv) + 3*len(pos),
		wait:  eo.wait,
	}
	if eo.group != "" {
		// The member key's create revision is the task's place in its
		// group: consumers see it with the index key, in the same revision.
		mk := q.keys.member(groupHash(eo.group), id)
		p.ops = append(p.ops, clientv3.OpPut(mk, ""))
		p.bytes += len(mk)
	}
	return p, nil
}

// Enqueue adds a task and returns its ID. It costs one etcd transaction (one
// Raft write) that puts the task record and its index key. With
// DedupID, the transaction also claims the dedup key, or, if an unfinished
// task holds it, writes nothing and returns that task's ID.
//
// Bad options or a payload over the request limit are reported before
// anything is written. On a context or etcd error the task may or may not
// have been written; use DedupID to make a retry safe.
func (q *Queue) Enqueue(ctx context.Context, payload []byte, opts ...EnqueueOption) (string, error) {
	if q.err != nil {
		return "", q.err
	}
	p, err := q.prepare(ctx, payload, opts)
	if err != nil {
		return "", fmt.Errorf("queue: enqueue: %w", err)
	}
	return q.enqueue(ctx, p, "enqueue")
}

// enqueue writes the prepared task p; what names the call in errors.
func (q *Queue) enqueue(ctx context.Context, p prepared, what string) (string, error) {
	if q.o.maxSize > 0 {
		return q.enqueueBounded(ctx, p, what)
	}
	if p.dedup == "" {
		if _, err := q.cli.Txn(ctx).Then(p.ops...).Commit(); err != nil {
			return "", fmt.Errorf("queue: %s: %w", what, err)
		}
		return p.id, nil
	}
	dk := q.keys.dedup(p.dedup)
	resp, err := q.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(dk), "=", 0)).
		Then(append(p.ops, clientv3.OpPut(dk, p.id))...).
		Else(clientv3.OpGet(dk)).
		Commit()
	if err != nil {
		return "", fmt.Errorf("queue: %s: %w", what, err)
	}
	if resp.Succeeded {
		return p.id, nil
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) == 0 {
		// The holder finished between the compare and the get: impossible
		// in one transaction, so the key is malformed.
		return "", fmt.Errorf("%w: %s: dedup key %q without value", ErrCorrupt, what, dk)
	}
	first := string(kvs[0].Value)
	if !validID(first) {
		return "", fmt.Errorf("%w: %s: dedup key %q holds %q", ErrCorrupt, what, dk, first)
	}
	return first, nil
}

// TxEnqueue is the enqueue of one task as comparisons and operations for a
// caller's own transaction (EnqueueTx): the task is enqueued if and only if
// that transaction succeeds.
type TxEnqueue struct {
	ID string // the task's ID, once the transaction succeeded
	// Cmps are the comparisons the transaction must include: with a dedup
	// ID, that no unfinished task holds it (the transaction then fails as
	// a whole; read the dedup holder with Status if the caller must tell).
	// Empty otherwise.
	Cmps []clientv3.Cmp
	Ops  []clientv3.Op // what enqueues it: the task record, its index key, its group member key, its dedup key
}

// Op returns the enqueue as one operation, for a transaction whose
// comparisons the caller does not write (cron's Run.Commit takes
// operations only): a nested transaction that makes the comparisons
// itself. With a dedup ID held by an unfinished task, it enqueues nothing
// while the enclosing transaction goes on; the task with e.ID then does not
// exist (Status reports ErrNotFound), and the holder is the one that runs.
// Without a dedup ID its comparisons are none, and it always applies.
func (e TxEnqueue) Op() clientv3.Op {
	return clientv3.OpTxn(e.Cmps, e.Ops, nil)
}

// EnqueueTx prepares the enqueue of a task for the caller's own etcd
// transaction, so that the task lands atomically with the caller's writes
// (a result and the follow-up task it calls for; a scheduled time's claim):
//
//	e, err := q.EnqueueTx(ctx, payload)
//	resp, err := cli.Txn(ctx).If(append(myCmps, e.Cmps...)...).Then(append(myOps, e.Ops...)...).Commit()
//
// Options and payload are checked as by Enqueue, before anything is
// written; it does no I/O (ctx only carries the trace context, as for
// Enqueue). The transaction must go to the cluster the
// queue's client is on, and each TxEnqueue be committed once: its ID is
// fixed when it is prepared. Two operations, one more with a dedup ID and
// one more with a group, and up
// to the payload's size in the request.
func (q *Queue) EnqueueTx(ctx context.Context, payload []byte, opts ...EnqueueOption) (TxEnqueue, error) {
	if q.err != nil {
		return TxEnqueue{}, q.err
	}
	if q.o.maxSize > 0 {
		return TxEnqueue{}, errors.New("queue: enqueue: EnqueueTx on a bounded Queue (WithMaxSize): a transaction of the caller's cannot take a place under the bound")
	}
	p, err := q.prepare(ctx, payload, opts)
	if err != nil {
		return TxEnqueue{}, fmt.Errorf("queue: enqueue: %w", err)
	}
	e := TxEnqueue{ID: p.id, Ops: p.ops}
	if p.dedup != "" {
		dk := q.keys.dedup(p.dedup)
		e.Cmps = []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(dk), "=", 0)}
		e.Ops = append(e.Ops, clientv3.OpPut(dk, p.id))
	}
	return e, nil
}

// EnqueueBatch adds several tasks, as few transactions as the cluster's
// limits allow (WithMaxTxnOps, WithMaxRequestBytes): two operations per
// task, three in a group. Tasks commit in item order; an item with a DedupID
// is a transaction of its own. It returns the IDs in item order. Every item is validated before anything is
// written; on an etcd error, the IDs of the transactions that committed are
// returned with the error.
func (q *Queue) EnqueueBatch(ctx context.Context, items []Item) ([]string, error) {
	if q.err != nil {
		return nil, q.err
	}
	ps := make([]prepared, len(items))
	for i, it := range items {
		p, err := q.prepare(ctx, it.Payload, it.Options)
		if err != nil {
			return nil, fmt.Errorf("queue: enqueue batch: item %d: %w", i, err)
		}
		ps[i] = p
	}
	ids := make([]string, len(items))
	budget := q.o.maxRequestBytes - requestOverhead
	maxOps := q.o.maxTxnOps
	if q.o.maxSize > 0 {
		maxOps -= 2 // the admission counter's put and the departures' read
	}
	var ops []clientv3.Op
	var batch []int
	size := 0
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		var err error
		if q.o.maxSize > 0 {
			wait := false
			for _, i := range batch {
				wait = wait || ps[i].wait
			}
			err = q.admit(ctx, admission{k: len(batch), ops: ops, wait: wait})
		} else {
			_, err = q.cli.Txn(ctx).Then(ops...).Commit()
		}
		if err != nil {
			return prefixed("enqueue batch", err)
		}
		for _, i := range batch {
			ids[i] = ps[i].id
		}
		ops, batch, size = ops[:0], batch[:0], 0
		return nil
	}
	for i, p := range ps {
		if p.dedup != "" {
			// Its own transaction, in item order, so that tasks commit in
			// the order of the items (a group's order is commit order).
			if err := flush(); err != nil {
				return ids, err
			}
			id, err := q.enqueue(ctx, p, fmt.Sprintf("enqueue batch: item %d", i))
			if err != nil {
				return ids, err
			}
			ids[i] = id
			continue
		}
		if len(batch) > 0 && (len(ops)+len(p.ops) > maxOps || size+p.bytes > budget || len(batch) == q.o.maxSize) {
			if err := flush(); err != nil {
				return ids, err
			}
		}
		ops = append(ops, p.ops...)
		batch = append(batch, i)
		size += p.bytes
	}
	if err := flush(); err != nil {
		return ids, err
	}
	return ids, nil
}

// enqueuedPos is the index key a task was enqueued at.
func (q *Queue) enqueuedPos(id string, m taskMeta) string {
	if m.Ready > 0 {
		return q.keys.delayed(m.Ready, m.Prio, id)
	}
	return q.keys.ready(m.Prio, m.Enq, id)
}

// enqueueBounded writes the prepared task p under the queue's bound.
func (q *Queue) enqueueBounded(ctx context.Context, p prepared, what string) (string, error) {
	a := admission{k: 1, ops: p.ops, wait: p.wait}
	holder := ""
	if p.dedup != "" {
		dk := q.keys.dedup(p.dedup)
		a.cmps = []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(dk), "=", 0)}
		a.ops = append(a.ops[:len(a.ops):len(a.ops)], clientv3.OpPut(dk, p.id))
		a.onFail = []clientv3.Op{clientv3.OpGet(dk)}
		a.failed = func(rs []*clientv3.GetResponse) (bool, error) {
			if len(rs) == 0 || len(rs[0].Kvs) == 0 {
				return false, nil // freed meanwhile: try again
			}
			first := string(rs[0].Kvs[0].Value)
			if !validID(first) {
				return true, fmt.Errorf("%w: dedup key %q holds %q", ErrCorrupt, dk, first)
			}
			holder = first
			return true, nil
		}
	}
	if err := q.admit(ctx, a); err != nil {
		return "", prefixed(what, err)
	}
	if holder != "" {
		return holder, nil
	}
	return p.id, nil
}
