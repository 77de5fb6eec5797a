package leasekeeper

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/concordkit/concord/internal/compat"
)

// Keeper owns one lease at a time and keeps it alive. One per process is the
// normal use; every recipe bound to it shares its lease. Its methods are safe
// for concurrent use.
type Keeper struct {
	cli    *clientv3.Client
	ttl    time.Duration
	margin time.Duration
	log    *slog.Logger
	states metric.Int64Counter

	stop   context.CancelFunc
	stopCh <-chan struct{}
	kick   chan struct{}  // wakes run to grant a new lease after Invalidate
	ka     *kaStream      // the keep-alive stream; see renew for who touches it
	wg     sync.WaitGroup // joins run and every RPC goroutine it starts

	mu        sync.Mutex // protects everything below
	cur       *Lease
	state     State
	safeUntil time.Time
	lastErr   error
	next      chan struct{} // closed when a new live lease is installed
	subs      map[chan Event]struct{}
	closed    bool
}

// New grants a lease and starts keeping it alive. It is the only call in
// concord's recipes' set-up that does I/O. The caller must Close the keeper.
//
// It first reads the etcd version of the members the client reaches and
// refuses etcd 3.4 with an error that wraps ErrUnsupported: the locks,
// semaphores and elections that stand on a keeper rely on watch progress
// notifications that 3.4 sends too early.
func New(ctx context.Context, cli *clientv3.Client, opts ...Option) (*Keeper, error) {
	o := options{ttl: DefaultTTL}
	for _, opt := range opts {
		opt(&o)
	}
	if cli == nil {
		return nil, errors.New("leasekeeper: nil client")
	}
	if o.ttl <= 0 {
		return nil, fmt.Errorf("%w: %v: must be positive", ErrInvalidTTL, o.ttl)
	}
	if o.ttl%time.Second != 0 {
		return nil, fmt.Errorf("%w: %v: etcd leases are whole seconds", ErrInvalidTTL, o.ttl)
	}
	if o.margin == 0 {
		o.margin = max(o.ttl/10, 50*time.Millisecond)
	}
	if o.margin < 0 || o.margin >= o.ttl/2 {
		return nil, fmt.Errorf("leasekeeper: margin %v: must be in [0, TTL/2)", o.margin)
	}
	if o.logger == nil {
		o.logger = slog.Default()
	}
	if o.meter == nil {
		o.meter = otel.GetMeterProvider()
	}
	states, _ := o.meter.Meter("github.com/concordkit/concord/leasekeeper").Int64Counter(
		"concord.lease.state_changes",
		metric.WithDescription("Lease state changes, by new state."))

	if err := compat.Check(ctx, cli); err != nil {
		return nil, fmt.Errorf("leasekeeper: %w", err)
	}
	sent := time.Now()
	resp, err := cli.Grant(ctx, int64(o.ttl/time.Second))
	if err != nil {
		return nil, fmt.Errorf("leasekeeper: grant: %w", err)
	}
	if granted := time.Duration(resp.TTL) * time.Second; granted != o.ttl {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.ttl)
		_, _ = cli.Revoke(rctx, resp.ID)
		cancel()
		return nil, fmt.Errorf("%w: asked %v, etcd granted %v (its minimum is ceil(1.5 × election timeout))", ErrInvalidTTL, o.ttl, granted)
	}
	stopCtx, stop := context.WithCancel(context.Background())
	k := &Keeper{
		cli:    cli,
		ttl:    o.ttl,
		margin: o.margin,
		log:    o.logger,
		states: states,
		stop:   stop,
		stopCh: stopCtx.Done(),
		next:   make(chan struct{}),
		kick:   make(chan struct{}, 1),
		subs:   map[chan Event]struct{}{},
	}
	k.install(resp.ID, sent, Connected)
	k.wg.Add(1)
	go k.run(stopCtx)
	return k, nil
}

// Client returns the etcd client the keeper uses.
func (k *Keeper) Client() *clientv3.Client { return k.cli }

// TTL returns the lease TTL.
func (k *Keeper) TTL() time.Duration { return k.ttl }

// State returns the current state.
func (k *Keeper) State() State {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.state
}

// SafeUntil returns the current lease's safe deadline: the server cannot have
// expired the lease before it.
func (k *Keeper) SafeUntil() time.Time {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.safeUntil
}

// Current returns the current lease, live or not, without waiting.
func (k *Keeper) Current() *Lease {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.cur
}

