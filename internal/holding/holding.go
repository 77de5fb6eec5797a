// Package holding is concord's one holding model in code: the core that
// every holding type embeds (a lock's Hold, a semaphore's Permit, an
// election's Term, a double barrier's Seat, a queue's Task).
//
// A holding is a key in etcd, bound to a lease from leasekeeper, whose
// create revision is the fencing token. The core gives every holding the
// same Token, Key, Lease, Context, Done, Err and Guard; ends its context
// with a cause that errors.Is the package's ErrLost as soon as the lease can
// no longer be trusted; runs one goroutine that follows the key (joined by
// StopFollowing); and makes the one release every holding makes: a delete
// guarded by the holding, detached from the caller's cancellation, bounded
// by the TTL, each try about an election timeout long, given up once the
// lease is lost (the key goes with it). Release verbs (Unlock, Release,
// Resign, Leave, Ack) stay the packages' own.
//
// internal/holdingtest checks every holding type against the model.
package holding

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/guard"
	"github.com/concordkit/concord/internal/retry"
	"github.com/concordkit/concord/leasekeeper"
)

// Core is the part every holding shares. Its methods are safe for
// concurrent use once Init has returned.
type Core struct {
	cli   *clientv3.Client
	lease *leasekeeper.Lease
	ttl   time.Duration
	key   string
	token int64
	lost  func(cause error) error

	ctx    context.Context
	cancel context.CancelCauseFunc
	unbind func() bool // stops the lease-loss hook

	follow     context.Context
	stopFollow context.CancelFunc
	wg         sync.WaitGroup // joins the follower

	expiry atomic.Pointer[time.Timer] // ExpireAfter's timer; the release reads it
}

// Init makes c a live holding of key, created at revision token, on lease l
// of a keeper whose TTL is ttl. lost turns the cause of a loss into the
// package's error (one that errors.Is its ErrLost); the core calls it when
// the lease is lost, and Lose calls it.
func (c *Core) Init(cli *clientv3.Client, l *leasekeeper.Lease, ttl time.Duration, key string, token int64, lost func(cause error) error) {
	c.cli, c.lease, c.ttl, c.key, c.token, c.lost = cli, l, ttl, key, token, lost
	c.ctx, c.cancel = context.WithCancelCause(context.Background())
	c.follow, c.stopFollow = context.WithCancel(c.ctx)
	c.unbind = context.AfterFunc(l.Context(), func() { c.Lose(context.Cause(l.Context())) })
}

// Token returns the fencing token: the create revision of the holding's key.
// It strictly increases across successive holders of a resource.
func (c *Core) Token() int64 { return c.token }

// Key returns the etcd key that represents the holding.
func (c *Core) Key() string { return c.key }

// Lease returns the lease the holding is bound to.
func (c *Core) Lease() clientv3.LeaseID { return c.lease.ID() }

// Context is canceled, with a cause, as soon as the holding ends: lost (the
// cause errors.Is the package's ErrLost) or given back.
func (c *Core) Context() context.Context { return c.ctx }

// Done is Context().Done().
func (c *Core) Done() <-chan struct{} { return c.ctx.Done() }

// Err returns nil while the holding stands, and the cause of its end after.
func (c *Core) Err() error {
	if c.ctx.Err() == nil {
		return nil
	}
	return context.Cause(c.ctx)
}

// Guard returns comparisons that hold only while the holding's key stands
// in the incarnation that made it, for fenced writes:
// cli.Txn(ctx).If(Guard()...).Then(...).
func (c *Core) Guard() []clientv3.Cmp { return guard.Held(c.key, c.token) }

// LeaseLost reports whether the holding's lease is lost.
func (c *Core) LeaseLost() bool { return c.lease.Err() != nil }

// LeaseCause returns why the lease was lost (nil while it lives).
func (c *Core) LeaseCause() error { return c.lease.Err() }

// End ends the holding with cause, as given back. The first cause of an end
// stays.
func (c *Core) End(cause error) { c.cancel(cause) }

// Lose ends the holding as lost: its cause is lost(cause).
func (c *Core) Lose(cause error) { c.cancel(c.lost(cause)) }

