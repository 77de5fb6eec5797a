package retry

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestRetriable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{context.Canceled, false},
		{context.DeadlineExceeded, false},
		{rpctypes.ErrNoLeader, true},
		{fmt.Errorf("wrapped: %w", rpctypes.ErrTimeoutDueToLeaderFail), true},
		{status.Error(codes.Unavailable, "connection refused"), true},
		{status.Error(codes.Unknown, "raft: stopped"), true},
		{status.Error(codes.Unknown, "something else"), false},
		{rpctypes.ErrPermissionDenied, false},
		{rpctypes.ErrTooManyOps, false},
		{errors.New("something else"), false},
	} {
		assert.Equal(t, tc.want, Retriable(tc.err), "%v", tc.err)
	}
}

func TestPermissionDenied(t *testing.T) {
	assert.True(t, PermissionDenied(rpctypes.ErrPermissionDenied))
	assert.True(t, PermissionDenied(fmt.Errorf("x: %w", rpctypes.ErrPermissionDenied)))
	// A refused watch: clientv3 passes the server's reason on as text.
	assert.True(t, PermissionDenied(errors.New("rpc error: code = PermissionDenied desc = etcdserver: permission denied")))
	assert.False(t, PermissionDenied(rpctypes.ErrNoLeader))
	assert.False(t, PermissionDenied(nil))
}

func TestStreamTransient(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{context.Canceled, false},
		{rpctypes.ErrNoLeader, true},
		{errors.New("rpc error: code = Unauthenticated desc = etcdserver: invalid auth token"), true},
		{status.Error(codes.FailedPrecondition, "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token"), true},
		{status.Error(codes.FailedPrecondition, "etcdserver: permission denied"), false},
		{rpctypes.ErrCompacted, false},
		{rpctypes.ErrAuthFailed, false},
		{status.Error(codes.Unauthenticated, "bad credentials"), false},
		{status.Error(codes.Unavailable, "connection reset"), true},
		{errors.New("watch ended without a reason"), true},
	} {
		assert.Equal(t, tc.want, StreamTransient(tc.err), "%v", tc.err)
	}
}

func TestUnknown(t *testing.T) {
	assert.True(t, Unknown(context.DeadlineExceeded))
	assert.True(t, Unknown(rpctypes.ErrTimeout))
	assert.False(t, Unknown(rpctypes.ErrPermissionDenied))
	assert.False(t, Unknown(nil))
}

// An attempt that runs out of time is tried again while the operation's
// context lives; one that fails for good is not.
func TestAttempts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	calls := 0
	err := Attempts(ctx, Policy{Min: time.Millisecond, Max: time.Millisecond}, 10*time.Millisecond, func(ctx context.Context) error {
		calls++
		if calls < 3 {
			<-ctx.Done() // a request to a member that does not answer
			return ctx.Err()
		}
		return nil
	})
	assert.NoError(t, err)
	assert.Equal(t, 3, calls)

	calls = 0
	err = Attempts(ctx, Policy{Min: time.Millisecond, Max: time.Millisecond}, time.Second, func(context.Context) error {
		calls++
		return rpctypes.ErrPermissionDenied
	})
	assert.ErrorIs(t, err, rpctypes.ErrPermissionDenied)
	assert.Equal(t, 1, calls)
}

func TestBackoffJitter(t *testing.T) {
	p := Policy{Min: 100 * time.Millisecond, Max: time.Second}
	seen := map[time.Duration]bool{}
	for range 20 {
		d := p.New().Next()
		assert.GreaterOrEqual(t, d, 50*time.Millisecond)
		assert.LessOrEqual(t, d, 150*time.Millisecond)
		seen[d] = true
	}
	assert.Greater(t, len(seen), 1, "delays are drawn at random")
	b := p.New()
	for range 20 {
		assert.LessOrEqual(t, b.Next(), time.Second, "capped at Max")
	}
}

func TestBounds(t *testing.T) {
	b := NewBounds(time.Second)
	assert.Equal(t, time.Second, b.Next(false), "the first attempt is full")
	assert.Equal(t, 250*time.Millisecond, b.Next(true), "after a timeout: a quarter")
	assert.Equal(t, 500*time.Millisecond, b.Next(true))
	assert.Equal(t, time.Second, b.Next(true), "back to full")
	assert.Equal(t, 250*time.Millisecond, b.Next(true))
	assert.Equal(t, time.Second, b.Next(false), "an attempt that failed otherwise resets it")
	small := NewBounds(200 * time.Millisecond)
	small.Next(false)
	assert.Equal(t, 100*time.Millisecond, small.Next(true), "at least 100 ms")
}
