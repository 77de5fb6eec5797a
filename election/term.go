package election

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/concordkit/concord/internal/guard"
	"github.com/concordkit/concord/internal/retry"
	"github.com/concordkit/concord/internal/turn"
	"github.com/concordkit/concord/internal/watch"
	"github.com/concordkit/concord/leasekeeper"
)

// Term is one leadership term: the time from winning a Campaign until
// Resign or loss. Its methods are safe for concurrent use.
type Term struct {
	e     *Election
	lease *leasekeeper.Lease
	rev   int64 // create revision of the candidate key: the token
	won   time.Time

	ctx    context.Context
	cancel context.CancelCauseFunc
	stop   func() bool // unhooks the lease's AfterFunc
	wg     sync.WaitGroup

	endOnce sync.Once // releases the Election's slot and records the hold time

	// proclaiming serialises Proclaims; a Proclaim waiting behind one
	// stalled on etcd still returns when its ctx ends.
	proclaiming turn.Turn

	mu        sync.Mutex // protects value, resigned, resigning; never held across a request
	value     string
	resigned  bool
	resigning bool // a Resign is deleting the key: its deletion is not a loss
}

func newTerm(e *Election, l *leasekeeper.Lease, rev int64, value string) *Term {
	ctx, cancel := context.WithCancelCause(context.Background())
	t := &Term{e: e, lease: l, rev: rev, won: time.Now(), ctx: ctx, cancel: cancel, value: value,
		proclaiming: turn.New()}
	t.stop = context.AfterFunc(l.Context(), func() {
		t.cancel(fmt.Errorf("%w: %w", ErrLost, context.Cause(l.Context())))
	})
	// When the term ends for any reason, let the next campaign through.
	context.AfterFunc(ctx, t.end)
	t.wg.Add(1)
	go t.watchKey()
	return t
}

// end releases the Election's slot once.
func (t *Term) end() {
	t.endOnce.Do(func() {
		t.e.held.Record(context.Background(), time.Since(t.won).Seconds(),
			metric.WithAttributes(attribute.String("election.name", t.e.name)))
		<-t.e.slot
	})
}

// Token returns the fencing token: the create revision of the candidate key.
// It strictly increases from one term of this election to the next.
func (t *Term) Token() int64 { return t.rev }

// Key returns the candidate key that holds the term.
func (t *Term) Key() string { return t.e.key }

// Lease returns the lease the term is bound to.
func (t *Term) Lease() clientv3.LeaseID { return t.lease.ID() }

// Context is canceled when the term ends: with a cause that errors.Is ErrLost
// as soon as the term can no longer be trusted (before the server can elect
// anyone else, barring process pauses), or ErrResigned after Resign.
func (t *Term) Context() context.Context { return t.ctx }

// Done is Context().Done().
func (t *Term) Done() <-chan struct{} { return t.ctx.Done() }

// Err returns nil while the term stands, and why it ended after.
func (t *Term) Err() error {
	if t.ctx.Err() == nil {
		return nil
	}
	return context.Cause(t.ctx)
}

// Guard returns comparisons that hold only while this term stands, for
// fenced writes: cli.Txn(ctx).If(t.Guard()...).Then(...).
func (t *Term) Guard() []clientv3.Cmp { return guard.Held(t.e.key, t.rev) }

// Value returns the value last campaigned or proclaimed with.
func (t *Term) Value() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.value
}

// Proclaim replaces the leader's value without an election, fenced by the
// term: it returns ErrNotLeader after Resign and an error that errors.Is
// ErrLost if the term's key is gone. Cost: one transaction.
func (t *Term) Proclaim(ctx context.Context, value string) error {
	if err := guard.CheckValueSize("election", "value", len(value)); err != nil {
		return err
	}
	t.mu.Lock()
	resigned := t.resigned
	t.mu.Unlock()
	if resigned {
		return ErrNotLeader
	}
	if t.ctx.Err() != nil {
		return fmt.Errorf("election: proclaim: %w", context.Cause(t.ctx))
	}
	// Serialize with other Proclaims so Value matches what etcd holds last.
	if err := t.proclaiming.Take(ctx); err != nil {
		return fmt.Errorf("election: proclaim: %w", err)
	}
	defer t.proclaiming.Done()
	_, err := guard.Do(ctx, t.e.cli, t.Guard(), ErrLost, clientv3.OpPut(t.e.key, value, clientv3.WithLease(t.lease.ID())))
	if errors.Is(err, ErrLost) {
		t.mu.Lock()
		resigning := t.resigning || t.resigned
		t.mu.Unlock()
		if resigning {
			// A Resign running beside this Proclaim deleted the key first:
			// the term ends as resigned, not lost.
			return ErrNotLeader
		}
		t.cancel(fmt.Errorf("%w: candidate key %s is gone", ErrLost, t.e.key))
		return fmt.Errorf("election: proclaim: %w", err)
	}
	if err != nil {
		return fmt.Errorf("election: proclaim: %w", err)
	}
	t.mu.Lock()
	t.value = value
	t.mu.Unlock()
	return nil
}

