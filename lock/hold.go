package lock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/guard"
	"github.com/concordkit/concord/internal/retry"
	callturn "github.com/concordkit/concord/internal/turn"
	"github.com/concordkit/concord/internal/watch"
	"github.com/concordkit/concord/leasekeeper"
)

// Hold is a granted lock: a fenced, lease-bound holding. Its methods are
// safe for concurrent use.
//
// Work done under the lock runs under Context, and writes into etcd that
// must happen only while the lock is held go through Guard. Unlock releases
// it; calling Unlock more than once is fine. A Hold runs one goroutine, which
// follows its key; it ends with the hold (Unlock joins it, and it returns by
// itself when the hold is lost).
type Hold struct {
	cli    *clientv3.Client
	lease  *leasekeeper.Lease
	prefix string // the lock's prefix
	key    string
	token  int64
	parts  []*Hold // for a Multi: the holds it is made of, in lock order
	tel    *telemetry
	start  time.Time
	expire time.Duration // bound of the detached unlock
	// next is the key behind this one as the last read while waiting saw
	// it, with its create revision; Unlock touches it (touchNext).
	next    string
	nextRev int64

	ctx         context.Context
	cancel      context.CancelCauseFunc
	stopLease   func() bool   // stops the lease-loss hook
	stopMonitor func()        // stops the key watch; nil for a Multi
	monitorDone chan struct{} // closed when the monitor goroutine returns
	free        func()        // returns the Mutex value's local slot; once
	unlocking   chan struct{} // closed when Unlock starts talking to etcd

	revokeOnce sync.Once
	revoked    chan struct{}
	armOnce    sync.Once
	arm        chan struct{} // closed by the first Revoked call: watch for requests
	onRevoke   func()        // a Multi's hook, set before the monitor starts

	// unlock serialises Unlock and protects released. A call waiting for
	// it gives up when its context ends: the call ahead of it may be bound
	// to wait up to the TTL for a cut-off etcd.
	unlock   callturn.Turn
	released bool
}

// Token returns the fencing token: the create revision of the lock's key in
// etcd. It strictly increases across successive holders of the lock, so a
// protected resource can refuse any token smaller than the largest it has
// seen. A Multi's Token is the token of its first part (by sorted name); see
// Tokens.
func (h *Hold) Token() int64 {
	if h.parts != nil {
		return h.parts[0].token
	}
	return h.token
}

// Tokens returns the token of each part of a Multi in lock order (sorted
// names), or the single token of a Mutex or RWMutex hold.
func (h *Hold) Tokens() []int64 {
	if h.parts == nil {
		return []int64{h.token}
	}
	out := make([]int64, len(h.parts))
	for i, p := range h.parts {
		out[i] = p.token
	}
	return out
}

// Key returns the etcd key that represents the hold ("" for a Multi).
func (h *Hold) Key() string { return h.key }

// Lease returns the lease the hold is bound to.
func (h *Hold) Lease() clientv3.LeaseID { return h.lease.ID() }

// Context is canceled as soon as the hold can no longer be trusted, with a
// cause that errors.Is ErrLost: the lease's safe deadline passed without
// renewal (before the server can expire the lease and grant the lock to the
// next waiter), etcd reported the lease gone, or the key was deleted by
// someone else. After ForceRelease the cause also errors.Is ErrRevoked.
// After Unlock it is canceled with ErrUnlocked.
func (h *Hold) Context() context.Context { return h.ctx }

// Guard returns comparisons that hold only while the lock is held, for
// fenced writes: cli.Txn(ctx).If(h.Guard()...).Then(ops...). A Multi's guard
// covers every part.
//
// A guarded transaction that writes goes through Raft, so it is refused once
// the hold's key is gone, whichever member serves it. A transaction with no
// operations, or only serializable reads, does not: etcd answers such a
// read-only transaction from the serving member's own state, with no read
// barrier, and a follower that has not yet applied the key's deletion still
// lets the guard pass. To ask etcd whether the lock is still held, put a
// linearizable read in the transaction (any clientv3.OpGet without
// WithSerializable), which makes etcd confirm the member is up to date.
func (h *Hold) Guard() []clientv3.Cmp {
	if h.parts == nil {
		return guard.Held(h.key, h.token)
	}
	var out []clientv3.Cmp
	for _, p := range h.parts {
		out = append(out, p.Guard()...)
	}
	return out
}

