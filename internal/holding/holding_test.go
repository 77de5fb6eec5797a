package holding_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/concordkit/concord/internal/holding"
	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/testcluster"
)

var cluster *testcluster.Cluster

func TestMain(m *testing.M) { testcluster.Main(m, &cluster) }

// An expiry ends the holding's context before its release runs, and a
// release that fails is made again after a pause (retry.RecoverPolicy), not
// at once in a loop.
func TestExpiryReleaseIsPaced(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	k, err := leasekeeper.New(ctx, cluster.Client(), leasekeeper.WithTTL(cluster.LeaseTTL(2*time.Second)))
	require.NoError(t, err)
	defer k.Close(context.Background())
	l, err := k.Lease(ctx)
	require.NoError(t, err)
	errLost := errors.New("lost")
	var c holding.Core
	c.Init(cluster.Client(), l, k.TTL(), "/test/holding/expiry", 1, func(cause error) error { return errors.Join(errLost, cause) })
	defer c.StopFollowing()

	calls := make(chan time.Time, 1000)
	var n atomic.Int32
	expired := errors.New("expired")
	c.ExpireAfter(time.Millisecond, expired, func() error {
		require.ErrorIs(t, context.Cause(c.Context()), expired, "released before the context ended")
		calls <- time.Now()
		if n.Add(1) < 3 {
			return errors.New("refused")
		}
		return nil
	})
	var at []time.Time
	for range 3 {
		select {
		case ts := <-calls:
			at = append(at, ts)
		case <-ctx.Done():
			t.Fatal("the release was not made three times")
		}
	}
	require.ErrorIs(t, context.Cause(c.Context()), errLost)
	// RecoverPolicy waits at least 25 ms (50 ms, jittered) between tries.
	require.GreaterOrEqual(t, at[2].Sub(at[0]), 40*time.Millisecond, "failed releases were retried without a pause")
}
