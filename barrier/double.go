package barrier

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/guard"
	"github.com/concordkit/concord/internal/holding"
	"github.com/concordkit/concord/internal/names"
	"github.com/concordkit/concord/internal/retry"
	"github.com/concordkit/concord/internal/turn"
	"github.com/concordkit/concord/leasekeeper"
)

// DoubleBarrier lets n participants start together and finish together:
// Enter blocks until n participants have entered, Seat.Leave until every
// participant has left. Participants' seats are bound to their keepers'
// leases, so a participant that dies counts as having left once its lease
// expires (see the package doc). Its methods are safe for concurrent use;
// each Enter takes a seat of its own.
type DoubleBarrier struct {
	k     *leasekeeper.Keeper
	cli   *clientv3.Client
	name  string
	n     int
	seats string // prefix of the seat keys
	ready string
	err   error
	tm    telemetry
}

// NewDouble returns a double barrier named name for n participants. It does
// no I/O; an invalid name or n ≤ 0 is reported by every call.
func NewDouble(k *leasekeeper.Keeper, name string, n int, opts ...Option) *DoubleBarrier {
	p := names.Prefix(name, "double")
	d := &DoubleBarrier{k: k, name: name, n: n, seats: p + "seats/", ready: p + "ready", tm: newTelemetry(opts)}
	switch {
	case names.Validate("barrier", name) != nil:
		d.err = names.Validate("barrier", name)
	case n <= 0:
		d.err = fmt.Errorf("barrier: double barrier %q: participant count %d: must be at least 1", name, n)
	case k == nil:
		d.err = errors.New("barrier: nil keeper")
	default:
		d.cli = k.Client()
	}
	return d
}

// Seat is one participant's place in a double barrier, from Enter to Leave:
// a fenced, lease-bound holding (see internal/holding). Token (the create
// revision of its key), Key, Lease and Guard are the holding's. Context is
// canceled with a cause that errors.Is ErrLost when the seat's lease is lost
// or its key deleted by anyone but Leave, and with ErrLeft once Leave has
// deleted the seat. Its methods are safe for concurrent use.
type Seat struct {
	holding.Core
	d *DoubleBarrier

	leaving atomic.Bool // Leave is deleting the seat: its deletion is no loss

	// leave serializes Leave and protects gone and left. It is held while
	// Leave waits for the others, so a second Leave gives up when its own
	// ctx ends.
	leave turn.Turn
	gone  bool // the seat key was deleted by Leave, or went with the lease
	left  bool // Leave completed
}

// Enter takes a seat and blocks until n participants hold seats (or the
// barrier is already open), ctx ends (ctx's cause), or the seat's lease is
// lost (an error that errors.Is ErrLost). On failure no key of this
// participant is left: the seat is deleted with a detached context bounded
// by the TTL, which can keep Enter past ctx's end while etcd cannot be
// reached, until etcd confirms the delete or the lease is lost.
//
// Cost: one transaction (write the seat, count the seats, read the ready
// key); the n-th participant writes the ready key (one more transaction);
// the others watch it (one watch, no start revision, one read to close the
// gap).
func (d *DoubleBarrier) Enter(ctx context.Context) (s *Seat, err error) {
	if d.err != nil {
		return nil, d.err
	}
	ctx, end := d.tm.span(ctx, "double.enter", d.name)
	defer func() {
		var tok int64
		if s != nil {
			tok = s.Token()
		}
		end(tok, err)
	}()
	l, err := d.k.Lease(ctx)
	if err != nil {
		return nil, fmt.Errorf("barrier: enter %q: %w", d.name, err)
	}
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(l.Context(), func() {
		cancel(fmt.Errorf("%w: %w", ErrLost, context.Cause(l.Context())))
	})
	defer stop()

	key := d.seats + names.NewID()
	resp, err := d.cli.Txn(wctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, "", clientv3.WithLease(l.ID())),
			clientv3.OpGet(d.seats, clientv3.WithPrefix(), clientv3.WithKeysOnly()),
			clientv3.OpGet(d.ready)).
		Commit()
	if err != nil {
		d.deleteSeat(ctx, l, key, 0)
		if wctx.Err() != nil {
			return nil, context.Cause(wctx)
		}
		return nil, fmt.Errorf("barrier: enter %q: %w", d.name, err)
	}
	rev := resp.Header.Revision
	check := func(ctx context.Context) (bool, int64, error) { return d.checkOpen(ctx, l, key, rev) }
	if !resp.Succeeded || len(resp.Responses) < 3 {
		// The seat's key is random and new: only a foreign write at the same
		// name can make the put's condition fail.
		return nil, fmt.Errorf("barrier: enter %q: seat key %s already exists", d.name, key)
	}
	open, err := d.isReady(resp.Responses[2].GetResponseRange().Kvs)
	seats := 0
	if err == nil {
		seats, err = d.countSeats(resp.Responses[1].GetResponseRange().Kvs)
	}
	if err == nil && !open {
		err = errNotOpen
		if seats >= d.n {
			// The n-th participant opens the barrier at once.
			err = d.open(wctx, l)
		}
		if err != nil {
			err = until(wctx, d.cli, d.ready, check, nil)
		}
	}
	if err == nil && l.Context().Err() != nil {
		err = fmt.Errorf("%w: %w", ErrLost, context.Cause(l.Context()))
	}
	if err != nil {
		d.deleteSeat(ctx, l, key, rev)
		if wctx.Err() != nil {
			return nil, context.Cause(wctx)
		}
		if errors.Is(err, ErrLost) {
			return nil, err
		}
		return nil, fmt.Errorf("barrier: enter %q: %w", d.name, err)
	}
	return newSeat(d, key, rev, l), nil
}

