package cron_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/cron"
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

type process struct {
	cli *clientv3.Client
	k   *leasekeeper.Keeper
}

func newProcess(t *testing.T, c *testcluster.Cluster, ttl time.Duration, opts ...leasekeeper.Option) *process {
	t.Helper()
	cli, err := c.NewClient()
	require.NoError(t, err)
	k, err := leasekeeper.New(ctxT(t, 10*time.Second), cli, append([]leasekeeper.Option{leasekeeper.WithTTL(c.LeaseTTL(ttl))}, opts...)...)
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

// cleanupName purges the scheduler's records and the test's own keys at the
// end, then checks that nothing is left under name.
func cleanupName(t *testing.T, c *testcluster.Cluster, name string) {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := cron.Delete(ctx, c.Admin(), name); err != nil {
			t.Errorf("purge: %v", err)
		}
		if _, err := c.Admin().Delete(ctx, name+"/ledger/", clientv3.WithPrefix()); err != nil {
			t.Errorf("delete ledger: %v", err)
		}
		resp, err := c.Admin().Get(ctx, name, clientv3.WithPrefix())
		if err != nil {
			t.Errorf("read keys left under %q: %v", name, err)
			return
		}
		for _, kv := range resp.Kvs {
			t.Errorf("key left behind: %s (lease %x)", kv.Key, kv.Lease)
		}
	})
}

// runScheduler runs s until the test ends (or stop is called) and returns a
// function that stops it and returns Run's error.
func runScheduler(t *testing.T, s *cron.Scheduler) func() error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var err error
	stopped := false
	stop := func() error {
		if !stopped {
			stopped = true
			cancel()
			select {
			case err = <-done:
			case <-time.After(15 * time.Second):
				t.Errorf("scheduler did not stop")
			}
		}
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func recvT[T any](t *testing.T, ch <-chan T, d time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(d):
		t.Fatalf("no %s within %v", what, d)
		panic("unreachable")
	}
}

// readLedger reads the ledger entries written under ledger, keyed
// <unix second>/<rest>, and returns them by second with the first and last
// second seen.
func readLedger(t *testing.T, ctx context.Context, c *testcluster.Cluster, ledger string) (bySec map[int64][]string, lo, hi int64) {
	t.Helper()
	resp, err := c.Admin().Get(ctx, ledger, clientv3.WithPrefix())
	require.NoError(t, err)
	bySec = map[int64][]string{}
	for _, kv := range resp.Kvs {
		rest := strings.TrimPrefix(string(kv.Key), ledger)
		sec, err := strconv.ParseInt(rest[:strings.IndexByte(rest, '/')], 10, 64)
		require.NoError(t, err)
		bySec[sec] = append(bySec[sec], rest)
		if lo == 0 || sec < lo {
			lo = sec
		}
		hi = max(hi, sec)
	}
	return bySec, lo, hi
}