// Lease returns the current lease if it is live, and otherwise waits until a
// new one is granted, ctx ends (ctx's cause) or the keeper is closed
// (ErrClosed).
func (k *Keeper) Lease(ctx context.Context) (*Lease, error) {
	for {
		k.mu.Lock()
		if k.closed {
			k.mu.Unlock()
			return nil, ErrClosed
		}
		l, next := k.cur, k.next
		k.mu.Unlock()
		if l.ctx.Err() == nil {
			return l, nil
		}
		select {
		case <-next:
		case <-k.stopCh:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
}

// Invalidate declares lease l lost at once, with cause (wrapped so that it
// errors.Is ErrLeaseLost), and has the keeper grant a new one. concord's
// recipes call it when etcd answers a request that attached l to a key with
// "lease not found" (other users of the keeper's leases may too): the keeper
// would otherwise learn it only at its next renewal, up to a third of the TTL
// later, and hand l out meanwhile. It does nothing if l is not the current
// lease or is already lost.
func (k *Keeper) Invalidate(l *Lease, cause error) {
	if l == nil {
		return
	}
	if k.lose(l, fmt.Errorf("%w: %w", ErrLeaseLost, cause)) {
		select {
		case k.kick <- struct{}{}:
		default:
		}
	}
}

// Subscribe returns a channel of state changes, starting with the current
// state, and a function that ends the subscription. The keeper never blocks
// on a subscriber: the channel holds the last 64 changes, dropping the oldest
// first when the reader falls behind. The channel is closed after the Closed
// event, or when cancel is called.
func (k *Keeper) Subscribe() (<-chan Event, func()) {
	ch := make(chan Event, 64)
	k.mu.Lock()
	defer k.mu.Unlock()
	ch <- k.eventLocked(k.state, k.state, k.lastErr)
	if k.closed {
		close(ch)
		return ch, func() {}
	}
	k.subs[ch] = struct{}{}
	return ch, func() {
		k.mu.Lock()
		defer k.mu.Unlock()
		if _, ok := k.subs[ch]; ok {
			delete(k.subs, ch)
			close(ch)
		}
	}
}

func (k *Keeper) eventLocked(s, prev State, err error) Event {
	return Event{State: s, Prev: prev, Lease: k.cur.id, Generation: k.cur.gen, At: time.Now(), SafeUntil: k.safeUntil, Err: err}
}

// setStateLocked records a state change and tells subscribers.
func (k *Keeper) setStateLocked(s State, err error) {
	prev := k.state
	if s == prev {
		return
	}
	k.state = s
	k.lastErr = err
	ev := k.eventLocked(s, prev, err)
	for ch := range k.subs {
		select {
		case ch <- ev:
		default:
			// Full: drop the oldest so the newest state is never lost.
			select {
			case <-ch:
			default:
			}
			select {
			case ch <- ev:
			default:
			}
		}
	}
	k.states.Add(context.Background(), 1, metric.WithAttributes(attribute.String("state", s.String())))
	attrs := []any{"state", s.String(), "prev", prev.String(), "lease", fmt.Sprintf("%x", int64(k.cur.id)), "generation", k.cur.gen}
	if err != nil {
		attrs = append(attrs, "err", err)
	}
	k.log.Debug("leasekeeper: state change", attrs...)
}

// install makes a freshly granted lease current.
func (k *Keeper) install(id clientv3.LeaseID, sent time.Time, s State) {
	ctx, cancel := context.WithCancelCause(context.Background())
	k.mu.Lock()
	defer k.mu.Unlock()
	gen := uint64(1)
	if k.cur != nil {
		gen = k.cur.gen + 1
	}
	k.cur = &Lease{id: id, gen: gen, ctx: ctx, cancel: cancel}
	k.safeUntil = sent.Add(k.ttl)
	k.setStateLocked(s, nil)
	close(k.next)
	k.next = make(chan struct{})
}

// Close revokes the current lease (its keys are deleted at once), cancels its
// context, and joins every goroutine the keeper started. It is idempotent.
// The revoke uses ctx; if it fails the lease expires after its TTL anyway.
func (k *Keeper) Close(ctx context.Context) error {
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		return nil
	}
	k.closed = true
	k.mu.Unlock()

	k.stop()
	k.wg.Wait()
	// run has returned: the current lease can no longer change.
	l := k.Current()
	live := l.ctx.Err() == nil
	l.cancel(fmt.Errorf("%w: keeper closed", ErrLeaseLost))
	var err error
	if live {
		if _, rerr := k.cli.Revoke(ctx, l.id); rerr != nil && !errors.Is(rerr, rpctypes.ErrLeaseNotFound) {
			err = fmt.Errorf("leasekeeper: revoke on close: %w", rerr)
		}
	}
	k.mu.Lock()
	k.setStateLocked(Closed, nil)
	for ch := range k.subs {
		close(ch)
	}
	k.subs = nil
	k.mu.Unlock()
	return err
}
