package semaphore

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/enqueue"
	"github.com/concordkit/concord/internal/guard"
	"github.com/concordkit/concord/internal/holding"
	"github.com/concordkit/concord/internal/names"
	"github.com/concordkit/concord/internal/retry"
	"github.com/concordkit/concord/internal/watch"
	"github.com/concordkit/concord/leasekeeper"
)

// Semaphore is a counting semaphore named by an etcd key prefix, with
// lease-bound, fenced permits granted in FIFO order. It is safe for
// concurrent use; goroutines sharing a Semaphore value each hold their own
// permits. Its zero value is not usable; call New.
type Semaphore struct {
	k      *leasekeeper.Keeper
	name   string
	prefix string
	value  string
	max    time.Duration // WithMaxHold
	tel    *telemetry
	pool   *watch.Pool
	err    error        // invalid input, reported by every call
	limit  atomic.Int64 // the limit this value expects to find stored
}

// New returns a Semaphore of limit permits named name, bound to k's lease.
// It does no I/O. The limit is stored with the semaphore by the first
// acquisition; a Semaphore opened with a different limit than the stored one
// gets ErrLimitMismatch until it calls SetLimit. Invalid input (a bad name, a
// nil keeper, limit ≤ 0, an oversized value) is reported by every call.
func New(k *leasekeeper.Keeper, name string, limit int, opts ...Option) *Semaphore {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	s := &Semaphore{
		k:      k,
		name:   name,
		prefix: names.Prefix(name, "semaphore"),
		value:  o.value,
		max:    o.maxHold,
		tel:    newTelemetry(&o, name),
	}
	s.limit.Store(int64(limit))
	switch {
	case names.Validate("semaphore", name) != nil:
		s.err = names.Validate("semaphore", name)
	case k == nil:
		s.err = errors.New("semaphore: nil keeper")
	case limit <= 0 || limit > MaxLimit:
		s.err = fmt.Errorf("semaphore: limit %d: must be 1 to %d", limit, MaxLimit)
	case o.maxHold < 0:
		s.err = fmt.Errorf("semaphore: max hold %v: must not be negative", o.maxHold)
	default:
		s.err = guard.CheckValueSize("semaphore", "value", len(o.value))
	}
	if s.err == nil {
		s.pool = watch.NewPool(k.Client(), s.prefix, watch.Config{Options: []clientv3.OpOption{clientv3.WithPrefix()}})
	}
	return s
}

// MaxLimit is the largest limit, and so the most permits one request may
// ask for. Counts read back from etcd above it are corrupt: the sum of the
// permits ahead of a request then cannot overflow.
const MaxLimit = math.MaxInt32

// Name returns the semaphore's name.
func (s *Semaphore) Name() string { return s.name }

// Limit returns the limit this Semaphore expects to find stored.
func (s *Semaphore) Limit() int { return int(s.limit.Load()) }

func (s *Semaphore) limitKey() string { return s.prefix + "limit" }

// SetLimit stores a new limit with the semaphore and makes this Semaphore
// use it. Waiting requests are granted by the new limit as soon as they see
// it; permits already granted are not taken back when the limit shrinks.
// Cost: one write.
func (s *Semaphore) SetLimit(ctx context.Context, limit int) error {
	if s.err != nil {
		return s.err
	}
	if limit <= 0 || limit > MaxLimit {
		return fmt.Errorf("semaphore: limit %d: must be 1 to %d", limit, MaxLimit)
	}
	if _, err := s.k.Client().Put(ctx, s.limitKey(), encodeLimit(limit)); err != nil {
		return fmt.Errorf("semaphore: set limit: %w", err)
	}
	s.limit.Store(int64(limit))
	return nil
}

// Acquire blocks until n permits are granted and returns them as one
// Permit. Requests are granted in the order etcd received them: a request
// is granted when it and every earlier request fit within the limit, so a
// large request is never overtaken by later small ones. On failure it
// returns ctx's cause, an error wrapping ErrLost, ErrLimitMismatch or an
// etcd error, and the request has been withdrawn (its key deleted, or gone
// with the lost lease). While etcd cannot be reached, withdrawing a request
// that was sent can keep Acquire past ctx's end, until etcd confirms the
// delete or the lease is lost (at most the TTL).
func (s *Semaphore) Acquire(ctx context.Context, n int) (*Permit, error) {
	return s.acquire(ctx, n, false)
}

// TryAcquire takes n permits if they are free now and nobody is waiting
// before it, and returns ErrNoPermits at once otherwise.
func (s *Semaphore) TryAcquire(ctx context.Context, n int) (*Permit, error) {
	return s.acquire(ctx, n, true)
}

