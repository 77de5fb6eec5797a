package lock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/holding"
	"github.com/concordkit/concord/internal/retry"
	callturn "github.com/concordkit/concord/internal/turn"
	"github.com/concordkit/concord/internal/watch"
)

// Hold is a granted lock: a fenced, lease-bound holding (see
// internal/holding). Its methods are safe for concurrent use.
//
// Token is the create revision of the lock's key in etcd: it strictly
// increases across successive holders of the lock, so a protected resource
// can refuse any token smaller than the largest it has seen. Key and Lease
// are the key that represents the hold and the lease it is bound to.
//
// Context is canceled as soon as the hold can no longer be trusted, with a
// cause that errors.Is ErrLost: the lease's safe deadline passed without
// renewal (before the server can expire the lease and grant the lock to
// the next waiter), etcd reported the lease gone, or the key was deleted by
// someone else. After ForceRelease the cause also errors.Is ErrRevoked;
// after the bound of WithMaxHold, ErrExpired. After Unlock it is canceled
// with ErrUnlocked.
//
// Guard returns comparisons that hold only while the lock is held, for
// fenced writes: cli.Txn(ctx).If(h.Guard()...).Then(ops...). A guarded
// transaction that writes goes through Raft, so it is refused once the
// hold's key is gone, whichever member serves it. A transaction with no
// operations, or only serializable reads, does not: etcd answers such a
// read-only transaction from the serving member's own state, with no read
// barrier, and a follower that has not yet applied the key's deletion still
// lets the guard pass. To ask etcd whether the lock is still held, put a
// linearizable read in the transaction (any clientv3.OpGet without
// WithSerializable), which makes etcd confirm the member is up to date.
//
// Work done under the lock runs under Context, and writes into etcd that
// must happen only while the lock is held go through Guard. Unlock releases
// it; calling Unlock more than once is fine. A Hold runs one goroutine, which
// follows its key; it ends with the hold (Unlock joins it, and it returns by
// itself when the hold is lost).
type Hold struct {
	holding.Core
	prefix string // the lock's prefix
	tel    *telemetry
	start  time.Time
	// next is the key behind this one as the last read while waiting saw
	// it, with its create revision; Unlock touches it (touchNext).
	next    string
	nextRev int64

	free      func()        // returns the Mutex value's local slot; once
	unlocking chan struct{} // closed when Unlock starts talking to etcd

	revokeOnce sync.Once
	revoked    chan struct{}
	armOnce    sync.Once
	arm        chan struct{} // closed by the first Revoked call: watch for requests
	onRevoke   func()        // a MultiHold's hook, set before the monitor starts

	// unlock serialises Unlock and protects released. A call waiting for
	// it gives up when its context ends: the call ahead of it may be bound
	// to wait up to the TTL for a cut-off etcd.
	unlock   callturn.Turn
	released bool
}

