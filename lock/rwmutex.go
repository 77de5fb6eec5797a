package lock

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/concordkit/concord/internal/names"
	"github.com/concordkit/concord/leasekeeper"
)

// RWMutex is a fair, fenced reader/writer lock. Readers share it; a writer
// excludes everyone. Requests are served in arrival order: a reader waits
// only for the writers that asked before it, and a writer waits for every
// request before it, so a waiting writer holds back the readers that come
// after it and is never starved.
//
// Each RLock and Lock is its own request with its own key, so goroutines
// may share an RWMutex value freely. It is safe for concurrent use; call
// NewRWMutex.
type RWMutex struct {
	k      *leasekeeper.Keeper
	name   string
	prefix string
	value  string
	max    time.Duration // WithMaxHold
	tel    *telemetry
	w      watches
	err    error
}

// NewRWMutex returns an RWMutex named name, bound to k's lease. It does no
// I/O; invalid input is reported by the first call. Its keys live under
// name + "/.rwlock/", apart from a Mutex of the same name.
func NewRWMutex(k *leasekeeper.Keeper, name string, opts ...Option) *RWMutex {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	rw := &RWMutex{
		k:      k,
		name:   name,
		prefix: names.Prefix(name, "rwlock"),
		value:  o.value,
		max:    o.maxHold,
		tel:    newTelemetry(&o, name, "rwmutex"),
		err:    validate(k, name, &o),
	}
	if rw.err == nil && o.lockDelay != 0 {
		rw.err = errors.New("lock: lock-delay is offered by Mutex only")
	}
	if rw.err == nil {
		// Each request has a key of its own, watched for that request
		// alone; the keys ahead are watched from a pool.
		rw.w = newWatches(k.Client(), false, "")
	}
	return rw
}

// RLock blocks until the lock is held for reading: when no writer that
// asked earlier remains. Failure is reported as for Mutex.Lock.
func (rw *RWMutex) RLock(ctx context.Context) (*Hold, error) { return rw.lock(ctx, true) }

// Lock blocks until the lock is held for writing: when no request that
// asked earlier remains. Failure is reported as for Mutex.Lock.
func (rw *RWMutex) Lock(ctx context.Context) (*Hold, error) { return rw.lock(ctx, false) }

func (rw *RWMutex) lock(ctx context.Context, reader bool) (*Hold, error) {
	if rw.err != nil {
		return nil, rw.err
	}
	ctx, sp := rw.tel.StartAcquire(ctx, false)
	h, err := rw.acquire(ctx, reader)
	sp.End(ctx, tokenOf(h), err)
	return h, err
}

func (rw *RWMutex) acquire(ctx context.Context, reader bool) (*Hold, error) {
	lease, err := rw.k.Lease(ctx)
	if err != nil {
		if errors.Is(err, leasekeeper.ErrClosed) {
			return nil, fmt.Errorf("lock: %w", err)
		}
		return nil, err
	}
	queue := rw.prefix + "q/"
	key := queue + "w" + names.NewID()
	var yields func(string) bool // a writer yields to everyone earlier
	if reader {
		key = queue + "r" + names.NewID()
		yields = func(k string) bool { return strings.HasPrefix(k, queue+"w") }
	}
	return acquire(ctx, request{k: rw.k, w: &rw.w, lease: lease, prefix: rw.prefix, key: key,
		value: encodeValue(time.Now(), rw.value), yields: yields, maxHold: rw.max, tel: rw.tel, free: func() {}})
}
