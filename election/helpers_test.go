package election_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/testcluster"
)

var cluster *testcluster.Cluster

func TestMain(m *testing.M) { testcluster.Main(m, &cluster) }

func ctxT(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// process is one simulated process: its own connection and keeper.
type process struct {
	cli *clientv3.Client
	k   *leasekeeper.Keeper
}

// newProcess makes a process whose lease has the given TTL. Its keeper's
// margin is TTL/4, wider than the default TTL/10: under the race detector on
// a loaded machine, timers fire late, and the safety tests assert that a
// holder learns of its loss before the server can expire its lease.
func newProcess(t *testing.T, c *testcluster.Cluster, ttl time.Duration, opts ...testcluster.ClientOption) *process {
	t.Helper()
	cli, err := c.NewClient(opts...)
	require.NoError(t, err)
	ttl = c.LeaseTTL(ttl)
	k, err := leasekeeper.New(ctxT(t, 10*time.Second), cli, leasekeeper.WithTTL(ttl), leasekeeper.WithMargin(ttl/4))
	require.NoError(t, err)
	t.Cleanup(func() {
		c.RestoreClient(cli)
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = k.Close(cctx)
		_ = cli.Close()
	})
	return &process{cli: cli, k: k}
}

// assertNoKeys checks, at cleanup, that nothing is left under prefix.
func assertNoKeys(t *testing.T, c *testcluster.Cluster, prefix string) {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// Leases of closed keepers were revoked; anything left is a leak.
		resp, err := c.Admin().Get(ctx, prefix, clientv3.WithPrefix())
		if err != nil {
			t.Errorf("read keys left under %q: %v", prefix, err)
			return
		}
		for _, kv := range resp.Kvs {
			t.Errorf("key left behind: %s (lease %x)", kv.Key, kv.Lease)
		}
	})
}

// waitCount waits, on a watch, until exactly n keys exist under prefix.
func waitCount(t *testing.T, c *testcluster.Cluster, prefix string, n int64, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	wch := c.Admin().Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	<-wch // created: events from here on are not missed by the read below
	for {
		resp, err := c.Admin().Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		require.NoError(t, err)
		if resp.Count == n {
			return
		}
		select {
		case _, ok := <-wch:
			if !ok {
				t.Fatalf("%d keys under %q not reached within %v (have %d)", n, prefix, d, resp.Count)
			}
		case <-ctx.Done():
			t.Fatalf("%d keys under %q not reached within %v (have %d)", n, prefix, d, resp.Count)
		}
	}
}

type result[T any] struct {
	v   T
	err error
	at  time.Time
}

func async[T any](fn func() (T, error)) <-chan result[T] {
	ch := make(chan result[T], 1)
	go func() {
		v, err := fn()
		ch <- result[T]{v, err, time.Now()}
	}()
	return ch
}

func recv[T any](t *testing.T, ch <-chan result[T], d time.Duration) result[T] {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(d):
		t.Fatalf("no result within %v", d)
		panic("unreachable")
	}
}

func notYet[T any](t *testing.T, ch <-chan result[T], what string) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("%s returned early: %v, %v", what, r.v, r.err)
	default:
	}
}