func (s *Semaphore) acquire(ctx context.Context, n int, try bool) (p *Permit, err error) {
	if s.err != nil {
		return nil, s.err
	}
	limit := s.Limit()
	if n <= 0 {
		return nil, fmt.Errorf("semaphore: %d permits: must be positive", n)
	}
	if n > limit {
		return nil, fmt.Errorf("semaphore: %d permits: more than the limit %d", n, limit)
	}
	ctx, sp := s.tel.StartAcquire(ctx, try)
	defer func() {
		var tok int64
		if p != nil {
			tok = p.Token()
		}
		sp.End(ctx, tok, err)
	}()
	lease, err := s.k.Lease(ctx)
	if err != nil {
		if errors.Is(err, leasekeeper.ErrClosed) {
			return nil, fmt.Errorf("semaphore: %w", err)
		}
		return nil, err
	}
	a := &acquisition{
		cli:     s.k.Client(),
		lease:   lease,
		timeout: s.k.TTL(),
		t: turn{
			prefix:   s.prefix,
			queue:    s.prefix + "q/",
			limitKey: s.limitKey(),
			key:      s.prefix + "q/" + names.NewID(),
			n:        n,
			preds:    map[string]int{},
		},
	}
	a.w = s.pool.Get(ctx)
	err = a.enqueue(ctx, encodePermit(n, time.Now(), s.value), limit)
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		// etcd no longer knows the lease (revoked, or expired before the
		// keeper noticed): have the keeper replace it now rather than at its
		// next renewal, so that the next Acquire does not use it again.
		s.k.Invalidate(lease, err)
	}
	if err == nil && try && !a.t.granted() {
		err = ErrNoPermits
	}
	if err == nil {
		err = a.wait(ctx)
	}
	if err == nil && a.lease.Err() != nil {
		// The wait can end just as the lease was lost: never hand out a
		// Permit on a lost lease.
		err = enqueue.Lost(ErrLost, a.lease)
	}
	if err != nil {
		s.pool.Put(a.w)
		if errors.Is(err, errOwnGone) {
			err = fmt.Errorf("%w: request %s deleted while waiting", ErrLost, a.t.key)
		}
		if a.sent && (a.t.rev != 0 || !errors.Is(err, ErrLimitMismatch)) {
			a.cleanup(ctx)
		}
		return nil, err
	}
	return newPermit(a, s.pool, s.tel, s.max), nil
}

// errOwnGone reports that the request's own key was deleted or replaced.
var errOwnGone = errors.New("own key deleted")

// turn follows the requests ahead of own, from one read of the prefix plus
// the watch events after it.
type turn struct {
	prefix, queue, limitKey string
	key                     string // own key
	rev                     int64  // own create revision, the token
	n                       int    // permits asked for

	limit int   // the stored limit, as last seen
	seen  int64 // revision of the last read; events at or below it are in it
	preds map[string]int
	sum   int // permits of the requests ahead
}

func (t *turn) granted() bool { return t.sum+t.n <= t.limit }

func (t *turn) load(kvs []*mvccpb.KeyValue, rev int64) error {
	t.seen = rev
	clear(t.preds)
	t.sum = 0
	found := false
	for _, kv := range kvs {
		k := string(kv.Key)
		switch {
		case k == t.limitKey:
			l, err := decodeLimit(kv.Value)
			if err != nil {
				return err
			}
			t.limit = l
		case k == t.key:
			if kv.CreateRevision != t.rev {
				return errOwnGone
			}
			found = true
		case !strings.HasPrefix(k, t.queue):
			return fmt.Errorf("%w: unknown key %s", ErrCorrupt, k)
		case kv.CreateRevision < t.rev:
			n, _, _, err := decodePermit(kv.Value)
			if err != nil {
				return fmt.Errorf("%w (key %s)", err, k)
			}
			t.preds[k] = n
			t.sum += n
		}
	}
	if !found {
		return errOwnGone
	}
	return nil
}

func (t *turn) apply(ev *clientv3.Event) error {
	if ev.Kv.ModRevision <= t.seen {
		return nil
	}
	k := string(ev.Kv.Key)
	switch {
	case k == t.key:
		if ev.Type == clientv3.EventTypeDelete || ev.Kv.CreateRevision != t.rev {
			return errOwnGone
		}
	case k == t.limitKey && ev.Type == clientv3.EventTypePut:
		l, err := decodeLimit(ev.Kv.Value)
		if err != nil {
			return err
		}
		t.limit = l
	case ev.Type == clientv3.EventTypeDelete:
		if n, ok := t.preds[k]; ok {
			delete(t.preds, k)
			t.sum -= n
		}
	}
	return nil
}

// acquisition is one request, from enqueue to grant.
type acquisition struct {
	cli     *clientv3.Client
	lease   *leasekeeper.Lease
	t       turn
	w       *watch.Watch
	timeout time.Duration // bound of detached cleanup
	sent    bool          // an enqueue transaction was sent: own key may exist
}

