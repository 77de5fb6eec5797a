package queue

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/retry"
)

// A bounded queue (WithMaxSize) counts its unfinished tasks with two keys:
// m/in, whose value is how many tasks were admitted, and m/out, whose etcd
// Version counts those that left (acknowledged, dead-lettered, canceled).
// An admission is a transaction that compares m/in's ModRevision with the
// one its count was read at and writes the new count, so admissions are
// linearized and each sees the exact count of admissions before it; the
// departures it read may be older than the commit, but departures only
// grow, so a stale read can refuse a task that would have fit, never admit
// one that does not. A departure is one more put of m/out in the task's
// last transaction, which is already guarded, so it happens once. The task
// record says whether the task was admitted (taskMeta.Bounded): only those
// count out.

// counters is a reading of the two counter keys.
type counters struct {
	in    int64 // tasks admitted (m/in's value)
	inRev int64 // m/in's ModRevision, 0 if absent
	out   int64 // tasks that left (m/out's Version)
	rev   int64 // the revision read at
	fresh bool  // read by the call using it, not left by an earlier call
}

func (c counters) size() int64 { return c.in - c.out }

// bound keeps a Queue's last reading of its counters, so that one producer
// enqueueing in a row pays one transaction per enqueue.
type bound struct {
	mu sync.Mutex
	c  counters
	ok bool
}

func (b *bound) load() (counters, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.c
	c.fresh = false
	return c, b.ok
}

func (b *bound) store(c counters) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if c.rev >= b.c.rev {
		b.c, b.ok = c, true
	}
}

// forget drops the reading: the next admission reads the counters.
func (b *bound) forget() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ok = false
}

// parseCounters reads the counters from the ranges of m/in and m/out.
func (q *Queue) parseCounters(in, out *clientv3.GetResponse, rev int64) (counters, error) {
	c := counters{rev: rev, fresh: true}
	if len(in.Kvs) > 0 {
		n, err := strconv.ParseInt(string(in.Kvs[0].Value), 10, 64)
		if err != nil || n < 0 {
			return c, fmt.Errorf("%w: admission counter %q holds %.40q", ErrCorrupt, q.keys.admitted(), in.Kvs[0].Value)
		}
		c.in, c.inRev = n, in.Kvs[0].ModRevision
	}
	if len(out.Kvs) > 0 {
		c.out = out.Kvs[0].Version
	}
	if c.size() < 0 {
		return c, fmt.Errorf("%w: %d tasks left a queue that admitted %d", ErrCorrupt, c.out, c.in)
	}
	return c, nil
}

// readCounters reads the counters, and the keys of extra, in one
// transaction.
func (q *Queue) readCounters(ctx context.Context, extra ...clientv3.Op) (counters, *clientv3.TxnResponse, error) {
	ops := append([]clientv3.Op{clientv3.OpGet(q.keys.admitted()), clientv3.OpGet(q.keys.departed())}, extra...)
	resp, err := q.cli.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return counters{}, nil, err
	}
	c, err := q.parseCounters((*clientv3.GetResponse)(resp.Responses[0].GetResponseRange()), (*clientv3.GetResponse)(resp.Responses[1].GetResponseRange()), resp.Header.Revision)
	if err != nil {
		return counters{}, nil, err
	}
	q.bound.store(c)
	return c, resp, nil
}

// admission is one bounded write: k tasks' operations, their comparisons
// (a dedup ID), and what to read back when those fail.
type admission struct {
	k      int
	cmps   []clientv3.Cmp
	ops    []clientv3.Op
	onFail []clientv3.Op // read when cmps fail, after the counters
	wait   bool          // wait for room rather than return ErrFull
	// unchecked counts the tasks in without checking the bound: a Requeue
	// through a Queue that has none, of a task admitted under one.
	unchecked bool
	// failed inspects the reads of onFail after cmps failed: done ends the
	// admission with its result.
	failed func(reads []*clientv3.GetResponse) (done bool, err error)
}