// Revoked is closed when someone asked the holder to release the lock
// (RequestRelease, or ForceRelease). A polite holder finishes its work and
// calls Unlock.
//
// The first call makes the hold watch for release requests (one more watch,
// on the request's key alone); holds whose owner never asks pay nothing.
func (h *Hold) Revoked() <-chan struct{} {
	h.armOnce.Do(func() { close(h.arm) })
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
	h.StopExpiry()
	if err := h.unlock.Take(ctx); err != nil {
		return err
	}
	defer h.unlock.Done()
	if h.released {
		return nil
	}
	// A lost lease needs no delete: the keeper revokes it, or the server
	// expires it, and the key and any release request go with it.
	lost := h.LeaseLost()
	if !lost {
		select {
		case <-h.unlocking:
		default:
			close(h.unlocking) // the monitor ignores our own delete from now on
		}
		// The release request, if any, goes in the same transaction; when
		// the key is no longer ours (lost, forced) only the request is left
		// to tidy.
		rel := releaseKey(h.prefix, h.Token())
		then := []clientv3.Op{clientv3.OpDelete(rel)}
		if h.next != "" {
			then = append(then, touchNext(h.next, h.nextRev))
		}
		var err error
		if lost, err = h.Core.Release(ctx, then, []clientv3.Op{clientv3.OpDelete(rel)}); err != nil {
			return fmt.Errorf("lock: unlock %q: %w", h.Key(), err)
		}
	}
	if lost {
		// The lease was lost before the delete: the hold ends as lost,
		// whether the lease's own hook or this call ends it first.
		h.Lose(h.LeaseCause())
	}
	h.released = true
	h.End(ErrUnlocked)
	h.StopFollowing()
	h.free()
	h.tel.Held(time.Since(h.start))
	return nil
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

// newHold turns a granted acquisition into a hold and starts its monitor,
// which owns the acquisition's watch from now on.
func newHold(a *acquisition, tel *telemetry, free func(), onRevoke func(), maxHold time.Duration) *Hold {
	h := &Hold{
		prefix:    a.t.prefix,
		tel:       tel,
		start:     time.Now(),
		next:      a.t.next,
		nextRev:   a.t.nextRev,
		free:      free,
		unlocking: make(chan struct{}),
		revoked:   make(chan struct{}),
		arm:       make(chan struct{}),
		onRevoke:  onRevoke,
		unlock:    callturn.New(),
	}
	h.Init(a.cli, a.lease, a.timeout, a.t.key, a.t.rev, func(cause error) error {
		return fmt.Errorf("%w: %w", ErrLost, cause)
	})
	// A lost hold gives the Mutex value's local slot back: the key is gone
	// (or going with its lease), so another goroutine may queue again.
	// Unlock gives it back itself, once its monitor is stopped.
	context.AfterFunc(h.Context(), func() {
		if !errors.Is(context.Cause(h.Context()), ErrUnlocked) {
			h.free()
		}
	})
	if a.t.requested {
		h.fireRevoked()
	}
	h.Follow(func(ctx context.Context) { h.monitor(ctx, a) })
	if maxHold > 0 {
		// The release is Unlock, detached and bounded by the TTL; the
		// core makes it again if it fails.
		expired := fmt.Errorf("%w after %v (WithMaxHold)", ErrExpired, maxHold)
		h.ExpireAfter(maxHold, expired, func() error { return h.Unlock(context.Background()) })
	}
	return h
}

// monitor follows the hold's key on the acquisition's watch: a deletion by
// anyone but Unlock ends the hold (ForceRelease, or the server expiring the
// lease before the keeper noticed), and a release request fires Revoked. It
// returns when the hold ends or Unlock stops it; Unlock joins it.
func (h *Hold) monitor(ctx context.Context, a *acquisition) {
	defer a.putOwn()
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
		case <-arm:
			arm = nil
			rel = watch.Open(ctx, a.cli, releaseKey(a.t.prefix, a.t.rev), watch.Config{})
			relCh = rel.C
		case resp, ok := <-relCh:
			if !ok {
				// Refused for good (a permission): release requests go
				// unheard; the hold itself stands.
				relCh = nil
				continue
			}
			a.onRelease(ctx, resp)
		case resp, ok := <-a.w.C:
			if !ok {
				// Refused for good (a permission): the hold can no longer
				// be followed, so it cannot be trusted.
				h.keyEnded(ctx, a, a.w.Err())
				return
			}
			if !h.onOwnHeld(ctx, a, resp) {
				return
			}
		}
		if a.t.requested {
			h.fireRevoked()
		}
	}
}

// onRelease takes in what the release-request watch reports.
func (a *acquisition) onRelease(ctx context.Context, resp clientv3.WatchResponse) {
	if resp.Created {
		// A request made before the watch started, or while it was broken:
		// read it once.
		a.readRelease(ctx)
		return
	}
	for _, ev := range resp.Events {
		if ev.Type == clientv3.EventTypePut {
			if force, err := decodeRelease(ev.Kv.Value); err == nil {
				a.t.requested = true
				a.t.forced = a.t.forced || force
			}
		}
	}
}

// onOwnHeld takes in what the watch on the hold's own key reports, and
// reports whether the hold still stands.
func (h *Hold) onOwnHeld(ctx context.Context, a *acquisition, resp clientv3.WatchResponse) bool {
	if !resp.Created {
		for _, ev := range resp.Events {
			if err := a.t.apply(ev); err != nil {
				h.keyEnded(ctx, a, err)
				return false
			}
		}
		return true
	}
	err := retry.Do(ctx, retry.RequestPolicy, func(ctx context.Context) error {
		return a.onCreatedHeld(ctx, resp.Header.Revision)
	})
	switch {
	case err == nil:
		return true
	case errors.Is(err, errOwnGone) || errors.Is(err, ErrCorrupt) || ctx.Err() == nil:
		h.keyEnded(ctx, a, err)
	}
	// Otherwise ctx ended: the hold is ending already.
	return false
}

// keyEnded ends the hold after its key went or could no longer be
// followed, unless Unlock deleted it.
func (h *Hold) keyEnded(ctx context.Context, a *acquisition, err error) {
	select {
	case <-h.unlocking:
		return // our own delete
	default:
	}
	t := &a.t
	if errors.Is(err, errOwnGone) && !t.forced {
		// A deletion event does not say who deleted; a forced release left
		// its marker next to the key, which tells why the key went.
		a.readRelease(ctx)
	}
	if t.requested {
		h.fireRevoked()
	}
	switch {
	case errors.Is(err, errOwnGone) && t.forced:
		h.Lose(fmt.Errorf("%w: key %s deleted by ForceRelease", ErrRevoked, h.Key()))
	case errors.Is(err, errOwnGone):
		h.Lose(fmt.Errorf("key %s deleted", h.Key()))
	default:
		h.Lose(err)
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