// enqueue puts own key, if the stored limit is the one expected, and reads
// the whole prefix in the same transaction. It stores the limit first if
// the semaphore has none. internal/enqueue sends it: attempts bounded, a
// grace for the answer after ctx ends.
func (a *acquisition) enqueue(ctx context.Context, value string, limit int) error {
	t := &a.t
	send := enqueue.New(a.lease, a.timeout, ErrLost, "semaphore: enqueue")
	want := encodeLimit(limit)
	for {
		resp, err := send.Send(ctx, func(ctx context.Context) (*clientv3.TxnResponse, error) {
			a.sent = true
			return a.cli.Txn(ctx).
				If(clientv3.Compare(clientv3.Value(t.limitKey), "=", want),
					clientv3.Compare(clientv3.CreateRevision(t.key), "=", 0)).
				Then(clientv3.OpPut(t.key, value, clientv3.WithLease(a.lease.ID())),
					clientv3.OpGet(t.prefix, clientv3.WithPrefix())).
				Else(clientv3.OpGet(t.prefix, clientv3.WithPrefix())).
				Commit()
		})
		if err != nil {
			return err
		}
		if resp.Succeeded {
			t.rev = resp.Header.Revision
			return t.load(resp.Responses[1].GetResponseRange().Kvs, resp.Header.Revision)
		}
		var stored, own *mvccpb.KeyValue
		kvs := resp.Responses[0].GetResponseRange().Kvs
		for _, kv := range kvs {
			switch string(kv.Key) {
			case t.limitKey:
				stored = kv
			case t.key:
				own = kv
			}
		}
		switch {
		case own != nil:
			// An earlier attempt's put whose answer was lost: adopt it.
			t.rev = own.CreateRevision
			if err := t.load(kvs, resp.Header.Revision); err != nil {
				return err
			}
			if t.limit != limit {
				return fmt.Errorf("%w: stored %d, opened with %d", ErrLimitMismatch, t.limit, limit)
			}
			return nil
		case stored == nil:
			// A new semaphore: store its limit, then queue.
			_, err := a.cli.Txn(ctx).
				If(clientv3.Compare(clientv3.CreateRevision(t.limitKey), "=", 0)).
				Then(clientv3.OpPut(t.limitKey, want)).Commit()
			if err != nil && !retry.Retriable(err) {
				return fmt.Errorf("semaphore: store limit: %w", err)
			}
		default:
			l, err := decodeLimit(stored.Value)
			if err != nil {
				return err
			}
			if l == limit {
				continue // changed and changed back in between; try again
			}
			return fmt.Errorf("%w: stored %d, opened with %d", ErrLimitMismatch, l, limit)
		}
	}
}

// wait blocks until own request fits, own key is gone (errOwnGone), the
// lease is lost (ErrLost) or ctx ends (its cause).
//
// It follows one watch on the semaphore's whole prefix, with no start
// revision, pooled across acquisitions (internal/watch): unlike a lock's
// waiter, which only needs the keys just ahead of it, a request for n
// permits may fit as soon as any request ahead of it goes.
func (a *acquisition) wait(ctx context.Context) error {
	t := &a.t
	for !t.granted() {
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-a.lease.Done():
			return enqueue.Lost(ErrLost, a.lease)
		case resp, ok := <-a.w.C:
			if !ok {
				return fmt.Errorf("semaphore: watch: %w", a.w.Err())
			}
			if resp.Created {
				// The first creation, or a new one after the watch failed:
				// close the gap.
				if err := retry.Do(ctx, retry.RequestPolicy, func(ctx context.Context) error {
					return a.onCreated(ctx, resp.Header.Revision)
				}); err != nil {
					return err
				}
				continue
			}
			for _, ev := range resp.Events {
				if err := t.apply(ev); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// onCreated closes the gap between the last read and a new watch's creation
// revision by reading the prefix again, if the watch started later.
func (a *acquisition) onCreated(ctx context.Context, rev int64) error {
	if rev <= a.t.seen {
		return nil
	}
	resp, err := a.cli.Get(ctx, a.t.prefix, clientv3.WithPrefix())
	if err != nil {
		return err
	}
	return a.t.load(resp.Kvs, resp.Header.Revision)
}

// cleanup deletes own key after a failed acquisition, under a detached,
// bounded context. With the lease lost there is nothing to do: the key goes
// with it.
func (a *acquisition) cleanup(ctx context.Context) {
	// Unconditional: the key name is unique to this request.
	holding.Withdraw(ctx, a.cli, a.lease, a.timeout, a.t.key)
}

// Delete deletes the stored limit of the semaphore named name, if no permit
// is held or requested (ErrInUse otherwise). Permit keys go with their
// leases; the limit is the one key a semaphore leaves behind.
func Delete(ctx context.Context, cli *clientv3.Client, name string) error {
	if err := names.Validate("semaphore", name); err != nil {
		return err
	}
	if err := guard.CheckClient("semaphore", cli); err != nil {
		return err
	}
	prefix := names.Prefix(name, "semaphore")
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(prefix+"q/"), "=", 0).WithPrefix()).
		Then(clientv3.OpDelete(prefix + "limit")).Commit()
	if err != nil {
		return fmt.Errorf("semaphore: delete: %w", err)
	}
	if !resp.Succeeded {
		return ErrInUse
	}
	return nil
}
