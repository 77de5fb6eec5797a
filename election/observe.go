package election

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/retry"
	"github.com/concordkit/concord/internal/watch"
)

type candidate struct {
	create int64
	value  string
	lease  int64
}

// Observe reports the election's leader: first the current state (a Leader
// whose Exists is false when nobody leads), then every change in revision
// order — a new leader, a new value proclaimed, no leader — never an older
// state after a newer one. Changes are queued for a slow reader, not
// dropped.
//
// It survives member restarts, lost leaders and compaction: after a watch
// fails it resumes from the last revision it applied, so nothing is skipped;
// only if that history was compacted meanwhile does it read the current state
// afresh, and then the intermediate states are not reported (the next one
// delivered is still newer than the last).
//
// The channel closes when ctx ends, or on an error no retry can fix (an
// invalid name, permission denied); the returned function reports why it
// closed (nil while it is open). Observe runs one goroutine, which ends when
// the channel closes.
//
// Cost: one read of all candidates, then one watch on the election's prefix;
// a read again only after compaction.
func (e *Election) Observe(ctx context.Context) (<-chan Leader, func() error) {
	out := make(chan Leader)
	o := &observer{e: e, out: out, cands: map[string]candidate{}}
	go o.run(ctx)
	return out, o.error
}

type observer struct {
	e   *Election
	out chan Leader

	cands   map[string]candidate
	rev     int64   // last revision applied
	last    *Leader // last state queued
	pending []Leader

	mu  sync.Mutex // protects err
	err error
}

func (o *observer) error() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.err
}

func (o *observer) run(ctx context.Context) {
	err := o.loop(ctx)
	o.mu.Lock()
	o.err = err
	o.mu.Unlock()
	close(o.out)
}

func (o *observer) loop(ctx context.Context) error {
	if o.e.err != nil {
		return o.e.err
	}
	bo := retry.RequestPolicy.New()
	needLoad := true
	for {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if needLoad {
			if err := o.load(ctx); err != nil {
				if ctx.Err() != nil {
					return context.Cause(ctx)
				}
				if !retry.Retriable(err) {
					return fmt.Errorf("election: observe %q: %w", o.e.name, err)
				}
				if err := o.sendWhile(ctx, bo); err != nil {
					return err
				}
				continue
			}
			needLoad = false
			bo.Reset()
		}
		err := o.watch(ctx)
		switch {
		case ctx.Err() != nil:
			return context.Cause(ctx)
		case errors.Is(err, rpctypes.ErrCompacted):
			needLoad = true
		default:
			// internal/watch gets past every failure a new watch can; what
			// ends it is final (a permission etcd denies).
			return fmt.Errorf("election: observe %q: %w", o.e.name, err)
		}
	}
}

// sendWhile waits out one backoff step while still delivering queued states.
func (o *observer) sendWhile(ctx context.Context, bo *retry.Backoff) error {
	bctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- bo.Wait(bctx) }()
	for {
		var out chan Leader
		var head Leader
		if len(o.pending) > 0 {
			out, head = o.out, o.pending[0]
		}
		select {
		case err := <-done:
			if err != nil {
				return context.Cause(ctx)
			}
			return nil
		case out <- head:
			o.pending = o.pending[1:]
		}
	}
}

// load reads every candidate afresh.
func (o *observer) load(ctx context.Context) error {
	resp, err := o.e.cli.Get(ctx, o.e.prefix, clientv3.WithPrefix())
	if err != nil {
		return err
	}
	clear(o.cands)
	for _, kv := range resp.Kvs {
		if err := checkCandidate(o.e.prefix, kv); err != nil {
			return err
		}
		o.cands[string(kv.Key)] = candidate{create: kv.CreateRevision, value: string(kv.Value), lease: kv.Lease}
	}
	o.rev = resp.Header.Revision
	o.queue(resp.Header.Revision)
	return nil
}

// watch applies events from o.rev+1 until the watch ends for good,
// delivering queued states as the reader takes them.
func (o *observer) watch(ctx context.Context) error {
	w := watch.Open(ctx, o.e.cli, o.e.prefix, watch.Config{From: o.rev + 1, Options: []clientv3.OpOption{clientv3.WithPrefix()}})
	defer w.Stop()
	for {
		var out chan Leader
		var head Leader
		if len(o.pending) > 0 {
			out, head = o.out, o.pending[0]
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case out <- head:
			o.pending = o.pending[1:]
		case resp, ok := <-w.C:
			if !ok {
				return w.Err()
			}
			for _, ev := range resp.Events {
				if ev.Type == clientv3.EventTypePut {
					if err := checkCandidate(o.e.prefix, ev.Kv); err != nil {
						return err
					}
				}
			}
			o.apply(resp.Events)
		}
	}
}

// apply folds events into the candidate set and queues the leader after each
// revision.
func (o *observer) apply(evs []*clientv3.Event) {
	for i, ev := range evs {
		rev := ev.Kv.ModRevision
		if rev <= o.rev {
			continue // already applied (a resumed watch can overlap)
		}
		key := string(ev.Kv.Key)
		switch ev.Type {
		case clientv3.EventTypePut:
			o.cands[key] = candidate{create: ev.Kv.CreateRevision, value: string(ev.Kv.Value), lease: ev.Kv.Lease}
		case clientv3.EventTypeDelete:
			delete(o.cands, key)
		}
		// Events of one transaction share a revision: queue once it is whole.
		if i+1 < len(evs) && evs[i+1].Kv.ModRevision == rev {
			continue
		}
		o.rev = rev
		o.queue(rev)
	}
}

// queue appends the current leader if it differs from the last one queued.
func (o *observer) queue(rev int64) {
	l := Leader{Rev: rev}
	for key, c := range o.cands {
		if !l.Exists() || c.create < l.Token {
			l = Leader{Key: key, Value: c.value, Token: c.create, Lease: clientv3.LeaseID(c.lease), Rev: rev}
		}
	}
	if o.last != nil && o.last.Key == l.Key && o.last.Token == l.Token && o.last.Value == l.Value {
		return
	}
	o.last = &l
	o.pending = append(o.pending, l)
}
