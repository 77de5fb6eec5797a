// Package retry classifies etcd errors and paces retries of the ones worth
// retrying.
//
// Two classifications, for two kinds of call:
//
//   - Retriable, for a request (a Get, a Txn, a Grant): a transient
//     condition of the cluster after which the same request may succeed.
//     clientv3 already retries such requests itself where it knows them to
//     be safe, and refreshes an auth token a member refused.
//   - StreamTransient, for a stream (a watch, a keep-alive) that ended: a
//     new stream may get past it unless etcd refused what was asked
//     (permission, an invalid request, a compacted revision). Streams are
//     not retried by clientv3 for auth errors, so those are transient here.
//
// Context errors are neither: the caller decides what its own deadline
// means.
package retry

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v5"
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
		errors.Is(err, rpctypes.ErrTooManyRequests),
		AuthRace(err):
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
			// can serve the retry. A proposal made while the member knows
			// no leader is dropped the same way.
			return s.Message() == raftStopped || s.Message() == raftDropped
		}
	}
	return false
}

// Texts of go.etcd.io/raft/v3's ErrStopped and ErrProposalDropped.
const (
	raftStopped = "raft: stopped"
	raftDropped = "raft proposal dropped"
)

// AuthRace reports whether err is a member refusing an auth token it does
// not know (yet): clientv3 authenticates through one member, and a new
// stream or request may reach another that has not applied the token. The
// same request with a fresh token succeeds. A refused watch carries the
// reason as text only, so the text is matched too.
func AuthRace(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, rpctypes.ErrInvalidAuthToken) || errors.Is(err, rpctypes.ErrAuthOldRevision) || errors.Is(err, rpctypes.ErrUserEmpty) {
		return true
	}
	msg := err.Error()
	for _, m := range []error{rpctypes.ErrInvalidAuthToken, rpctypes.ErrAuthOldRevision, rpctypes.ErrUserEmpty} {
		if strings.Contains(msg, m.Error()) {
			return true
		}
	}
	return false
}

// StreamTransient reports whether a new stream may get past err, the reason
// a watch or keep-alive stream ended. Only what etcd refused on its merits
// is final: a permission, an invalid or unimplemented request, a revision
// compacted away or not yet written, a wrong password. Everything else (no
// leader, an auth race, a broken connection, a stream clientv3 ended without
// a reason, an error not known here) is worth a new stream after a backoff.
func StreamTransient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	if AuthRace(err) {
		return true
	}
	if PermissionDenied(err) ||
		errors.Is(err, rpctypes.ErrCompacted) ||
		errors.Is(err, rpctypes.ErrFutureRev) ||
		errors.Is(err, rpctypes.ErrAuthFailed) ||
		errors.Is(err, rpctypes.ErrAuthNotEnabled) ||
		errors.Is(err, rpctypes.ErrEmptyKey) {
		return false
	}
	if s, ok := status.FromError(err); ok {
		switch s.Code() {
		case codes.InvalidArgument, codes.PermissionDenied, codes.OutOfRange, codes.Unimplemented, codes.Unauthenticated:
			// Unauthenticated without a known auth-race text: bad
			// credentials, which a new stream will not fix.
			return false
		}
	}
	return true
}

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

// Policy is how retries of one kind of call are paced: delays grow from
// Min, doubling, up to Max, each drawn at random within ±50% of its nominal
// value, so that callers that failed together (every waiter of a member
// that lost its leader) do not retry together.
type Policy struct {
	Min, Max time.Duration
}

// Named policies.
var (
	// RequestPolicy paces retries of a request to etcd. Its ceiling is
	// low: the common reason to retry is a cluster electing a leader, and
	// the first request after the election should not wait long (members
	// without a leader refuse at once, so each retry costs little).
	RequestPolicy = Policy{Min: 10 * time.Millisecond, Max: 250 * time.Millisecond}
	// RecoverPolicy paces a loop that recovers from a longer failure (a
	// campaign again after a lost term, a resolver's reload).
	RecoverPolicy = Policy{Min: 50 * time.Millisecond, Max: 2 * time.Second}
	// WatchPolicy paces new watches after failed ones.
	WatchPolicy = Policy{Min: 10 * time.Millisecond, Max: time.Second}
)

// New returns a Backoff that follows p.
func (p Policy) New() *Backoff { return &Backoff{Min: p.Min, Max: p.Max} }

