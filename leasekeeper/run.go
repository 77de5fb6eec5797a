package leasekeeper

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/retry"
)

type rpcKind int

const (
	renewRPC rpcKind = iota
	grantRPC
)

type rpcResult struct {
	kind rpcKind
	gen  uint64 // for renewals: the generation renewed
	id   clientv3.LeaseID
	sent time.Time
	ttl  int64
	err  error
}

// Timing, derived from the TTL:
//
//   - a renewal is sent every TTL/3 after the last successful one was sent;
//   - one attempt may take attemptTimeout; an attempt that times out or fails
//     moves the keeper to Suspended and is retried every retryEvery;
//   - the deadline timer fires at SafeUntil − margin and declares the loss
//     whatever RPCs are still in flight, so a hung connection cannot delay it.
func (k *Keeper) attemptTimeout() time.Duration {
	return min(max(k.ttl/5, 100*time.Millisecond), 2*time.Second)
}

func (k *Keeper) retryEvery() time.Duration {
	return min(max(k.ttl/20, 20*time.Millisecond), 500*time.Millisecond)
}

func (k *Keeper) grantTimeout() time.Duration {
	return min(max(k.ttl/2, 500*time.Millisecond), 5*time.Second)
}

// run is the keeper's only long-lived goroutine. It never waits on an RPC:
// each RPC runs in its own goroutine and reports on results.
func (k *Keeper) run(ctx context.Context) {
	defer k.wg.Done()
	k.mu.Lock()
	r := &runner{
		k:       k,
		results: make(chan rpcResult, 4),
		// Grants after a failed one are paced with jitter, so that the
		// keepers of many processes that lost etcd together do not grant
		// together when it comes back.
		grants:   retry.Policy{Min: 100 * time.Millisecond, Max: max(k.ttl, time.Second)}.New(),
		deadline: time.NewTimer(time.Until(k.safeUntil.Add(-k.margin))),
		next:     time.NewTimer(k.ttl / 3),
	}
	k.mu.Unlock()
	defer r.deadline.Stop()
	defer r.next.Stop()
	for {
		select {
		case <-ctx.Done():
			// Wait for the RPC in flight: a lease granted just now must be
			// installed so that Close revokes it instead of leaving it to
			// expire.
			if r.inFlight {
				if res := <-r.results; res.kind == grantRPC && res.err == nil {
					k.install(res.id, res.sent, Reconnected)
				}
			}
			return
		case <-k.kick:
			// Invalidate declared the lease lost; start granting now.
			r.grantNow()
		case <-r.next.C:
			if r.inFlight {
				continue // the result will reschedule
			}
			if l := k.Current(); l.ctx.Err() != nil {
				r.launch(ctx, grantRPC, nil)
			} else {
				r.launch(ctx, renewRPC, l)
			}
		case <-r.deadline.C:
			r.onDeadline(ctx)
		case res := <-r.results:
			r.inFlight = false
			if res.kind == renewRPC {
				r.onRenewed(res)
			} else {
				r.onGranted(res)
			}
		}
	}
}

// runner is run's state.
type runner struct {
	k        *Keeper
	results  chan rpcResult
	inFlight bool           // one RPC at a time
	grants   *retry.Backoff // delays between failed grants
	deadline *time.Timer    // fires at the safe deadline less the margin
	next     *time.Timer    // the next RPC
}

// launch starts one RPC in its own goroutine.
func (r *runner) launch(ctx context.Context, kind rpcKind, l *Lease) {
	k := r.k
	r.inFlight = true
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		res := rpcResult{kind: kind, sent: time.Now()}
		switch kind {
		case renewRPC:
			res.gen, res.id = l.gen, l.id
			actx, cancel := context.WithTimeout(ctx, k.attemptTimeout())
			res.ttl, res.err = k.renew(ctx, actx, l.id)
			cancel()
		case grantRPC:
			actx, cancel := context.WithTimeout(ctx, k.grantTimeout())
			resp, err := k.cli.Grant(actx, int64(k.ttl/time.Second))
			cancel()
			if err == nil {
				res.id, res.ttl = resp.ID, resp.TTL
			}
			res.err = err
		}
		r.results <- res // buffered: run may have returned already
	}()
}

