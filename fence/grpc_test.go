package fence_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/concordkit/concord/fence"
)

// The interceptors in front of a real gRPC server on loopback, with the
// standard health service as the fenced service.
func TestInterceptors(t *testing.T) {
	var reg fence.Register
	srv := grpc.NewServer(
		grpc.UnaryInterceptor(fence.UnaryServerInterceptor(&reg, nil)),
		grpc.StreamInterceptor(fence.StreamServerInterceptor(&reg, nil)),
	)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	cli := healthpb.NewHealthClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	check := func(ctx context.Context) error {
		_, err := cli.Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	require.NoError(t, check(fence.WithToken(ctx, 7)))
	require.NoError(t, check(fence.WithToken(fence.WithToken(ctx, 3), 7)), "a second token replaces the first")

	err = check(fence.WithToken(ctx, 6))
	require.Equal(t, codes.FailedPrecondition, status.Code(err))
	require.ErrorIs(t, fence.StatusErr(err), fence.ErrStale)
	require.Contains(t, fence.StatusErr(err).Error(), "token 6 for \"\", 7 already admitted")

	err = check(ctx)
	require.Equal(t, codes.InvalidArgument, status.Code(err))
	require.ErrorIs(t, fence.StatusErr(err), fence.ErrNoToken)
	require.NoError(t, fence.StatusErr(status.Error(codes.FailedPrecondition, "the service's own")))

	// A stream is checked when it opens.
	stream, err := cli.Watch(fence.WithToken(ctx, 5), &healthpb.HealthCheckRequest{})
	require.NoError(t, err)
	_, err = stream.Recv()
	require.ErrorIs(t, fence.StatusErr(err), fence.ErrStale)
	sctx, scancel := context.WithCancel(ctx)
	stream, err = cli.Watch(fence.WithToken(sctx, 8), &healthpb.HealthCheckRequest{})
	require.NoError(t, err)
	resp, err := stream.Recv()
	require.NoError(t, err)
	require.Equal(t, healthpb.HealthCheckResponse_SERVING, resp.Status)
	scancel()
	require.Equal(t, int64(8), reg.Highest(""))
}
