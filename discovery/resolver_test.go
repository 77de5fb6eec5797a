package discovery_test

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/concordkit/concord/discovery"
	"github.com/concordkit/concord/leasekeeper"
)

// instance is one process serving gRPC and registered in discovery, with an
// etcd client of its own so that it can be cut off.
type instance struct {
	id    string
	cli   *clientv3.Client
	k     *leasekeeper.Keeper
	reg   *discovery.Registration
	srv   *grpc.Server
	calls atomic.Int64
	wg    sync.WaitGroup
}

func startInstance(t *testing.T, svc, id string) *instance {
	t.Helper()
	ctx := ctxT(t, 10*time.Second)
	in := &instance{id: id}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	in.srv = grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		in.calls.Add(1)
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(in.srv, health.NewServer())
	in.wg.Go(func() { _ = in.srv.Serve(lis) })
	in.cli, err = cluster.NewClient()
	require.NoError(t, err)
	in.k, err = leasekeeper.New(ctx, in.cli, leasekeeper.WithTTL(2*time.Second))
	require.NoError(t, err)
	in.reg, err = discovery.Register(ctx, in.k, svc, id, lis.Addr().String(), map[string]string{"pid": id})
	require.NoError(t, err)
	// Whatever the test did, nothing of the instance outlives it.
	t.Cleanup(func() {
		in.srv.Stop()
		in.wg.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = in.reg.Deregister(ctx)
		_ = in.k.Close(ctx)
		_ = in.cli.Close()
	})
	return in
}

// stop shuts the instance down cleanly: deregistered, then stopped.
func (in *instance) stop(t *testing.T) {
	t.Helper()
	ctx := ctxT(t, 5*time.Second)
	assert.NoError(t, in.reg.Deregister(ctx))
	assert.NoError(t, in.k.Close(ctx))
	in.srv.GracefulStop()
	in.wg.Wait()
	_ = in.cli.Close()
}

// kill makes the instance die the way a crashed process does, as far as
// etcd can tell: its server stops and its etcd traffic stops, so its record
// goes only when its lease expires.
// With crash, the server drops its connections at once, failing the calls
// in flight on it; otherwise it lets them finish (a process shutting down
// without deregistering).
func (in *instance) kill(t *testing.T, crash bool) {
	t.Helper()
	cluster.CutClient(in.cli)
	if crash {
		in.srv.Stop()
	} else {
		in.srv.GracefulStop()
	}
	in.wg.Wait()
}

// bury releases what a killed instance still holds in this process: it
// never reaches etcd again.
func (in *instance) bury(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_ = in.reg.Deregister(ctx)
	_ = in.k.Close(ctx)
	_ = in.cli.Close()
}

// TestGRPCResolverServesThroughChurn: a gRPC client dialing concord:///svc
// keeps making calls while instances start, die (their records go by lease
// expiry) and restart; calls spread over the live instances. When instances
// stop serving gracefully every call succeeds; when they crash, only the
// calls in flight on the crashed server fail (at most one per caller).
func TestGRPCResolverServesThroughChurn(t *testing.T) {
	t.Run("graceful", func(t *testing.T) { testChurn(t, false) })
	t.Run("crash", func(t *testing.T) { testChurn(t, true) })
}

func testChurn(t *testing.T, crash bool) {
	const callers = 4
	svc := serviceFor(t)
	ctx := ctxT(t, 90*time.Second)
	a := startInstance(t, svc, "a")
	b := startInstance(t, svc, "b")

	conn, err := grpc.NewClient(discovery.Scheme+"://"+svc,
		grpc.WithResolvers(discovery.NewResolverBuilder(cluster.Client())),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)

	var ok, failed, wrongCode atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	halt := sync.OnceFunc(func() { close(stop); wg.Wait() })
	t.Cleanup(halt) // also when the test fails half-way
	for range callers {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				_, err := hc.Check(cctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
				cancel()
				if err != nil {
					if status.Code(err) != codes.Unavailable {
						wrongCode.Add(1)
					}
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				} else {
					ok.Add(1)
				}
			}
		})
	}
	// waitCalls waits until each given instance has served n more calls.
	waitCalls := func(n int64, ins ...*instance) {
		t.Helper()
		from := make([]int64, len(ins))
		for i, in := range ins {
			from[i] = in.calls.Load()
		}
		deadline := time.After(20 * time.Second)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < len(ins); {
			if ins[i].calls.Load()-from[i] >= n {
				i++
				continue
			}
			select {
			case <-tick.C:
			case <-deadline:
				t.Fatalf("instance %s served %d calls, want %d more", ins[i].id, ins[i].calls.Load()-from[i], n)
			}
		}
	}
	w, err := discovery.Watch(ctx, cluster.Client(), svc)
	require.NoError(t, err)
	defer w.Close()
	waitIDs := func(want ...string) {
		t.Helper()
		match := func(l []discovery.Instance) bool { return fmt.Sprint(ids(l)) == fmt.Sprint(want) }
		if l, _ := w.Instances(); match(l) {
			return
		}
		waitFor(t, w.Changes(), 10*time.Second, match)
	}

	waitCalls(50, a, b) // balanced over both
	c := startInstance(t, svc, "c")
	waitCalls(50, a, b, c) // a new instance takes its share

	// a dies: its record goes with its lease, within the TTL.
	killed := time.Now()
	a.kill(t, crash)
	waitIDs("b", "c")
	gone := time.Since(killed)
	t.Logf("a's record dropped %v after its death", gone)
	assert.Less(t, gone, 2*time.Second+2*time.Second) // TTL + the server's 500 ms expiry sweep + slack
	a.bury(t)
	waitCalls(50, b, c)

	// a comes back (a new process, a new port, the same ID).
	a2 := startInstance(t, svc, "a")
	waitIDs("a", "b", "c")
	waitCalls(50, a2, b, c)

	// b and c die together; a2 alone serves.
	b.kill(t, crash)
	c.kill(t, crash)
	waitIDs("a")
	b.bury(t)
	c.bury(t)
	waitCalls(50, a2)

	halt()
	a2.stop(t)
	t.Logf("%d calls succeeded, %d failed", ok.Load(), failed.Load())
	if crash {
		assert.LessOrEqual(t, failed.Load(), int64(3*callers), "first failure: %v", firstErr.Load())
		assert.Zero(t, wrongCode.Load(), "first failure: %v", firstErr.Load())
	} else {
		assert.Zero(t, failed.Load(), "first failure: %v", firstErr.Load())
	}
	assert.Positive(t, ok.Load())
}

// WithServiceConfig replaces round robin: with pick_first every call goes to
// one instance.
func TestResolverServiceConfig(t *testing.T) {
	svc := serviceFor(t)
	ctx := ctxT(t, 30*time.Second)
	a := startInstance(t, svc, "a")
	b := startInstance(t, svc, "b")
	conn, err := grpc.NewClient(discovery.Scheme+"://"+svc,
		grpc.WithResolvers(discovery.NewResolverBuilder(cluster.Client(),
			discovery.WithServiceConfig(`{"loadBalancingConfig":[{"pick_first":{}}]}`))),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	for range 100 {
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
		require.NoError(t, err)
	}
	served := []int64{a.calls.Load(), b.calls.Load()}
	assert.Contains(t, [][]int64{{100, 0}, {0, 100}}, served)
	a.stop(t)
	b.stop(t)
}
