package pubsub_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/concordkit/concord/pubsub"
)

// countingClient returns a client that counts its unary RPCs and the watch
// streams it creates.
func countingClient(t *testing.T) (*clientv3.Client, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	cfg := cluster.ClientConfig()
	cfg.DialOptions = append(cfg.DialOptions, grpc.WithChainUnaryInterceptor(
		func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			n.Add(1)
			return invoker(ctx, method, req, reply, cc, opts...)
		}))
	cli, err := clientv3.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = cli.Close() })
	return cli, &n
}

// TestRoundTrips checks the cost the package doc states.
func TestRoundTrips(t *testing.T) {
	topic := topicFor(t, cluster)
	ctx := ctxT(t, 10*time.Second)
	cli, rpcs := countingClient(t)
	h := newHub(t, cli)

	// Warm the client's connection (auth, first dial) out of the count.
	_, err := cli.Get(ctx, "warm-up")
	require.NoError(t, err)

	cost := func(f func()) int64 {
		t.Helper()
		before := rpcs.Load()
		f()
		return rpcs.Load() - before
	}
	var firstRev int64
	assert.Equal(t, int64(1), cost(func() { firstRev = publishN(t, h, topic, 1)[0] }), "first publish to a new topic")
	assert.Equal(t, int64(1), cost(func() { publishN(t, h, topic, 1) }), "publish with a current head")

	// Another Hub moved the head: one more round trip for the conflict.
	publishN(t, newHub(t, cluster.Client()), topic, 1)
	assert.Equal(t, int64(2), cost(func() { publishN(t, h, topic, 1) }), "publish after another publisher")

	var first *pubsub.Subscription
	assert.Equal(t, int64(0), cost(func() { first = subscribe(t, h, topic, pubsub.FromLatest()) }), "first subscription: a watch, no unary request")
	assert.Equal(t, int64(0), cost(func() { subscribe(t, h, topic, pubsub.FromLatest()) }), "subscription to a watched topic")
	assert.Equal(t, int64(2), cost(func() { subscribe(t, h, topic, pubsub.FromRevision(firstRev)) }), "from a revision: ring read + head before the revision")
	assert.Equal(t, int64(1), cost(func() { subscribe(t, h, topic, pubsub.FromOldest()) }), "from the oldest: ring read")

	rev := publishN(t, newHub(t, cluster.Client()), topic, 1)[0]
	// The watch's member may have lagged the publishes made just before it
	// was created, so earlier messages can come first.
	assert.Equal(t, int64(0), cost(func() {
		for nextMsg(t, first).Rev != rev {
		}
	}), "delivery")
	assert.Equal(t, int64(1), h.Stats().WatchesOpened)
}
