package lock

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	callturn "github.com/concordkit/concord/internal/turn"
	"github.com/concordkit/concord/leasekeeper"
)

// Multi takes several locks all-or-nothing. The locks are taken one by one
// in one global order — their names sorted — so that two Multis over
// overlapping names cannot deadlock; a failure part-way releases what was
// taken. The result is one MultiHold whose Context is canceled when any part
// is lost and whose Guard covers every part.
//
// A Multi is safe for concurrent use; it excludes other Mutex and Multi
// values on the same names exactly as they exclude each other.
type Multi struct {
	names   []string
	mutexes []*Mutex
	tel     *telemetry
	err     error
}

// NewMulti returns a Multi over the Mutexes named names, bound to k's
// lease. Duplicate names count once. It does no I/O; invalid input is
// reported by the first call.
func NewMulti(k *leasekeeper.Keeper, names ...string) *Multi {
	sorted := slices.Clone(names)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)
	mu := &Multi{names: sorted, tel: newTelemetry(&options{}, fmt.Sprint(sorted), "multi")}
	if len(sorted) == 0 {
		mu.err = errors.New("lock: multi-lock of no names")
		return mu
	}
	for _, name := range sorted {
		m := New(k, name)
		if m.err != nil {
			mu.err = m.err
			return mu
		}
		mu.mutexes = append(mu.mutexes, m)
	}
	return mu
}

// Names returns the names, in lock order.
func (mu *Multi) Names() []string { return slices.Clone(mu.names) }

// Lock takes every lock, in sorted order, and blocks until all are held. On
// failure it releases what it took and returns the error of the part that
// failed.
func (mu *Multi) Lock(ctx context.Context) (*MultiHold, error) { return mu.lock(ctx, false) }

// TryLock takes every lock if each is free, and returns ErrLocked (having
// released what it took) otherwise.
func (mu *Multi) TryLock(ctx context.Context) (*MultiHold, error) { return mu.lock(ctx, true) }

func (mu *Multi) lock(ctx context.Context, try bool) (*MultiHold, error) {
	if mu.err != nil {
		return nil, mu.err
	}
	ctx, sp := mu.tel.StartAcquire(ctx, try)
	h, err := mu.acquire(ctx, try)
	var tok int64
	if h != nil {
		tok = h.Token()
	}
	sp.End(ctx, tok, err)
	return h, err
}

func (mu *Multi) acquire(ctx context.Context, try bool) (*MultiHold, error) {
	mh := &MultiHold{revoked: make(chan struct{}), tel: mu.tel, unlock: callturn.New()}
	var parts []*Hold
	for _, m := range mu.mutexes {
		h, err := m.lockPart(ctx, try, mh.fireRevoked)
		if err != nil {
			var errs []error
			for i := len(parts) - 1; i >= 0; i-- {
				errs = append(errs, parts[i].Unlock(ctx))
			}
			err = fmt.Errorf("lock: multi-lock %s: %w", m.name, err)
			return nil, errors.Join(append([]error{err}, errs...)...)
		}
		parts = append(parts, h)
	}
	mh.parts = parts
	mh.ctx, mh.cancel = context.WithCancelCause(context.Background())
	mh.start = time.Now()
	for _, p := range parts {
		mh.stops = append(mh.stops, context.AfterFunc(p.Context(), func() {
			if cause := context.Cause(p.Context()); !errors.Is(cause, ErrUnlocked) {
				mh.cancel(fmt.Errorf("lock: part %s of a multi-lock: %w", p.Key(), cause))
			}
		}))
		select {
		case <-p.revoked:
			mh.fireRevoked()
		default:
		}
	}
	return mh, nil
}