// admit commits a's operations if the queue has room for its k tasks. The
// count is read once per Queue and then carried by each admission's own
// transaction; a transaction that finds the count moved reads it back in
// its Else branch and tries again. When the queue is full it reads the
// counters afresh before it refuses (ErrFull), or with wait, watches m/out
// until a task leaves.
func (q *Queue) admit(ctx context.Context, a admission) error {
	full := func(c counters) bool { return !a.unchecked && c.size()+int64(a.k) > int64(q.o.maxSize) }
	if !a.unchecked && a.k > q.o.maxSize {
		return fmt.Errorf("%w: %d tasks at once, over the queue's bound of %d", ErrFull, a.k, q.o.maxSize)
	}
	c, ok := q.bound.load()
	var bo *retry.Backoff // between watches that etcd ended
	// A call that waits for room and whose ctx ends on its way reports
	// that it found no room, whichever request the end interrupted.
	waited := false
	ended := func(err error) error {
		if waited && ctx.Err() != nil {
			return fmt.Errorf("%w: no room before the wait ended: %w", ErrFull, err)
		}
		return err
	}
	for {
		if !ok {
			var resp *clientv3.TxnResponse
			var err error
			if c, resp, err = q.readCounters(ctx, a.onFail...); err != nil {
				return ended(err)
			}
			if full(c) && a.failed != nil && len(a.onFail) > 0 {
				// Full: a dedup ID held by an unfinished task still
				// answers with that task.
				if done, err := a.failed(reads(resp, 2)); done {
					return err
				}
			}
		}
		ok = true
		if full(c) {
			if !c.fresh {
				ok = false // departures may have come since: read again
				continue
			}
			if !a.wait {
				return fmt.Errorf("%w: %d of %d tasks unfinished", ErrFull, c.size(), q.o.maxSize)
			}
			if bo == nil {
				bo = retry.WatchPolicy.New()
			}
			waited = true
			if err := q.waitDeparture(ctx, c.rev, bo); err != nil {
				return err
			}
			ok = false
			continue
		}
		cmps := append(a.cmps[:len(a.cmps):len(a.cmps)], clientv3.Compare(clientv3.ModRevision(q.keys.admitted()), "=", c.inRev))
		then := append(a.ops[:len(a.ops):len(a.ops)],
			clientv3.OpPut(q.keys.admitted(), strconv.FormatInt(c.in+int64(a.k), 10)),
			clientv3.OpGet(q.keys.departed()))
		els := append([]clientv3.Op{clientv3.OpGet(q.keys.admitted()), clientv3.OpGet(q.keys.departed())}, a.onFail...)
		tried := c.inRev
		resp, err := q.cli.Txn(ctx).If(cmps...).Then(then...).Else(els...).Commit()
		if err != nil {
			q.bound.forget() // the count may have moved: read it next time
			return ended(err)
		}
		if resp.Succeeded {
			out := (*clientv3.GetResponse)(resp.Responses[len(then)-1].GetResponseRange())
			next := counters{in: c.in + int64(a.k), inRev: resp.Header.Revision, rev: resp.Header.Revision}
			if len(out.Kvs) > 0 {
				next.out = out.Kvs[0].Version
			}
			q.bound.store(next)
			return nil
		}
		if c, err = q.parseCounters((*clientv3.GetResponse)(resp.Responses[0].GetResponseRange()), (*clientv3.GetResponse)(resp.Responses[1].GetResponseRange()), resp.Header.Revision); err != nil {
			return err
		}
		q.bound.store(c)
		if a.failed != nil && (len(a.onFail) > 0 || c.inRev == tried) {
			// One of a's own comparisons may have failed: its reads say
			// (a dedup ID held answers with its task, also when the
			// count moved too and the queue is now full); without reads,
			// a count that did not move says so.
			if done, err := a.failed(reads(resp, 2)); done {
				return err
			}
		}
	}
}

// prefixed names the call in err, unless err already starts with the
// package's prefix (ErrFull, ErrNotDead, ErrCorrupt and the like).
func prefixed(what string, err error) error {
	if err == nil || strings.HasPrefix(err.Error(), "queue: ") {
		return err
	}
	return fmt.Errorf("queue: %s: %w", what, err)
}

// reads returns the range responses of resp from index from on.
func reads(resp *clientv3.TxnResponse, from int) []*clientv3.GetResponse {
	var out []*clientv3.GetResponse
	for _, r := range resp.Responses[min(from, len(resp.Responses)):] {
		out = append(out, (*clientv3.GetResponse)(r.GetResponseRange()))
	}
	return out
}

// waitDeparture waits until a task leaves the queue after revision rev (a
// put of m/out), or ctx ends. A watch that etcd ends (compaction, a lost
// leader) also returns, after a backoff: the caller reads the counters
// again either way. A watch etcd refuses for lack of permission is an
// error.
func (q *Queue) waitDeparture(ctx context.Context, rev int64, bo *retry.Backoff) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	var err error
	select {
	case resp := <-q.cli.Watch(wctx, q.keys.departed(), clientv3.WithRev(rev+1)):
		if err = resp.Err(); err == nil && len(resp.Events) > 0 {
			bo.Reset()
			return nil
		}
	case <-ctx.Done():
	}
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("%w: no room before the wait ended: %w", ErrFull, context.Cause(ctx))
	case retry.PermissionDenied(err):
		return fmt.Errorf("%w: waiting for room: watch %q: %w", ErrFull, q.keys.departed(), err)
	}
	if bo.Wait(ctx) != nil {
		return fmt.Errorf("%w: no room before the wait ended: %w", ErrFull, context.Cause(ctx))
	}
	return nil
}

// departOps count the task out of a bounded queue; none if it was not
// admitted under a bound.
func (l layout) departOps(bounded bool) []clientv3.Op {
	if !bounded {
		return nil
	}
	return []clientv3.Op{clientv3.OpPut(l.departed(), "")}
}