// Revoked is closed when someone asked the holder to release the lock
// (RequestRelease, or ForceRelease). A polite holder finishes its work and
// calls Unlock.
//
// The first call makes the hold watch for release requests (one more watch,
// on the request's key alone); holds whose owner never asks pay nothing.
func (h *Hold) Revoked() <-chan struct{} {
	h.armOnce.Do(func() {
		if h.parts != nil {
			for _, p := range h.parts {
				p.Revoked()
			}
			return
		}
		close(h.arm)
	})
	return h.revoked
}

func (h *Hold) fireRevoked() {
	h.revokeOnce.Do(func() {
		close(h.revoked)
		if h.onRevoke != nil {
			h.onRevoke()
		}
	})
}

// lose cancels the hold's context with cause and gives the Mutex value's
// local slot back: the key is gone (or going with its lease), so another
// goroutine may queue again.
func (h *Hold) lose(cause error) {
	h.cancel(cause)
	h.free()
}

// Unlock releases the lock. It deletes the key with a context detached from
// ctx's cancellation and bounded by the lease TTL, so a canceled caller still
// releases; it changes the hold's state only once etcd has confirmed, or
// once the lease is lost (the key goes with it). Unlock of a hold already
// released or lost returns nil. Requests carry
// WithRequireLeader, so a member cut off from the leader answers at once and
// the delete is retried elsewhere. If etcd cannot be reached in time, Unlock
// returns the error and the hold stays as it was: the key remains while the
// lease lives, so call Unlock again (or close the keeper, which revokes the
// lease). An Unlock made while another Unlock of the same hold is under way
// waits for it, or returns ctx's cause if ctx ends first.
func (h *Hold) Unlock(ctx context.Context) error {
	if h.parts != nil {
		return h.unlockMulti(ctx)
	}
	if err := h.unlock.Take(ctx); err != nil {
		return err
	}
	defer h.unlock.Done()
	if h.released {
		return nil
	}
	// A lost lease needs no delete: the keeper revokes it, or the server
	// expires it, and the key and any release request go with it.
	lost := h.lease.Err() != nil
	if !lost {
		select {
		case <-h.unlocking:
		default:
			close(h.unlocking) // the monitor ignores our own delete from now on
		}
		var err error
		if lost, err = h.deleteKey(ctx); err != nil {
			return err
		}
	}
	if lost {
		// The lease was lost before the delete: the hold ends as lost,
		// whether the lease's own hook or this call cancels it first.
		h.cancel(lostErr(h.lease))
	}
	h.released = true
	h.cancel(ErrUnlocked)
	h.stopLease()
	h.stopMonitor()
	<-h.monitorDone
	h.free()
	h.tel.Held(time.Since(h.start))
	return nil
}

// deleteKey deletes the hold's key, and reports lost if the lease was lost
// first (the key goes with it).
func (h *Hold) deleteKey(ctx context.Context) (lost bool, err error) {
	cctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(context.WithoutCancel(ctx)), h.expire)
	defer cancel()
	// A key on a lost lease goes with it, and the release request with it:
	// once the lease is lost meanwhile (etcd unreachable), there is nothing
	// to wait for.
	defer context.AfterFunc(h.lease.Context(), cancel)()
	rel := releaseKey(h.prefix, h.token)
	// The release request, if any, goes in the same transaction; when the
	// key is no longer ours (lost, forced) only the request is left to
	// tidy. Each attempt is short (retry.Attempt): one sent to an etcd
	// leader that died or hangs is sent again once another is elected,
	// instead of holding the lock for the whole TTL. The transaction is
	// safe to repeat: it is guarded by the key's create revision.
	then := []clientv3.Op{clientv3.OpDelete(h.key), clientv3.OpDelete(rel)}
	if h.next != "" {
		then = append(then, touchNext(h.next, h.nextRev))
	}
	var last error
	err = retry.Attempts(cctx, retry.RequestPolicy, retry.Attempt(h.expire), func(ctx context.Context) error {
		_, last = h.cli.Txn(ctx).
			If(guard.Held(h.key, h.token)...).
			Then(then...).
			Else(clientv3.OpDelete(rel)).
			Commit()
		return last
	})
	switch {
	case err == nil:
		return false, nil
	case h.lease.Err() != nil:
		return true, nil
	case cctx.Err() != nil && last != nil:
		return false, fmt.Errorf("lock: unlock %q: %w (last error: %w)", h.key, context.Cause(cctx), last)
	}
	return false, fmt.Errorf("lock: unlock %q: %w", h.key, err)
}