// checkOpen reports whether the barrier is open, and the revision it read
// at, opening it when n seats are taken. It fails with ErrLost when the seat
// at key (written at rev) is gone.
func (d *DoubleBarrier) checkOpen(ctx context.Context, l *leasekeeper.Lease, key string, rev int64) (bool, int64, error) {
	r, err := d.cli.Txn(ctx).If(guard.Held(key, rev)...).
		Then(clientv3.OpGet(d.ready),
			clientv3.OpGet(d.seats, clientv3.WithPrefix(), clientv3.WithKeysOnly())).Commit()
	if err != nil {
		return false, 0, err
	}
	if !r.Succeeded {
		return false, 0, fmt.Errorf("%w: seat %s deleted while entering (lease expired or revoked)", ErrLost, key)
	}
	open, err := d.isReady(r.Responses[0].GetResponseRange().Kvs)
	if err != nil || open {
		return open, r.Header.Revision, err
	}
	seats, err := d.countSeats(r.Responses[1].GetResponseRange().Kvs)
	if err != nil || seats < d.n {
		return false, r.Header.Revision, err
	}
	if err := d.open(ctx, l); err != nil {
		return false, 0, err
	}
	return true, r.Header.Revision, nil
}

// open writes the ready key, if no one has. It is bound to the opener's
// lease, so it cannot outlive every participant.
func (d *DoubleBarrier) open(ctx context.Context, l *leasekeeper.Lease) error {
	_, err := d.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(d.ready), "=", 0)).
		Then(clientv3.OpPut(d.ready, "", clientv3.WithLease(l.ID()))).Commit()
	return err
}

// countSeats counts the seats read, and reports a key under the seats'
// prefix that no participant wrote: a seat is <16 hex digits>. Counted, a
// foreign key would open the barrier short of n. (The reads ask for keys
// only, which etcd serves from its index without the keys' leases, so a
// seat's lease cannot be checked here.)
func (d *DoubleBarrier) countSeats(kvs []*mvccpb.KeyValue) (int, error) {
	for _, kv := range kvs {
		if rest, _ := strings.CutPrefix(string(kv.Key), d.seats); !names.IsID(rest) {
			return 0, fmt.Errorf("%w: %s is no seat", ErrCorrupt, kv.Key)
		}
	}
	return len(kvs), nil
}

// isReady reports whether the ready key read is there, and refuses one that
// no participant wrote: the opener's is empty and on its lease.
func (d *DoubleBarrier) isReady(kvs []*mvccpb.KeyValue) (bool, error) {
	if len(kvs) == 0 {
		return false, nil
	}
	if kv := kvs[0]; len(kv.Value) != 0 || kv.Lease == 0 {
		return false, fmt.Errorf("%w: ready key %s (lease %x, %d bytes)", ErrCorrupt, kv.Key, kv.Lease, len(kv.Value))
	}
	return true, nil
}

// deleteSeat removes a seat with a detached context bounded by the TTL: the
// incarnation created at rev, or any if rev is 0 (outcome unknown). A key on
// a lost lease goes with it: nothing is deleted once l is lost, before or
// meanwhile (etcd unreachable).
func (d *DoubleBarrier) deleteSeat(ctx context.Context, l *leasekeeper.Lease, key string, rev int64) {
	var cmps []clientv3.Cmp
	if rev != 0 {
		cmps = guard.Held(key, rev)
	}
	// Retried until the TTL: a seat left on a live lease would count as a
	// participant.
	holding.Withdraw(ctx, d.cli, l, d.k.TTL(), key, cmps...)
}

func newSeat(d *DoubleBarrier, key string, rev int64, l *leasekeeper.Lease) *Seat {
	s := &Seat{d: d, leave: turn.New()}
	s.Init(d.cli, l, d.k.TTL(), key, rev, func(cause error) error {
		return fmt.Errorf("%w: %w", ErrLost, cause)
	})
	s.Follow(s.watchKey)
	return s
}

var errNotOpen = errors.New("not open")

