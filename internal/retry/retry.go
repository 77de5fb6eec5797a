// Package retry classifies etcd errors and paces retries of the ones worth
// retrying.
package retry

import (
	"context"
	"errors"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Retriable reports whether err is a transient condition of the cluster (no
// leader, a member down or unreachable, a request timed out on the server)
// after which the same request may succeed. Context errors, permission
// denials, invalid arguments and anything unknown are not.
func Retriable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	switch {
	case errors.Is(err, rpctypes.ErrNoLeader),
		errors.Is(err, rpctypes.ErrLeaderChanged),
		errors.Is(err, rpctypes.ErrNotCapable),
		errors.Is(err, rpctypes.ErrStopped),
		errors.Is(err, rpctypes.ErrTimeout),
		errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail),
		errors.Is(err, rpctypes.ErrTimeoutDueToConnectionLost),
		errors.Is(err, rpctypes.ErrTimeoutWaitAppliedIndex),
		errors.Is(err, rpctypes.ErrUnhealthy),
		errors.Is(err, rpctypes.ErrTooManyRequests):
		return true
	}
	if s, ok := status.FromError(err); ok {
		switch s.Code() {
		case codes.Unavailable, codes.ResourceExhausted, codes.Aborted:
			return true
		case codes.Unknown:
			// A member being stopped fails the proposals it was still
			// holding with Raft's own error, which etcd does not translate;
			// like a timeout, the outcome is unknown and another member
			// can serve the retry.
			return s.Message() == raftStopped
		}
	}
	return false
}

// raftStopped is the text of go.etcd.io/raft/v3's ErrStopped.
const raftStopped = "raft: stopped"

// Backoff doubles a delay from Min up to Max.
type Backoff struct {
	Min, Max time.Duration
	cur      time.Duration
}

// Wait sleeps for the next delay or until ctx ends, and returns ctx's cause
// if it ended.
func (b *Backoff) Wait(ctx context.Context) error {
	if b.cur == 0 {
		b.cur = b.Min
	} else {
		b.cur = min(b.cur*2, b.Max)
	}
	t := time.NewTimer(b.cur)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

// Reset starts the delays over from Min.
func (b *Backoff) Reset() { b.cur = 0 }

// PermissionDenied reports whether err is etcd refusing a request for lack of
// permission. A refused watch comes back from clientv3 as a plain error with
// etcd's message rather than the typed one, so the message is matched too.
func PermissionDenied(err error) bool {
	if err == nil {
		return false
	}
	return errors.Is(err, rpctypes.ErrPermissionDenied) ||
		strings.Contains(err.Error(), rpctypes.ErrPermissionDenied.Error())
}