// Resign ends the term: it deletes the candidate key, so the next candidate
// is elected at once, and cancels the term's context with ErrResigned. It is
// idempotent, and also safe after the term was lost. It cleans up with a
// detached context bounded by the lease TTL, so a canceled ctx still
// resigns; the term's context is canceled only once etcd confirmed (or the
// key was already gone). A key on a lost lease goes with the lease: once the
// lease is lost, before or during Resign, it deletes nothing and returns
// nil. It waits for the term's watch goroutine to end.
// Cost: one transaction.
func (t *Term) Resign(ctx context.Context) error {
	t.mu.Lock()
	if t.resigned {
		t.mu.Unlock()
		return nil
	}
	t.resigning = true
	t.mu.Unlock()
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), t.e.k.TTL())
	defer cancel()
	// A key on a lost lease goes with it: nothing to delete then, nor to wait
	// for once the lease is lost meanwhile (etcd unreachable).
	defer context.AfterFunc(t.lease.Context(), cancel)()
	deleted := false
	if t.lease.Err() == nil {
		// Guarded by the create revision: never deletes a newer incarnation,
		// so safe to repeat. A leader change or a member going away is
		// worth waiting out (the key would otherwise stay on a live lease
		// and keep this process leader without a term), each attempt short
		// (retry.Attempt) so that one sent to an etcd leader that died or
		// hangs is sent again once another is elected.
		var last error
		err := retry.Attempts(rctx, retry.RequestPolicy, retry.Attempt(t.e.k.TTL()), func(ctx context.Context) error {
			_, last = t.e.cli.Txn(ctx).If(t.Guard()...).Then(clientv3.OpDelete(t.e.key)).Commit()
			return last
		})
		switch {
		case err == nil:
			deleted = true
		case t.lease.Err() != nil:
		default:
			t.mu.Lock()
			t.resigning = false
			t.mu.Unlock()
			if last != nil && rctx.Err() != nil {
				err = last
			}
			return fmt.Errorf("election: resign %q: %w", t.e.name, err)
		}
	}
	t.mu.Lock()
	t.resigned = true
	t.mu.Unlock()
	if !deleted {
		// The lease was lost first: the term ends as lost, whether the
		// lease's own hook or this call gets to cancel it first.
		t.cancel(fmt.Errorf("%w: %w", ErrLost, context.Cause(t.lease.Context())))
	}
	t.cancel(ErrResigned)
	t.stop()
	t.wg.Wait()
	t.end()
	return nil
}

// watchKey cancels the term with ErrLost if the candidate key is deleted or
// replaced (an operator, a revoked lease, a bug), until the term ends. The
// watch has no start revision (so it is synced at once); each creation past
// the term's revision is followed by a read that closes the gap since the
// key was last known to exist.
func (t *Term) watchKey() {
	defer t.wg.Done()
	w := watch.Open(t.ctx, t.e.cli, t.e.key, watch.Config{})
	defer w.Stop()
	seen := t.rev
	for {
		resp, err := w.Next(t.ctx)
		if err != nil {
			// Only the term's end, or a watch etcd refuses for good (a
			// permission taken away), ends the watch; the term stands on
			// its lease either way.
			return
		}
		gone := false
		switch {
		case resp.Created && resp.Header.Revision > seen:
			var rev int64
			err := retry.Do(t.ctx, retry.RequestPolicy, func(ctx context.Context) error {
				g, err := t.e.cli.Get(ctx, t.e.key)
				if err == nil {
					gone = len(g.Kvs) == 0 || g.Kvs[0].CreateRevision != t.rev
					rev = g.Header.Revision
				}
				return err
			})
			if err != nil {
				return
			}
			seen = max(seen, rev)
		default:
			for _, ev := range resp.Events {
				if ev.Type == clientv3.EventTypeDelete && ev.Kv.ModRevision > t.rev ||
					ev.Type == clientv3.EventTypePut && ev.Kv.CreateRevision > t.rev {
					gone = true
				}
			}
		}
		if gone {
			t.mu.Lock()
			resigning := t.resigning
			t.mu.Unlock()
			if resigning {
				t.cancel(ErrResigned)
			} else {
				t.cancel(fmt.Errorf("%w: candidate key %s was deleted", ErrLost, t.e.key))
			}
			return
		}
	}
}
