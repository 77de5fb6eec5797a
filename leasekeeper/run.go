package leasekeeper

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
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
	results := make(chan rpcResult, 4)
	inFlight := false
	backoff := 100 * time.Millisecond

	k.mu.Lock()
	deadline := time.NewTimer(time.Until(k.safeUntil.Add(-k.margin)))
	k.mu.Unlock()
	defer deadline.Stop()
	next := time.NewTimer(k.ttl / 3)
	defer next.Stop()

	launch := func(kind rpcKind, l *Lease) {
		inFlight = true
		k.wg.Add(1)
		go func() {
			defer k.wg.Done()
			r := rpcResult{kind: kind, sent: time.Now()}
			switch kind {
			case renewRPC:
				r.gen, r.id = l.gen, l.id
				actx, cancel := context.WithTimeout(ctx, k.attemptTimeout())
				r.ttl, r.err = k.renew(ctx, actx, l.id)
				cancel()
			case grantRPC:
				actx, cancel := context.WithTimeout(ctx, k.grantTimeout())
				resp, err := k.cli.Grant(actx, int64(k.ttl/time.Second))
				cancel()
				if err == nil {
					r.id, r.ttl = resp.ID, resp.TTL
				}
				r.err = err
			}
			results <- r // buffered: run may have returned already
		}()
	}

	for {
		select {
		case <-ctx.Done():
			// Wait for the RPC in flight: a lease granted just now must be
			// installed so that Close revokes it instead of leaving it to
			// expire.
			if inFlight {
				if r := <-results; r.kind == grantRPC && r.err == nil {
					k.install(r.id, r.sent, Reconnected)
				}
			}
			return

		case <-k.kick:
			// Invalidate declared the lease lost; start granting now.
			backoff = 100 * time.Millisecond
			if !inFlight {
				next.Reset(0)
			}

		case <-next.C:
			if inFlight {
				continue // the result will reschedule
			}
			l := k.Current()
			if l.ctx.Err() != nil {
				launch(grantRPC, nil)
			} else {
				launch(renewRPC, l)
			}

		case <-deadline.C:
			k.mu.Lock()
			l, until := k.cur, k.safeUntil
			k.mu.Unlock()
			if time.Now().Before(until.Add(-k.margin)) {
				// A renewal extended the deadline as the timer fired.
				deadline.Reset(time.Until(until.Add(-k.margin)))
				continue
			}
			if k.lose(l, fmt.Errorf("%w: no renewal confirmed; safe deadline %s passed", ErrLeaseLost, until.Format(time.RFC3339Nano))) {
				k.revokeLost(ctx, l)
				backoff = 100 * time.Millisecond
				if !inFlight {
					next.Reset(0)
				}
			}

		case r := <-results:
			inFlight = false
			switch r.kind {
			case renewRPC:
				l := k.Current()
				if l.gen != r.gen || l.ctx.Err() != nil {
					// A late answer for a lease already given up.
					next.Reset(0)
					continue
				}
				switch {
				case r.err == nil:
					until := r.sent.Add(time.Duration(r.ttl) * time.Second)
					k.mu.Lock()
					if until.After(k.safeUntil) {
						k.safeUntil = until
					}
					if k.state == Suspended {
						k.setStateLocked(Connected, nil)
					}
					k.mu.Unlock()
					deadline.Reset(time.Until(until.Add(-k.margin)))
					next.Reset(time.Until(r.sent.Add(k.ttl / 3)))
				case errors.Is(r.err, rpctypes.ErrLeaseNotFound):
					if k.lose(l, fmt.Errorf("%w: etcd reports lease %x gone (revoked or expired)", ErrLeaseLost, int64(l.id))) {
						backoff = 100 * time.Millisecond
					}
					next.Reset(0)
				default:
					k.mu.Lock()
					if k.state != Suspended {
						k.setStateLocked(Suspended, fmt.Errorf("leasekeeper: renewal failed: %w", r.err))
					}
					k.mu.Unlock()
					next.Reset(k.retryEvery())
				}

			case grantRPC:
				if r.err != nil {
					k.log.Debug("leasekeeper: grant failed", "err", r.err, "retry_in", backoff)
					next.Reset(backoff)
					backoff = min(backoff*2, max(k.ttl, time.Second))
					continue
				}
				k.install(r.id, r.sent, Reconnected)
				k.mu.Lock()
				until := k.safeUntil
				k.mu.Unlock()
				deadline.Reset(time.Until(until.Add(-k.margin)))
				next.Reset(k.ttl / 3)
			}
		}
	}
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
