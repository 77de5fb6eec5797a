package retry

import (
	"context"
	"errors"
	"fmt"
	"testing"

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