// Leave gives up the seat and blocks until no participant holds a seat —
// participants whose leases expire count as having left — or ctx ends. The
// seat is deleted first, with a detached context bounded by the TTL, so a
// ctx that ends inside Leave leaves no key of this participant (while etcd
// cannot be reached, that delete can keep Leave past ctx's end, until etcd
// confirms it or the lease is lost: a seat on a lost lease goes with it).
// Calling Leave again waits again; a Leave waiting for another to return
// returns when its own ctx ends. After everyone left, the ready key is
// deleted so the barrier can be used for another round. It is idempotent
// once it returned nil.
//
// Cost: one transaction (delete the seat) and one read (count the seats);
// while others remain, one watch on the seats' prefix and one count per
// change; once none remain, one guarded delete of the ready key.
func (s *Seat) Leave(ctx context.Context) (err error) {
	if err := s.leave.Take(ctx); err != nil {
		return err
	}
	defer s.leave.Done()
	if s.left {
		return nil
	}
	d := s.d
	ctx, end := d.tm.span(ctx, "double.leave", d.name)
	defer func() { end(s.Token(), err) }()
	if !s.gone {
		s.leaving.Store(true)
		if err := s.deleteSeat(ctx); err != nil {
			s.leaving.Store(false)
			return fmt.Errorf("barrier: leave %q: %w", d.name, err)
		}
		s.gone = true
		if s.LeaseLost() {
			// The lease was lost: the seat ends as lost, whether the lease's
			// own hook or this call gets to end it first.
			s.Lose(s.LeaseCause())
		}
		s.End(ErrLeft)
		s.StopFollowing()
	}
	if err := d.waitAllLeft(ctx); err != nil {
		if ctx.Err() != nil {
			return err
		}
		return fmt.Errorf("barrier: leave %q: %w", d.name, err)
	}
	if err := d.lowerReady(ctx); err != nil {
		return fmt.Errorf("barrier: leave %q: lower ready: %w", d.name, err)
	}
	s.left = true
	return nil
}

// waitAllLeft returns once every seat was gone at some revision: the seats
// taken as of the last read, and the events after it. It returns even if
// the next round's first participant sat down right after.
func (d *DoubleBarrier) waitAllLeft(ctx context.Context) error {
	seats := map[string]bool{}
	return until(ctx, d.cli, d.seats, func(ctx context.Context) (bool, int64, error) {
		r, err := d.cli.Get(ctx, d.seats, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			return false, 0, err
		}
		if _, err := d.countSeats(r.Kvs); err != nil {
			return false, 0, err
		}
		clear(seats)
		for _, kv := range r.Kvs {
			seats[string(kv.Key)] = true
		}
		return len(seats) == 0, r.Header.Revision, nil
	}, func(ev *clientv3.Event) (bool, error) {
		if ev.Type == clientv3.EventTypeDelete {
			delete(seats, string(ev.Kv.Key))
			return len(seats) == 0, nil
		}
		if _, err := d.countSeats([]*mvccpb.KeyValue{ev.Kv}); err != nil {
			return false, err
		}
		seats[string(ev.Kv.Key)] = true
		return false, nil
	}, clientv3.WithPrefix())
}

// lowerReady deletes the ready key for the next round, unless a new
// round's participant already sat down; detached and bounded by the TTL.
// If it never lands within the TTL, the ready key goes with its opener's
// lease, so only an error etcd gives for good is returned.
func (d *DoubleBarrier) lowerReady(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.k.TTL())
	defer cancel()
	// A compare over a prefix holds only if it holds for every key in it, and
	// for an empty range it compares a zero key: "no seat exists".
	noSeats := clientv3.Compare(clientv3.CreateRevision(d.seats), "=", 0).WithPrefix()
	// Each attempt is short (retry.Attempt): one sent to an etcd leader that
	// died or hangs is sent again once another is elected; the guarded
	// delete is safe to repeat.
	err := retry.Attempts(cctx, retry.RequestPolicy, retry.Attempt(d.k.TTL()), func(ctx context.Context) error {
		_, err := d.cli.Txn(ctx).If(noSeats).Then(clientv3.OpDelete(d.ready)).Commit()
		return err
	})
	if err != nil && !retry.Retriable(err) && cctx.Err() == nil {
		return err
	}
	return nil
}

// deleteSeat deletes the seat's key: the holding's release, guarded by its
// create revision, detached and bounded by the TTL. A key on a lost lease
// goes with it: nothing is deleted once the lease is lost, before or
// meanwhile (etcd unreachable).
func (s *Seat) deleteSeat(ctx context.Context) error {
	_, err := s.Core.Release(ctx, nil, nil)
	return err
}

// watchKey ends the seat as lost if its key is deleted by anyone but Leave,
// until the seat ends.
func (s *Seat) watchKey(ctx context.Context) {
	err := until(ctx, s.d.cli, s.Key(), func(ctx context.Context) (bool, int64, error) {
		r, err := s.d.cli.Get(ctx, s.Key())
		if err != nil {
			return false, 0, err
		}
		return len(r.Kvs) == 0 || r.Kvs[0].CreateRevision != s.Token(), r.Header.Revision, nil
	}, func(ev *clientv3.Event) (bool, error) {
		return ev.Type == clientv3.EventTypeDelete || ev.Kv.CreateRevision != s.Token(), nil
	})
	if err == nil {
		if s.leaving.Load() {
			s.End(ErrLeft)
		} else {
			s.Lose(fmt.Errorf("seat %s was deleted", s.Key()))
		}
	}
}
