package semaphore

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/holding"
	"github.com/concordkit/concord/internal/retry"
	callturn "github.com/concordkit/concord/internal/turn"
	"github.com/concordkit/concord/internal/watch"
)

// Permit is a grant of n permits: a fenced, lease-bound holding (see
// internal/holding). Its methods are safe for concurrent use.
//
// Token, Key, Lease and Guard are the holding's. Context is canceled as
// soon as the permit can no longer be trusted, with a cause that errors.Is
// ErrLost: the lease passed its safe deadline without renewal (before the
// server can expire it and grant the permits to someone else), etcd
// reported it gone, or the key was deleted; after the bound of WithMaxHold,
// the cause also errors.Is ErrExpired. After Release it is canceled with
// ErrReleased.
type Permit struct {
	holding.Core
	n     int
	tel   *telemetry
	start time.Time

	releasing chan struct{} // closed when Release starts talking to etcd

	// release serialises Release and protects released. A call waiting
	// for it gives up when its context ends: the call ahead of it may be
	// bound to wait up to the TTL for a cut-off etcd.
	release  callturn.Turn
	released bool
}

// N returns how many permits it holds.
func (p *Permit) N() int { return p.n }

// Release gives the permits back. It deletes the key under a context
// detached from ctx's cancellation and bounded by the lease TTL, and changes
// state only once etcd has confirmed, or once the lease is lost (the key
// goes with it). Release of a permit already released or lost returns nil;
// if etcd cannot be reached in time it returns the error and may be called
// again. A Release made while another Release of the same permit is under
// way waits for it, or returns ctx's cause if ctx ends first.
func (p *Permit) Release(ctx context.Context) error {
	p.StopExpiry()
	if err := p.release.Take(ctx); err != nil {
		return err
	}
	defer p.release.Done()
	if p.released {
		return nil
	}
	if !p.LeaseLost() {
		select {
		case <-p.releasing:
		default:
			close(p.releasing)
		}
		if _, err := p.Core.Release(ctx, nil, nil); err != nil {
			return fmt.Errorf("semaphore: release %s: %w", p.Key(), err)
		}
	}
	if p.LeaseLost() {
		// Lost before the delete (or instead of it): the permit ends as
		// lost, whether the lease's own hook or this call ends it first.
		p.Lose(p.LeaseCause())
	}
	p.released = true
	p.End(ErrReleased)
	p.StopFollowing()
	p.tel.Held(time.Since(p.start))
	return nil
}

func newPermit(a *acquisition, pool *watch.Pool, tel *telemetry, maxHold time.Duration) *Permit {
	p := &Permit{
		n:         a.t.n,
		tel:       tel,
		start:     time.Now(),
		releasing: make(chan struct{}),
		release:   callturn.New(),
	}
	p.Init(a.cli, a.lease, a.timeout, a.t.key, a.t.rev, func(cause error) error {
		return fmt.Errorf("%w: %w", ErrLost, cause)
	})
	p.Follow(func(ctx context.Context) { p.monitor(ctx, a, pool) })
	if maxHold > 0 {
		// The release is Release, detached and bounded by the TTL; the
		// core makes it again if it fails.
		expired := fmt.Errorf("%w after %v (WithMaxHold)", ErrExpired, maxHold)
		p.ExpireAfter(maxHold, expired, func() error { return p.Release(context.Background()) })
	}
	return p
}

// monitor follows the permit's key on the acquisition's watch: a deletion
// by anyone but Release ends the permit. Release joins it.
func (p *Permit) monitor(ctx context.Context, a *acquisition, pool *watch.Pool) {
	defer func() { pool.Put(a.w) }()
	t := &a.t
	ended := func(err error) {
		select {
		case <-p.releasing:
			return
		default:
		}
		if errors.Is(err, errOwnGone) {
			p.Lose(fmt.Errorf("key %s deleted", p.Key()))
			return
		}
		p.Lose(err)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case resp, ok := <-a.w.C:
			if !ok {
				// Refused for good (a permission): the permit can no
				// longer be followed, so it cannot be trusted.
				ended(a.w.Err())
				return
			}
			if resp.Created {
				// Created again after a failure: close the gap.
				if resp.Header.Revision <= t.seen {
					continue
				}
				var gresp *clientv3.GetResponse
				err := retry.Do(ctx, retry.RequestPolicy, func(ctx context.Context) (err error) {
					gresp, err = a.cli.Get(ctx, t.key)
					return err
				})
				switch {
				case err != nil && ctx.Err() != nil:
					return
				case err != nil:
					ended(err)
					return
				case len(gresp.Kvs) == 0 || gresp.Kvs[0].CreateRevision != t.rev:
					ended(errOwnGone)
					return
				default:
					t.seen = gresp.Header.Revision
				}
				continue
			}
			for _, ev := range resp.Events {
				// Only own key matters now; a bad limit value is the
				// waiters' problem, not a reason to drop a granted permit.
				if err := t.apply(ev); errors.Is(err, errOwnGone) {
					ended(err)
					return
				}
			}
		}
	}
}