// Backoff paces retries: each Wait sleeps for the next delay. The zero
// value with Min and Max set is ready to use. Not safe for concurrent use.
type Backoff struct {
	Min, Max time.Duration
	b        *backoff.ExponentialBackOff
}

// Next returns the next delay.
func (b *Backoff) Next() time.Duration {
	if b.b == nil {
		b.b = &backoff.ExponentialBackOff{
			InitialInterval:     b.Min,
			RandomizationFactor: 0.5,
			Multiplier:          2,
			MaxInterval:         b.Max,
		}
		b.b.Reset()
	}
	return min(b.b.NextBackOff(), b.Max)
}

// Wait sleeps for the next delay or until ctx ends, and returns ctx's cause
// if it ended.
func (b *Backoff) Wait(ctx context.Context) error {
	t := time.NewTimer(b.Next())
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

// Reset starts the delays over from Min.
func (b *Backoff) Reset() {
	if b.b != nil {
		b.b.Reset()
	}
}

// Attempt is how long one attempt of a request may take before it is given
// up and sent again, for a holding whose lease has the given TTL. A request
// sent to a leader that died or hangs gets no answer: waiting the whole TTL
// for it (the earlier bound) left work stalled for the TTL although a new
// leader was elected about one election timeout (1 s by default) after the
// fault. An attempt therefore lasts about one election timeout, and no more
// than a fifth of the TTL, so several fit in it; the operation as a whole is
// still bounded by the TTL or the loss of the lease.
func Attempt(ttl time.Duration) time.Duration {
	return min(max(ttl/5, 200*time.Millisecond), time.Second)
}

// Do calls fn until it returns nil or an error that is not Retriable, or
// until ctx ends (then ctx's cause), pacing the tries with p.
func Do(ctx context.Context, p Policy, fn func(context.Context) error) error {
	bo := p.New()
	for {
		err := fn(ctx)
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return context.Cause(ctx)
		case !Retriable(err):
			return err
		}
		if werr := bo.Wait(ctx); werr != nil {
			return werr
		}
	}
}

// Attempts calls fn like Do, each call under a context that also ends after
// attempt (see Attempt): a request to a leader that died or hangs is given
// up and sent again, to whichever member answers, instead of waiting out
// the whole operation's bound. An attempt that ran out of time while ctx
// lives is retried like a transient error, so fn must be safe to repeat: a
// request given up may still have been applied.
func Attempts(ctx context.Context, p Policy, attempt time.Duration, fn func(context.Context) error) error {
	b := NewBounds(attempt)
	timedOut := false
	return Do(ctx, p, func(ctx context.Context) error {
		actx, cancel := context.WithTimeout(ctx, b.Next(timedOut))
		defer cancel()
		err := fn(actx)
		timedOut = err != nil && ctx.Err() == nil && actx.Err() != nil
		if timedOut {
			return errAttemptTimedOut
		}
		return err
	})
}

// Bounds gives the bound of each attempt of one request. The first is the
// full bound (Attempt). After an attempt that ran out of time, the next
// starts at a quarter of it (at least 100 ms) and doubles back to it: the
// attempt that ran out was most likely sent to, or forwarded to, a leader
// that died, and a follower that forwarded it learns of the new leader only
// after the election, too late for it; short attempts catch that election
// closely, and a cluster that is only slow gets its full bound back within
// a few attempts.
type Bounds struct {
	full, cur time.Duration
}

// NewBounds returns the bounds of attempts whose full bound is full.
func NewBounds(full time.Duration) *Bounds { return &Bounds{full: full} }

// Next returns the bound of the next attempt; timedOut says whether the
// previous one ran out of time.
func (b *Bounds) Next(timedOut bool) time.Duration {
	switch {
	case b.cur == 0:
		b.cur = b.full
	case timedOut && b.cur == b.full:
		b.cur = min(max(b.full/4, 100*time.Millisecond), b.full)
	case timedOut:
		b.cur = min(2*b.cur, b.full)
	default:
		b.cur = b.full
	}
	return b.cur
}

// errAttemptTimedOut is what an attempt that ran out of time reports to Do:
// an unknown outcome, worth another attempt.
var errAttemptTimedOut = status.Error(codes.Unavailable, "concord: attempt timed out")

// Unknown reports whether a request that failed with err may still have
// been applied: a transient condition of the cluster (Retriable), or a
// deadline or cancellation that cut the wait for its answer short (an
// attempt's bound, see Attempt). A caller that sends such a request again
// must make that safe: a guard, or a read-back of what the first one did.
func Unknown(err error) bool {
	return Retriable(err) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}