// touchNext is the part of an unlock that serves the key behind (as the
// holder's last read while waiting saw it): if that key is still the same
// incarnation, it is put again, value and lease unchanged, in the same
// revision as the delete. The put reaches its waiter on the watch of its own
// key and proves the key stood at the revision that grants it, which spares
// the waiter the progress request that would confirm it (see confirm). A
// touch proves only that the key stood, which holds whoever wrote it; a key
// behind that went, or was replaced, is not written (the comparison fails),
// and its waiter confirms by a progress request as without a touch.
func touchNext(key string, rev int64) clientv3.Op {
	return clientv3.OpTxn(
		[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", rev)},
		[]clientv3.Op{clientv3.OpPut(key, "", clientv3.WithIgnoreValue(), clientv3.WithIgnoreLease())},
		nil)
}

func (h *Hold) unlockMulti(ctx context.Context) error {
	if err := h.unlock.Take(ctx); err != nil {
		return err
	}
	defer h.unlock.Done()
	if h.released {
		return nil
	}
	var errs []error
	for i := len(h.parts) - 1; i >= 0; i-- {
		errs = append(errs, h.parts[i].Unlock(ctx))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	h.released = true
	h.cancel(ErrUnlocked)
	h.stopLease()
	h.tel.Held(time.Since(h.start))
	return nil
}

// newHold turns a granted acquisition into a hold and starts its monitor,
// which owns the acquisition's watch from now on.
func newHold(a *acquisition, tel *telemetry, free func(), onRevoke func()) *Hold {
	ctx, cancel := context.WithCancelCause(context.Background())
	// The monitor ends with the hold, also when it is blocked restarting a
	// watch while etcd cannot be reached.
	mctx, stopMonitor := context.WithCancel(ctx)
	h := &Hold{
		cli:         a.cli,
		lease:       a.lease,
		prefix:      a.t.prefix,
		key:         a.t.key,
		token:       a.t.rev,
		tel:         tel,
		start:       time.Now(),
		expire:      a.timeout,
		next:        a.t.next,
		nextRev:     a.t.nextRev,
		ctx:         ctx,
		cancel:      cancel,
		stopMonitor: stopMonitor,
		monitorDone: make(chan struct{}),
		free:        free,
		unlocking:   make(chan struct{}),
		revoked:     make(chan struct{}),
		arm:         make(chan struct{}),
		onRevoke:    onRevoke,
		unlock:      callturn.New(),
	}
	h.stopLease = context.AfterFunc(a.lease.Context(), func() { h.lose(lostErr(a.lease)) })
	if a.t.requested {
		h.fireRevoked()
	}
	go h.monitor(mctx, a)
	return h
}

// monitor follows the hold's key on the acquisition's watch: a deletion by
// anyone but Unlock ends the hold (ForceRelease, or the server expiring the
// lease before the keeper noticed), and a release request fires Revoked. It
// returns when the hold ends or Unlock stops it; Unlock joins it.
func (h *Hold) monitor(ctx context.Context, a *acquisition) {
	defer close(h.monitorDone)
	defer a.putOwn()
	t := &a.t
	ended := func(err error) {
		select {
		case <-h.unlocking:
			return // our own delete
		default:
		}
		if errors.Is(err, errOwnGone) && !t.forced {
			// A deletion event does not say who deleted; a forced release
			// left its marker next to the key, which tells why the key went.
			a.readRelease(ctx)
		}
		if t.requested {
			h.fireRevoked()
		}
		switch {
		case errors.Is(err, errOwnGone) && t.forced:
			h.lose(fmt.Errorf("%w: %w: key %s deleted by ForceRelease", ErrRevoked, ErrLost, h.key))
		case errors.Is(err, errOwnGone):
			h.lose(fmt.Errorf("%w: key %s deleted", ErrLost, h.key))
		default:
			h.lose(fmt.Errorf("%w: %w", ErrLost, err))
		}
	}
	// The release-request watch, started when Revoked is first called.
	arm := h.arm
	var rel *watch.Watch
	defer func() {
		if rel != nil {
			rel.Stop()
		}
	}()
	var relCh <-chan clientv3.WatchResponse
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.ctx.Done():
			return
		case <-arm:
			arm = nil
			rel = watch.Open(ctx, a.cli, releaseKey(t.prefix, t.rev), watch.Config{})
			relCh = rel.C
		case resp, ok := <-relCh:
			switch {
			case !ok:
				// Refused for good (a permission): release requests go
				// unheard; the hold itself stands.
				relCh = nil
			case resp.Created:
				// A request made before the watch started, or while it was
				// broken: read it once.
				a.readRelease(ctx)
			default:
				for _, ev := range resp.Events {
					if ev.Type == clientv3.EventTypePut {
						if force, err := decodeRelease(ev.Kv.Value); err == nil {
							t.requested = true
							t.forced = t.forced || force
						}
					}
				}
			}
			if t.requested {
				h.fireRevoked()
			}
		case resp, ok := <-a.w.C:
			if !ok {
				// Refused for good (a permission): the hold can no longer
				// be followed, so it cannot be trusted.
				ended(a.w.Err())
				return
			}
			if resp.Created {
				err := retry.Do(ctx, retry.RequestPolicy, func(ctx context.Context) error {
					return a.onCreatedHeld(ctx, resp.Header.Revision)
				})
				switch {
				case err == nil:
				case errors.Is(err, errOwnGone) || errors.Is(err, ErrCorrupt) || ctx.Err() == nil:
					ended(err)
					return
				default:
					return // the hold ends
				}
			} else {
				for _, ev := range resp.Events {
					if err := t.apply(ev); err != nil {
						ended(err)
						return
					}
				}
			}
			if t.requested {
				h.fireRevoked()
			}
		}
	}
}