// ExpireAfter bounds the holding to d, whatever its lease does: when d has
// passed, its context is canceled with lost(cause) first, and release (the
// package's own release verb, which deletes the key) runs after, so the
// holder is told to stop before the server can grant the resource to
// anyone else. A release that fails (etcd out of reach, a refusal) is made
// again, paced by retry.RecoverPolicy, until it succeeds or the lease is
// lost, which takes the key with it. release must be safe to call along
// with the package's release verb, which calls StopExpiry. Call it once,
// before the holding is handed out.
func (c *Core) ExpireAfter(d time.Duration, cause error, release func() error) {
	c.expiry.Store(time.AfterFunc(d, func() {
		c.Lose(cause)
		bo := retry.RecoverPolicy.New()
		for release() != nil {
			if bo.Wait(c.lease.Context()) != nil {
				return
			}
		}
	}))
}

// StopExpiry cancels the expiry set by ExpireAfter unless it began.
func (c *Core) StopExpiry() {
	if t := c.expiry.Load(); t != nil {
		t.Stop()
	}
}

// Follow runs fn in a goroutine with a context that ends with the holding
// or StopFollowing, whichever comes first. One follower per holding.
func (c *Core) Follow(fn func(ctx context.Context)) {
	c.wg.Go(func() { fn(c.follow) })
}

// StopFollowing stops the follower and the lease-loss hook, and waits for
// the follower to return.
func (c *Core) StopFollowing() {
	c.unbind()
	c.stopFollow()
	c.wg.Wait()
}

// Release deletes the holding's key, with then, in one transaction guarded
// by the holding, or runs els if the guard fails (the key went already).
// It is detached from ctx's cancellation and bounded by the TTL, each try
// short (retry.Attempt) so that a try sent to a dead or hung etcd leader is
// sent again once another is elected; the transaction is safe to repeat.
// Its requests require a leader, so a member cut off from the majority
// answers at once and another is asked. It reports lost, having deleted
// nothing, once the lease is lost, before or meanwhile: the key goes with
// the lease. If etcd cannot be reached in time it returns the error, and the
// key stands while the lease lives.
func (c *Core) Release(ctx context.Context, then, els []clientv3.Op) (lost bool, err error) {
	ops := append([]clientv3.Op{clientv3.OpDelete(c.key)}, then...)
	_, lost, err = remove(ctx, c.cli, c.lease, c.ttl, c.Guard(), ops, els)
	return lost, err
}

// ReleaseIf is Release that also needs cmps to hold: it deletes the key,
// with then, only if the holding stands and cmps hold, and reports in ok
// whether they did. Tries, bounds and the lost case are Release's.
func (c *Core) ReleaseIf(ctx context.Context, cmps []clientv3.Cmp, then []clientv3.Op) (ok, lost bool, err error) {
	ops := append([]clientv3.Op{clientv3.OpDelete(c.key)}, then...)
	return remove(ctx, c.cli, c.lease, c.ttl, append(c.Guard(), cmps...), ops, nil)
}

// Withdraw deletes key, a recipe's key on lease l, if cmps hold, after an
// acquisition that failed (no holding was made): the same delete as a
// release, detached from ctx's cancellation, bounded by ttl, each try short,
// given up once l is lost. A key left on a live lease would stand for a
// request nobody waits on, so errors are tried again until then; what is
// left after that goes with the lease.
func Withdraw(ctx context.Context, cli *clientv3.Client, l *leasekeeper.Lease, ttl time.Duration, key string, cmps ...clientv3.Cmp) {
	_, _, _ = remove(ctx, cli, l, ttl, cmps, []clientv3.Op{clientv3.OpDelete(key)}, nil)
}

// remove runs a delete guarded by cmps, and reports whether they held: see
// Release.
func remove(ctx context.Context, cli *clientv3.Client, l *leasekeeper.Lease, ttl time.Duration, cmps []clientv3.Cmp, ops, els []clientv3.Op) (ok, lost bool, err error) {
	if l.Err() != nil {
		return false, true, nil
	}
	cctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(context.WithoutCancel(ctx)), ttl)
	defer cancel()
	// A key on a lost lease goes with it: once the lease is lost meanwhile
	// (etcd unreachable), there is nothing to wait for.
	defer context.AfterFunc(l.Context(), cancel)()
	var last error
	err = retry.Attempts(cctx, retry.RequestPolicy, retry.Attempt(ttl), func(ctx context.Context) error {
		var resp *clientv3.TxnResponse
		resp, last = cli.Txn(ctx).If(cmps...).Then(ops...).Else(els...).Commit()
		if last == nil {
			ok = resp.Succeeded
		}
		return last
	})
	switch {
	case err == nil:
		return ok, false, nil
	case l.Err() != nil:
		return false, true, nil
	case cctx.Err() != nil && last != nil:
		return false, false, fmt.Errorf("%w (last error: %w)", context.Cause(cctx), last)
	}
	return false, false, err
}
