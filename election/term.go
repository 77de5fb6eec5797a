package election

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/guard"
	"github.com/concordkit/concord/internal/holding"
	"github.com/concordkit/concord/internal/retry"
	"github.com/concordkit/concord/internal/turn"
	"github.com/concordkit/concord/internal/watch"
	"github.com/concordkit/concord/leasekeeper"
)

// Term is one leadership term: the time from winning a Campaign until
// Resign or loss. It is a fenced, lease-bound holding (see
// internal/holding): Token, Key (the candidate key), Lease, Guard, Done and
// Err are the holding's. Its methods are safe for concurrent use.
//
// Context is canceled when the term ends: with a cause that errors.Is
// ErrLost as soon as the term can no longer be trusted (before the server
// can elect anyone else, barring process pauses), or ErrResigned after
// Resign.
type Term struct {
	holding.Core
	e   *Election
	won time.Time

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
	t := &Term{e: e, won: time.Now(), value: value, proclaiming: turn.New()}
	t.Init(e.cli, l, e.k.TTL(), e.key, rev, func(cause error) error {
		return fmt.Errorf("%w: %w", ErrLost, cause)
	})
	// When the term ends for any reason, let the next campaign through.
	context.AfterFunc(t.Context(), t.end)
	t.Follow(t.watchKey)
	return t
}

// end releases the Election's slot once.
func (t *Term) end() {
	t.endOnce.Do(func() {
		t.e.tel.Held(time.Since(t.won))
		<-t.e.slot
	})
}

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
	if err := t.Err(); err != nil {
		return fmt.Errorf("election: proclaim: %w", err)
	}
	// Serialize with other Proclaims so Value matches what etcd holds last.
	if err := t.proclaiming.Take(ctx); err != nil {
		return fmt.Errorf("election: proclaim: %w", err)
	}
	defer t.proclaiming.Done()
	_, err := guard.Do(ctx, t.e.cli, t.Guard(), ErrLost, clientv3.OpPut(t.Key(), value, clientv3.WithLease(t.Lease())))
	if errors.Is(err, ErrLost) {
		t.mu.Lock()
		resigning := t.resigning || t.resigned
		t.mu.Unlock()
		if resigning {
			// A Resign running beside this Proclaim deleted the key first:
			// the term ends as resigned, not lost.
			return ErrNotLeader
		}
		t.Lose(fmt.Errorf("candidate key %s is gone", t.Key()))
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
	if !t.beginResign() {
		return nil
	}
	// Guarded by the create revision: never deletes a newer incarnation. A
	// leader change or a member going away is worth waiting out: the key
	// would otherwise stay on a live lease and keep this process leader
	// without a term.
	lost, err := t.Core.Release(ctx, nil, nil)
	if err != nil {
		t.resignFailed()
		return fmt.Errorf("election: resign %q: %w", t.e.name, err)
	}
	t.resignedNow(lost)
	return nil
}

// beginResign marks the term's key as being deleted by its holder (its
// deletion is then no loss), and reports false if the term was resigned
// already.
func (t *Term) beginResign() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.resigned {
		return false
	}
	t.resigning = true
	return true
}

// resignFailed undoes beginResign after the key's deletion failed: a
// deletion seen later is a loss again.
func (t *Term) resignFailed() {
	t.mu.Lock()
	t.resigning = false
	t.mu.Unlock()
}

// resignedNow ends the term after its key was deleted by Resign or
// Handover, or found lost.
func (t *Term) resignedNow(lost bool) {
	t.mu.Lock()
	t.resigned = true
	t.mu.Unlock()
	if lost {
		// The lease was lost first: the term ends as lost, whether the
		// lease's own hook or this call gets to end it first.
		t.Lose(t.LeaseCause())
	}
	t.End(ErrResigned)
	t.StopFollowing()
	t.end()
}

// watchKey cancels the term with ErrLost if the candidate key is deleted or
// replaced (an operator, a revoked lease, a bug), until the term ends. The
// watch has no start revision (so it is synced at once); each creation past
// the term's revision is followed by a read that closes the gap since the
// key was last known to exist.
func (t *Term) watchKey(ctx context.Context) {
	w := watch.Open(ctx, t.e.cli, t.Key(), watch.Config{})
	defer w.Stop()
	seen := t.Token()
	for {
		resp, err := w.Next(ctx)
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
			err := retry.Do(ctx, retry.RequestPolicy, func(ctx context.Context) error {
				g, err := t.e.cli.Get(ctx, t.Key())
				if err == nil {
					gone = len(g.Kvs) == 0 || g.Kvs[0].CreateRevision != t.Token()
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
				if ev.Type == clientv3.EventTypeDelete && ev.Kv.ModRevision > t.Token() ||
					ev.Type == clientv3.EventTypePut && ev.Kv.CreateRevision > t.Token() {
					gone = true
				}
			}
		}
		if gone {
			t.mu.Lock()
			resigning := t.resigning
			t.mu.Unlock()
			if resigning {
				t.End(ErrResigned)
			} else {
				t.Lose(fmt.Errorf("candidate key %s was deleted", t.Key()))
			}
			return
		}
	}
}
