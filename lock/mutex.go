package lock

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/concordkit/concord/internal/enqueue"
	"github.com/concordkit/concord/internal/guard"
	"github.com/concordkit/concord/internal/names"
	"github.com/concordkit/concord/leasekeeper"
)

// Mutex is a fair, fenced distributed lock named by an etcd key prefix.
//
// A Mutex value is one participant: it owns one key in the lock's queue and
// reuses it for every acquisition (each put after a delete still gets a new
// create revision, so tokens stay unique, and the queue leaves no trail of
// tombstones). Goroutines sharing a Mutex value queue locally for that key
// first, so they exclude each other exactly as two processes do. Two Mutex
// values on the same keeper are two participants and exclude each other too.
//
// A Mutex is safe for concurrent use. Its zero value is not usable; call New.
type Mutex struct {
	k      *leasekeeper.Keeper
	name   string
	prefix string
	key    string
	value  string
	delay  time.Duration
	max    time.Duration // WithMaxHold
	tel    *telemetry
	w      watches
	err    error // invalid input, reported by every call

	// slot is the local queue: a goroutine holds it from Lock until its Hold
	// ends, so only one goroutine at a time uses the Mutex's key.
	slot chan struct{}
}

// New returns a Mutex for the lock named name, bound to k's lease. It does
// no I/O. An invalid name, a nil keeper or an oversized value is reported by
// the first Lock or TryLock.
func New(k *leasekeeper.Keeper, name string, opts ...Option) *Mutex {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	m := &Mutex{
		k:      k,
		name:   name,
		prefix: names.Prefix(name, "lock"),
		value:  o.value,
		delay:  o.lockDelay,
		max:    o.maxHold,
		tel:    newTelemetry(&o, name, "mutex"),
		slot:   make(chan struct{}, 1),
	}
	m.key = m.prefix + "q/" + names.NewID()
	m.err = validate(k, name, &o)
	if m.err == nil {
		m.w = newWatches(k.Client(), true, m.key)
	}
	return m
}

func validate(k *leasekeeper.Keeper, name string, o *options) error {
	if err := names.Validate("lock", name); err != nil {
		return err
	}
	if k == nil {
		return errors.New("lock: nil keeper")
	}
	if err := guard.CheckValueSize("lock", "value", len(o.value)); err != nil {
		return err
	}
	if o.lockDelay < 0 {
		return fmt.Errorf("lock: lock-delay %v: must not be negative", o.lockDelay)
	}
	if o.maxHold < 0 {
		return fmt.Errorf("lock: max hold %v: must not be negative", o.maxHold)
	}
	return nil
}

// Name returns the lock's name.
func (m *Mutex) Name() string { return m.name }

// Lock blocks until the lock is held, and returns the Hold. Requests are
// granted in the order etcd received them. On failure it returns ctx's cause
// if ctx ended, an error wrapping ErrLost if the lease was lost or the
// request deleted while waiting, or an etcd error; in every case the request
// has been withdrawn from the queue (its key deleted, or gone with the lost
// lease).
func (m *Mutex) Lock(ctx context.Context) (*Hold, error) {
	if m.err != nil {
		return nil, m.err
	}
	ctx, sp := m.tel.StartAcquire(ctx, false)
	h, err := m.lock(ctx, false)
	sp.End(ctx, tokenOf(h), err)
	return h, err
}

// TryLock takes the lock if nobody holds it or waits for it, and returns
// ErrLocked at once otherwise (also when another goroutine holds this
// Mutex). It never waits for another holder.
func (m *Mutex) TryLock(ctx context.Context) (*Hold, error) {
	if m.err != nil {
		return nil, m.err
	}
	ctx, sp := m.tel.StartAcquire(ctx, true)
	h, err := m.lock(ctx, true)
	sp.End(ctx, tokenOf(h), err)
	return h, err
}

func tokenOf(h *Hold) int64 {
	if h == nil {
		return 0
	}
	return h.Token()
}

func (m *Mutex) lock(ctx context.Context, try bool) (*Hold, error) {
	return m.lockPart(ctx, try, nil)
}

// request is one request for a lock: who asks, for which key, and how.
type request struct {
	k      *leasekeeper.Keeper
	w      *watches // the lock value's watch pools
	lease  *leasekeeper.Lease
	prefix string // the lock's prefix
	key    string // the request's key
	value  string // the request's record
	// yields reports whether the request must wait for the older key k (nil:
	// for every older key).
	yields   func(k string) bool
	try      bool          // TryLock: never wait
	delay    time.Duration // lock-delay
	maxHold  time.Duration // WithMaxHold; 0: unbounded
	tel      *telemetry
	free     func() // gives the lock value's local slot back
	onRevoke func() // a MultiHold's revocation hook, or nil
}

// acquire runs one acquisition from enqueue to hold. On failure own key is
// gone, and the watch stopped.
func acquire(ctx context.Context, r request) (*Hold, error) {
	k, lease, key, try := r.k, r.lease, r.key, r.try
	// The watch on own key is opened before the transaction, so that its
	// creation revision is normally at or below the transaction's.
	a := newAcquisition(ctx, k.Client(), lease, r.w, r.prefix, key, r.yields, r.delay, k.TTL())
	err := a.enqueue(ctx, r.value, try)
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		// etcd no longer knows the lease (revoked, or expired before the
		// keeper noticed): have the keeper replace it now rather than at its
		// next renewal, so that the next Lock does not use it again.
		k.Invalidate(lease, err)
	}
	if err == nil && try && len(a.t.preds) > 0 {
		err = ErrLocked // cannot happen with the empty-queue compare; be safe
	}
	if err == nil {
		err = a.wait(ctx)
	}
	if err == nil && lease.Err() != nil {
		// The wait can end (an event won the select) just as the lease was
		// lost: never hand out a Hold on a lost lease.
		err = enqueue.Lost(ErrLost, lease)
	}
	if err != nil {
		a.putOwn()
		switch {
		case errors.Is(err, errOwnGone):
			if !a.t.forced {
				// A forced release leaves its marker next to the key.
				a.readRelease(ctx)
			}
			err = fmt.Errorf("%w: request %s deleted while waiting", ErrLost, key)
			if a.t.forced {
				err = fmt.Errorf("%w: %w", ErrRevoked, err)
			}
		case !a.sent || errors.Is(err, ErrLocked) && a.t.rev == 0:
			return nil, err // nothing was written
		}
		a.cleanup(ctx)
		return nil, err
	}
	return newHold(a, r.tel, r.free, r.onRevoke, r.maxHold), nil
}
