package lock

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	callturn "github.com/concordkit/concord/internal/turn"
	"github.com/concordkit/concord/leasekeeper"
)

// Multi takes several locks all-or-nothing. The locks are taken one by one
// in one global order — their names sorted — so that two Multis over
// overlapping names cannot deadlock; a failure part-way releases what was
// taken. The result is one Hold whose Context is canceled when any part is
// lost and whose Guard covers every part.
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
func (mu *Multi) Lock(ctx context.Context) (*Hold, error) { return mu.lock(ctx, false) }

// TryLock takes every lock if each is free, and returns ErrLocked (having
// released what it took) otherwise.
func (mu *Multi) TryLock(ctx context.Context) (*Hold, error) { return mu.lock(ctx, true) }

func (mu *Multi) lock(ctx context.Context, try bool) (*Hold, error) {
	if mu.err != nil {
		return nil, mu.err
	}
	ctx, sp := mu.tel.StartAcquire(ctx, try)
	h, err := mu.acquire(ctx, try)
	sp.End(ctx, tokenOf(h), err)
	return h, err
}

func (mu *Multi) acquire(ctx context.Context, try bool) (*Hold, error) {
	parent := &Hold{revoked: make(chan struct{}), tel: mu.tel, unlock: callturn.New()}
	var parts []*Hold
	for _, m := range mu.mutexes {
		h, err := m.lockPart(ctx, try, parent.fireRevoked)
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
	ctx2, cancel := context.WithCancelCause(context.Background())
	parent.parts = parts
	parent.lease = parts[0].lease
	parent.ctx, parent.cancel = ctx2, cancel
	parent.start = time.Now()
	stops := make([]func() bool, len(parts))
	for i, p := range parts {
		stops[i] = context.AfterFunc(p.ctx, func() {
			if cause := context.Cause(p.ctx); !errors.Is(cause, ErrUnlocked) {
				cancel(fmt.Errorf("lock: part %s of a multi-lock: %w", p.key, cause))
			}
		})
		select {
		case <-p.revoked:
			parent.fireRevoked()
		default:
		}
	}
	parent.stopLease = func() bool {
		for _, stop := range stops {
			stop()
		}
		return true
	}
	return parent, nil
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
	h, err := acquire(ctx, m.k, &m.w, lease, m.prefix, m.key, encodeValue(time.Now(), m.value), nil, try, m.delay, m.tel, free, onRevoke)
	if err != nil {
		free()
		return nil, err
	}
	return h, nil
}