// MultiHold is a granted multi-lock: a hold of every part, taken in sorted
// order. Its Context is canceled when any part is lost (the cause is that
// part's), and with ErrUnlocked after Unlock; its Guard covers every part.
// Token and Key are its first part's (by sorted name); Tokens and Keys give
// every part's. Its methods are safe for concurrent use.
type MultiHold struct {
	parts  []*Hold // in lock order
	tel    *telemetry
	start  time.Time
	ctx    context.Context
	cancel context.CancelCauseFunc
	stops  []func() bool // the parts' loss hooks

	revokeOnce sync.Once
	revoked    chan struct{}
	armOnce    sync.Once

	// unlock serialises Unlock and protects released.
	unlock   callturn.Turn
	released bool
}

// Parts returns the hold of each part, in lock order.
func (mh *MultiHold) Parts() []*Hold { return slices.Clone(mh.parts) }

// Token returns the first part's token.
func (mh *MultiHold) Token() int64 { return mh.parts[0].Token() }

// Tokens returns every part's token, in lock order.
func (mh *MultiHold) Tokens() []int64 {
	out := make([]int64, len(mh.parts))
	for i, p := range mh.parts {
		out[i] = p.Token()
	}
	return out
}

// Key returns the first part's key.
func (mh *MultiHold) Key() string { return mh.parts[0].Key() }

// Keys returns every part's key, in lock order.
func (mh *MultiHold) Keys() []string {
	out := make([]string, len(mh.parts))
	for i, p := range mh.parts {
		out[i] = p.Key()
	}
	return out
}

// Lease returns the lease every part is bound to.
func (mh *MultiHold) Lease() clientv3.LeaseID { return mh.parts[0].Lease() }

// Context is canceled when any part is lost, or after Unlock.
func (mh *MultiHold) Context() context.Context { return mh.ctx }

// Guard returns comparisons that hold only while every part is held.
func (mh *MultiHold) Guard() []clientv3.Cmp {
	var out []clientv3.Cmp
	for _, p := range mh.parts {
		out = append(out, p.Guard()...)
	}
	return out
}

// Revoked is closed when someone asked the holder of any part to release
// it (see Hold.Revoked).
func (mh *MultiHold) Revoked() <-chan struct{} {
	mh.armOnce.Do(func() {
		for _, p := range mh.parts {
			p.Revoked()
		}
	})
	return mh.revoked
}

func (mh *MultiHold) fireRevoked() {
	mh.revokeOnce.Do(func() { close(mh.revoked) })
}

// Unlock releases every part, in reverse lock order (see Hold.Unlock). It
// is idempotent; if a part cannot be released in time it returns the error,
// and may be called again.
func (mh *MultiHold) Unlock(ctx context.Context) error {
	if err := mh.unlock.Take(ctx); err != nil {
		return err
	}
	defer mh.unlock.Done()
	if mh.released {
		return nil
	}
	var errs []error
	for i := len(mh.parts) - 1; i >= 0; i-- {
		errs = append(errs, mh.parts[i].Unlock(ctx))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	mh.released = true
	mh.cancel(ErrUnlocked)
	for _, stop := range mh.stops {
		stop()
	}
	mh.tel.Held(time.Since(mh.start))
	return nil
}

// lockPart takes the Mutex's local slot, then its place in etcd's queue.
// onRevoke is a Multi's revocation hook (nil for a plain Mutex).
func (m *Mutex) lockPart(ctx context.Context, try bool, onRevoke func()) (*Hold, error) {
	if try {
		select {
		case m.slot <- struct{}{}:
		default:
			return nil, ErrLocked
		}
	} else {
		select {
		case m.slot <- struct{}{}:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
	free := sync.OnceFunc(func() { <-m.slot })
	lease, err := m.k.Lease(ctx)
	if err != nil {
		free()
		if errors.Is(err, leasekeeper.ErrClosed) {
			return nil, fmt.Errorf("lock: %w", err)
		}
		return nil, err
	}
	h, err := acquire(ctx, request{k: m.k, w: &m.w, lease: lease, prefix: m.prefix, key: m.key,
		value: encodeValue(time.Now(), m.value), try: try, delay: m.delay, maxHold: m.max, tel: m.tel, free: free, onRevoke: onRevoke})
	if err != nil {
		free()
		return nil, err
	}
	return h, nil
}
