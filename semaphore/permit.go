package semaphore

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/guard"
	"github.com/concordkit/concord/internal/retry"
	callturn "github.com/concordkit/concord/internal/turn"
	"github.com/concordkit/concord/internal/watch"
	"github.com/concordkit/concord/leasekeeper"
)

// Permit is a grant of n permits: a fenced, lease-bound holding. Its
// methods are safe for concurrent use.
type Permit struct {
	cli    *clientv3.Client
	lease  *leasekeeper.Lease
	key    string
	token  int64
	n      int
	tel    *telemetry
	start  time.Time
	expire time.Duration

	ctx         context.Context
	cancel      context.CancelCauseFunc
	stopLease   func() bool
	stopMonitor func()
	monitorDone chan struct{}
	releasing   chan struct{} // closed when Release starts talking to etcd

	// release serialises Release and protects released. A call waiting
	// for it gives up when its context ends: the call ahead of it may be
	// bound to wait up to the TTL for a cut-off etcd.
	release  callturn.Turn
	released bool
}

// Key returns the etcd key that represents the permit.
func (p *Permit) Key() string { return p.key }

// N returns how many permits it holds.
func (p *Permit) N() int { return p.n }

// Token returns the fencing token: the create revision of the permit's key.
// Tokens are unique and increase with the order of requests.
func (p *Permit) Token() int64 { return p.token }

// Lease returns the lease the permit is bound to.
func (p *Permit) Lease() clientv3.LeaseID { return p.lease.ID() }

// Context is canceled as soon as the permit can no longer be trusted, with a
// cause that errors.Is ErrLost: the lease passed its safe deadline without
// renewal (before the server can expire it and grant the permits to someone
// else), etcd reported it gone, or the key was deleted. After Release it is
// canceled with ErrReleased.
func (p *Permit) Context() context.Context { return p.ctx }

// Guard returns comparisons that hold only while the permit is held.
func (p *Permit) Guard() []clientv3.Cmp { return guard.Held(p.key, p.token) }

// Release gives the permits back. It deletes the key under a context
// detached from ctx's cancellation and bounded by the lease TTL, and changes
// state only once etcd has confirmed, or once the lease is lost (the key
// goes with it). Release of a permit already released or lost returns nil;
// if etcd cannot be reached in time it returns the error and may be called
// again. A Release made while another Release of the same permit is under
// way waits for it, or returns ctx's cause if ctx ends first.
func (p *Permit) Release(ctx context.Context) error {
	if err := p.release.Take(ctx); err != nil {
		return err
	}
	defer p.release.Done()
	if p.released {
		return nil
	}
	if p.lease.Err() == nil {
		select {
		case <-p.releasing:
		default:
			close(p.releasing)
		}
		cctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(context.WithoutCancel(ctx)), p.expire)
		defer cancel()
		// A key on a lost lease goes with it: once the lease is lost
		// meanwhile (etcd unreachable), there is nothing to wait for.
		defer context.AfterFunc(p.lease.Context(), cancel)()
		// Each attempt is short (retry.Attempt): one sent to an etcd leader
		// that died or hangs is sent again once another is elected. The
		// delete is guarded by the key's create revision: safe to repeat.
		var last error
		err := retry.Attempts(cctx, retry.RequestPolicy, retry.Attempt(p.expire), func(ctx context.Context) error {
			_, last = p.cli.Txn(ctx).If(p.Guard()...).Then(clientv3.OpDelete(p.key)).Commit()
			return last
		})
		switch {
		case err == nil || p.lease.Err() != nil:
			// Released, or the key goes with the lease.
		case cctx.Err() != nil && last != nil:
			return fmt.Errorf("semaphore: release %s: %w (last error: %w)", p.key, context.Cause(cctx), last)
		default:
			return fmt.Errorf("semaphore: release %s: %w", p.key, err)
		}
	}
	if p.lease.Err() != nil {
		// Lost before the delete (or instead of it): the permit ends as
		// lost, whether the lease's own hook or this call cancels it first.
		p.cancel(lostErr(p.lease))
	}
	p.released = true
	p.cancel(ErrReleased)
	p.stopLease()
	p.stopMonitor()
	<-p.monitorDone
	p.tel.Held(time.Since(p.start))
	return nil
}

func newPermit(a *acquisition, pool *watch.Pool, tel *telemetry) *Permit {
	ctx, cancel := context.WithCancelCause(context.Background())
	// The monitor ends with the permit, also when it is blocked restarting
	// a watch while etcd cannot be reached.
	mctx, stopMonitor := context.WithCancel(ctx)
	p := &Permit{
		cli:         a.cli,
		lease:       a.lease,
		key:         a.t.key,
		token:       a.t.rev,
		n:           a.t.n,
		tel:         tel,
		start:       time.Now(),
		expire:      a.timeout,
		ctx:         ctx,
		cancel:      cancel,
		stopMonitor: stopMonitor,
		monitorDone: make(chan struct{}),
		releasing:   make(chan struct{}),
		release:     callturn.New(),
	}
	p.stopLease = context.AfterFunc(a.lease.Context(), func() { cancel(lostErr(a.lease)) })
	go p.monitor(mctx, a, pool)
	return p
}

// monitor follows the permit's key on the acquisition's watch: a deletion
// by anyone but Release ends the permit. Release joins it.
func (p *Permit) monitor(ctx context.Context, a *acquisition, pool *watch.Pool) {
	defer close(p.monitorDone)
	defer func() { pool.Put(a.w) }()
	t := &a.t
	ended := func(err error) {
		select {
		case <-p.releasing:
			return
		default:
		}
		if errors.Is(err, errOwnGone) {
			p.cancel(fmt.Errorf("%w: key %s deleted", ErrLost, p.key))
			return
		}
		p.cancel(fmt.Errorf("%w: %w", ErrLost, err))
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.ctx.Done():
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