// grantNow starts granting a new lease at once, its delays from the
// shortest.
func (r *runner) grantNow() {
	r.grants.Reset()
	if !r.inFlight {
		r.next.Reset(0)
	}
}

// onDeadline declares the lease lost at its safe deadline, whatever RPCs
// are still in flight, unless a renewal extended it as the timer fired.
func (r *runner) onDeadline(ctx context.Context) {
	k := r.k
	k.mu.Lock()
	l, until := k.cur, k.safeUntil
	k.mu.Unlock()
	if time.Now().Before(until.Add(-k.margin)) {
		r.deadline.Reset(time.Until(until.Add(-k.margin)))
		return
	}
	if k.lose(l, fmt.Errorf("%w: no renewal confirmed; safe deadline %s passed", ErrLeaseLost, until.Format(time.RFC3339Nano))) {
		k.revokeLost(ctx, l)
		r.grantNow()
	}
}

// onRenewed takes a renewal's answer: a later deadline, a lease etcd no
// longer knows, or a failure that suspends the keeper until a retry works.
func (r *runner) onRenewed(res rpcResult) {
	k := r.k
	l := k.Current()
	if l.gen != res.gen || l.ctx.Err() != nil {
		// A late answer for a lease already given up.
		r.next.Reset(0)
		return
	}
	switch {
	case res.err == nil:
		until := res.sent.Add(time.Duration(res.ttl) * time.Second)
		k.mu.Lock()
		if until.After(k.safeUntil) {
			k.safeUntil = until
		}
		if k.state == Suspended {
			k.setStateLocked(Connected, nil)
		}
		k.mu.Unlock()
		r.deadline.Reset(time.Until(until.Add(-k.margin)))
		r.next.Reset(time.Until(res.sent.Add(k.ttl / 3)))
	case errors.Is(res.err, rpctypes.ErrLeaseNotFound):
		if k.lose(l, fmt.Errorf("%w: etcd reports lease %x gone (revoked or expired)", ErrLeaseLost, int64(l.id))) {
			r.grants.Reset()
		}
		r.next.Reset(0)
	default:
		k.mu.Lock()
		if k.state != Suspended {
			k.setStateLocked(Suspended, fmt.Errorf("leasekeeper: renewal failed: %w", res.err))
		}
		k.mu.Unlock()
		r.next.Reset(k.retryEvery())
	}
}

// onGranted installs a granted lease, or schedules the next grant.
func (r *runner) onGranted(res rpcResult) {
	k := r.k
	if res.err != nil {
		delay := r.grants.Next()
		k.log.Debug("leasekeeper: grant failed", "err", res.err, "retry_in", delay)
		r.next.Reset(delay)
		return
	}
	k.install(res.id, res.sent, Reconnected)
	k.mu.Lock()
	until := k.safeUntil
	k.mu.Unlock()
	r.deadline.Reset(time.Until(until.Add(-k.margin)))
	r.next.Reset(k.ttl / 3)
}

// lose cancels lease l's context with cause and moves to Lost, unless l is no
// longer current or already lost. It reports whether it did.
func (k *Keeper) lose(l *Lease, cause error) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.cur != l || l.ctx.Err() != nil || k.closed {
		return false
	}
	l.cancel(cause)
	k.setStateLocked(Lost, cause)
	return true
}

// revokeLost revokes a lease given up for a passed deadline: if the server
// still has it (renewals were slow, not lost), its keys are freed now rather
// than a TTL later. Best effort; bounded by the TTL and by Close.
func (k *Keeper) revokeLost(ctx context.Context, l *Lease) {
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		rctx, cancel := context.WithTimeout(ctx, k.ttl)
		defer cancel()
		_, _ = k.cli.Revoke(rctx, l.id)
	}()
}
