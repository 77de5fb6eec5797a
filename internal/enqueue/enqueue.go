// Package enqueue sends the transaction that puts a waiter's request key in
// a queue-shaped recipe (a lock's or a semaphore's request), one way for
// all of them.
//
// Each attempt runs detached from the caller's context and bounded by
// retry.Attempt of the lease TTL (shorter after one timed out, see
// retry.Bounds), so that a transaction sent to an etcd leader that died or
// hangs is sent again once another is elected, instead of waiting out the
// TTL. When the caller's context ends while an attempt is in flight, the
// attempt keeps ReplyGrace for its answer: the answer tells whether the key
// was written, so the recipe's clean-up never races a put still on its way.
// Only when no answer comes does the recipe delete its key blindly, which
// is safe because the key is unique to the request.
package enqueue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/retry"
	"github.com/concordkit/concord/leasekeeper"
)

// ReplyGrace is how long an enqueue transaction in flight may still answer
// after the caller's context ended: long enough for a healthy cluster, short
// enough that an acquisition returns promptly when etcd is unreachable.
const ReplyGrace = 250 * time.Millisecond

// Sender sends one acquisition's enqueue transactions. It keeps the
// backoff and the attempt bounds across the recipe's own retries (a
// leftover key deleted, a key gone in between), which call Send again.
type Sender struct {
	lease    *leasekeeper.Lease
	lost     error  // the recipe's ErrLost
	what     string // "lock: enqueue", what a failure is reported as
	bo       *retry.Backoff
	bounds   *retry.Bounds
	timedOut bool
}

// New returns a sender for requests on lease, whose keeper's TTL is ttl.
// lost is the recipe's ErrLost; what prefixes other failures.
func New(lease *leasekeeper.Lease, ttl time.Duration, lost error, what string) *Sender {
	return &Sender{lease: lease, lost: lost, what: what,
		bo: retry.RequestPolicy.New(), bounds: retry.NewBounds(retry.Attempt(ttl))}
}

// Send runs txn until etcd answers it, and returns the answer. An attempt
// whose outcome is unknown is sent again after a backoff, so txn must
// recognise a key an earlier attempt wrote. It fails with the recipe's
// ErrLost when the lease is gone (before sending, or as etcd's answer),
// with ctx's cause once ctx ended and no answer came within ReplyGrace,
// and with what etcd refused otherwise.
func (s *Sender) Send(ctx context.Context, txn func(context.Context) (*clientv3.TxnResponse, error)) (*clientv3.TxnResponse, error) {
	for {
		if err := ctx.Err(); err != nil {
			return nil, context.Cause(ctx)
		}
		if err := s.lease.Err(); err != nil {
			return nil, Lost(s.lost, s.lease)
		}
		tctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(context.WithoutCancel(ctx)), s.bounds.Next(s.timedOut))
		stopGrace := context.AfterFunc(ctx, func() { time.AfterFunc(ReplyGrace, cancel) })
		resp, err := txn(tctx)
		s.timedOut = err != nil && tctx.Err() != nil && ctx.Err() == nil
		stopGrace()
		cancel()
		switch {
		case err == nil:
			return resp, nil
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			return nil, fmt.Errorf("%w: lease %x gone before the request was queued: %w", s.lost, int64(s.lease.ID()), err)
		case retry.Unknown(err) && ctx.Err() == nil:
			// The put may have been applied: the next attempt finds the
			// key, or the recipe's clean-up deletes it.
			if werr := s.bo.Wait(ctx); werr != nil {
				return nil, werr
			}
		case ctx.Err() != nil:
			// The answer's grace after ctx ended ran out.
			return nil, context.Cause(ctx)
		default:
			return nil, fmt.Errorf("%s: %w", s.what, err)
		}
	}
}

// Lost is the recipe's ErrLost for a request whose lease l is gone, with
// the cause of the loss.
func Lost(lost error, l *leasekeeper.Lease) error {
	return fmt.Errorf("%w: %w", lost, context.Cause(l.Context()))
}