// onCreatedHeld closes the gap before a watch created while holding, by
// reading only the hold's key and release request: what goes on in the rest
// of the queue no longer matters.
func (a *acquisition) onCreatedHeld(ctx context.Context, rev int64) error {
	t := &a.t
	if rev <= t.seen {
		return nil
	}
	resp, err := a.cli.Txn(ctx).Then(
		clientv3.OpGet(t.key),
		clientv3.OpGet(releaseKey(t.prefix, t.rev)),
	).Commit()
	if err != nil {
		return err
	}
	t.seen = resp.Header.Revision
	own := resp.Responses[0].GetResponseRange().Kvs
	if len(own) == 0 || own[0].CreateRevision != t.rev {
		// A forced release put its request in the same transaction as
		// the delete, so a request still present tells which it was.
		if rel := resp.Responses[1].GetResponseRange().Kvs; len(rel) > 0 {
			if force, derr := decodeRelease(rel[0].Value); derr == nil && force {
				t.forced = true
			}
		}
		return errOwnGone
	}
	if rel := resp.Responses[1].GetResponseRange().Kvs; len(rel) > 0 {
		force, err := decodeRelease(rel[0].Value)
		if err != nil {
			return err
		}
		t.requested = true
		t.forced = t.forced || force
	}
	return nil
}

// readRelease reads the hold's release request, if any, into t. Errors are
// ignored: the request is advisory, and a forced release still ends the
// hold as lost.
func (a *acquisition) readRelease(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	resp, err := a.cli.Get(rctx, releaseKey(a.t.prefix, a.t.rev))
	if err != nil || len(resp.Kvs) == 0 {
		return
	}
	if force, err := decodeRelease(resp.Kvs[0].Value); err == nil {
		a.t.requested = true
		a.t.forced = a.t.forced || force
	}
}
