package leasekeeper_test

import (
	"context"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc"

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

func newKeeper(t *testing.T, cli *clientv3.Client, opts ...leasekeeper.Option) *leasekeeper.Keeper {
	t.Helper()
	k, err := leasekeeper.New(ctxT(t, 10*time.Second), cli, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = k.Close(context.Background()) })
	return k
}

// next returns the next event with a deadline.
func next(t *testing.T, ch <-chan leasekeeper.Event, d time.Duration) leasekeeper.Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		require.True(t, ok, "subscription closed")
		return ev
	case <-time.After(d):
		t.Fatalf("no state change within %v", d)
		return leasekeeper.Event{}
	}
}

func leaseCount(t *testing.T) int {
	t.Helper()
	resp, err := cluster.Admin().Leases(ctxT(t, 5*time.Second))
	require.NoError(t, err)
	return len(resp.Leases)
}

func TestBadOptions(t *testing.T) {
	before := leaseCount(t)
	for _, ttl := range []time.Duration{0, -time.Second, 1500 * time.Millisecond} {
		_, err := leasekeeper.New(ctxT(t, 5*time.Second), cluster.Client(), leasekeeper.WithTTL(ttl))
		require.ErrorIs(t, err, leasekeeper.ErrInvalidTTL, "ttl %v", ttl)
	}
	_, err := leasekeeper.New(ctxT(t, 5*time.Second), cluster.Client(), leasekeeper.WithTTL(2*time.Second), leasekeeper.WithMargin(time.Second))
	require.ErrorContains(t, err, "leasekeeper: margin")
	_, err = leasekeeper.New(ctxT(t, 5*time.Second), nil)
	require.Error(t, err)
	assert.Equal(t, before, leaseCount(t), "bad input granted a lease")
}

func TestCloseRevokes(t *testing.T) {
	ctx := ctxT(t, 10*time.Second)
	k, err := leasekeeper.New(ctx, cluster.Client(), leasekeeper.WithTTL(5*time.Second))
	require.NoError(t, err)
	events, _ := k.Subscribe()
	require.Equal(t, leasekeeper.Connected, next(t, events, time.Second).State)

	l, err := k.Lease(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(1), l.Generation())
	_, err = cluster.Client().Put(ctx, t.Name(), "x", clientv3.WithLease(l.ID()))
	require.NoError(t, err)
	assert.WithinDuration(t, time.Now().Add(5*time.Second), k.SafeUntil(), 5*time.Second)

	require.NoError(t, k.Close(ctx))
	require.NoError(t, k.Close(ctx), "Close is idempotent")
	require.ErrorIs(t, l.Err(), leasekeeper.ErrLeaseLost)
	require.ErrorIs(t, context.Cause(l.Context()), leasekeeper.ErrLeaseLost)
	resp, err := cluster.Client().Get(ctx, t.Name())
	require.NoError(t, err)
	require.Empty(t, resp.Kvs, "Close revoked the lease and its key")
	require.Equal(t, leasekeeper.Closed, next(t, events, time.Second).State)
	_, ok := <-events
	require.False(t, ok, "subscription closed after Closed")
	_, err = k.Lease(ctx)
	require.ErrorIs(t, err, leasekeeper.ErrClosed)
}

// A cut-off keeper goes Suspended then Lost, and Lost (its lease's context
// canceled) comes before the server deletes a key attached to the lease, as
// another client sees it. Repeated, four keepers at a time.
func TestLostBeforeServerExpiry(t *testing.T) {
	const rounds, parallel = 5, 4
	for round := range rounds {
		var wg sync.WaitGroup
		for p := range parallel {
			wg.Go(func() { lostBeforeExpiry(t, round*parallel+p) })
		}
		wg.Wait()
		if t.Failed() {
			return
		}
	}
}

func lostBeforeExpiry(t *testing.T, n int) {
	ctx := ctxT(t, 20*time.Second)
	cli, err := cluster.NewClient()
	if !assert.NoError(t, err) {
		return
	}
	defer cli.Close()
	k, err := leasekeeper.New(ctx, cli, leasekeeper.WithTTL(cluster.LeaseTTL(time.Second)))
	if !assert.NoError(t, err) {
		return
	}
	defer k.Close(context.Background())
	events, _ := k.Subscribe()
	<-events // Connected
	l := k.Current()
	key := t.Name() + "/" + string(rune('a'+n))
	put, err := cli.Put(ctx, key, "x", clientv3.WithLease(l.ID()))
	if !assert.NoError(t, err) {
		return
	}

	// The observer watches from a known revision on a client of its own.
	deleted := make(chan time.Time, 1)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := cluster.Admin().Watch(wctx, key, clientv3.WithRev(put.Header.Revision+1))
	go func() {
		for resp := range w {
			for _, ev := range resp.Events {
				if ev.Type == clientv3.EventTypeDelete {
					deleted <- time.Now()
					return
				}
			}
		}
	}()

	// Cut only after renewals have moved the deadline (the grant's deadline
	// alone would not test the renewal path), at a point that varies across
	// the renewal cycle.
	waitRenewals(t, k, 1+n%3)
	cluster.CutClient(cli)
	defer cluster.RestoreClient(cli)
	var lostAt time.Time
	sawSuspended := false
	for lostAt.IsZero() {
		select {
		case ev := <-events:
			switch ev.State {
			case leasekeeper.Suspended:
				sawSuspended = true
			case leasekeeper.Lost:
				lostAt = ev.At
				assert.ErrorIs(t, ev.Err, leasekeeper.ErrLeaseLost)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("keeper %d: no Lost within 5 s of the cut", n)
			return
		}
	}
	assert.True(t, sawSuspended, "keeper %d: Suspended precedes Lost", n)
	assert.Error(t, l.Context().Err(), "the lease's context is canceled at Lost")
	select {
	case delAt := <-deleted:
		t.Logf("keeper %d: Lost %v before the key was deleted", n, delAt.Sub(lostAt))
		assert.True(t, lostAt.Before(delAt), "keeper %d: Lost at %v, key deleted at %v", n, lostAt, delAt)
	case <-time.After(5 * time.Second):
		t.Errorf("keeper %d: server never deleted the key", n)
	}
}

// waitRenewals waits until the keeper's safe deadline has moved n times.
func waitRenewals(t *testing.T, k *leasekeeper.Keeper, n int) {
	t.Helper()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	deadline := time.After(10 * time.Second)
	last := k.SafeUntil()
	for n > 0 {
		select {
		case <-tick.C:
			if now := k.SafeUntil(); now.After(last) {
				last = now
				n--
			}
		case <-deadline:
			t.Errorf("no renewal within 10 s")
			return
		}
	}
}

func TestReconnectedAfterCut(t *testing.T) {
	ctx := ctxT(t, 20*time.Second)
	cli, err := cluster.NewClient()
	require.NoError(t, err)
	k := newKeeper(t, cli, leasekeeper.WithTTL(cluster.LeaseTTL(time.Second)))
	events, _ := k.Subscribe()
	require.Equal(t, leasekeeper.Connected, next(t, events, time.Second).State)
	first := k.Current()

	cluster.CutClient(cli)
	for ev := next(t, events, 5*time.Second); ev.State != leasekeeper.Lost; ev = next(t, events, 5*time.Second) {
		require.Equal(t, leasekeeper.Suspended, ev.State)
	}
	// No lease is live until the client is back: Lease waits, and returns
	// its ctx's cause when that ends first.
	errStop := errors.New("stop waiting")
	cctx, cancel := context.WithCancelCause(ctx)
	cancel(errStop)
	_, err = k.Lease(cctx)
	require.ErrorIs(t, err, errStop)
	cluster.RestoreClient(cli)
	ev := next(t, events, 10*time.Second)
	require.Equal(t, leasekeeper.Reconnected, ev.State)
	second, err := k.Lease(ctx)
	require.NoError(t, err)
	assert.NotEqual(t, first.ID(), second.ID())
	assert.Equal(t, uint64(2), second.Generation())
	assert.Equal(t, ev.Lease, second.ID())
	assert.Error(t, first.Err(), "the old generation stays lost")
	assert.NoError(t, second.Err())
}

func TestServerRevokeIsLostAtOnce(t *testing.T) {
	ctx := ctxT(t, 20*time.Second)
	k := newKeeper(t, cluster.Client(), leasekeeper.WithTTL(10*time.Second))
	events, _ := k.Subscribe()
	next(t, events, time.Second)
	l := k.Current()
	require.NoError(t, cluster.RevokeLease(ctx, l.ID()))
	// The next renewal (within TTL/3) learns the lease is gone: far sooner
	// than the 10 s deadline.
	ev := next(t, events, 5*time.Second)
	require.Equal(t, leasekeeper.Lost, ev.State)
	require.ErrorIs(t, l.Err(), leasekeeper.ErrLeaseLost)
	require.Contains(t, l.Err().Error(), "gone")
	require.Equal(t, leasekeeper.Reconnected, next(t, events, 5*time.Second).State)
}

// Lease(ctx) waits through a loss for the next generation.
func TestLeaseWaitsForNextGeneration(t *testing.T) {
	ctx := ctxT(t, 20*time.Second)
	k := newKeeper(t, cluster.Client(), leasekeeper.WithTTL(10*time.Second))
	events, _ := k.Subscribe()
	next(t, events, time.Second)
	require.NoError(t, cluster.RevokeLease(ctx, k.Current().ID()))
	require.Equal(t, leasekeeper.Lost, next(t, events, 5*time.Second).State)
	l, err := k.Lease(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(2), l.Generation())
}

// A leader change and a member restart do not lose the lease.
func TestSurvivesMemberRestart(t *testing.T) {
	c := testcluster.New(t)
	ctx := ctxT(t, 30*time.Second)
	ttl := c.FailoverTTL()
	k := newKeeper(t, c.Client(), leasekeeper.WithTTL(ttl))
	events, _ := k.Subscribe()
	next(t, events, time.Second)
	l := k.Current()

	lead, err := c.WaitLeader(ctx)
	require.NoError(t, err)
	require.NoError(t, c.Stop(lead))
	_, err = c.WaitLeader(ctx)
	require.NoError(t, err)
	require.NoError(t, c.Restart(ctx, lead))
	follower := (lead + 1) % c.Size()
	require.NoError(t, c.Kill(follower))
	require.NoError(t, c.Restart(ctx, follower))

	// Stay up for two full TTLs after the faults: a renewal must succeed each
	// third of a TTL, and the lease must never be declared lost.
	deadline := time.After(2 * ttl)
	for {
		select {
		case ev := <-events:
			require.NotEqual(t, leasekeeper.Lost, ev.State, "lost on a member restart: %v", ev.Err)
		case <-deadline:
			require.NoError(t, l.Err())
			resp, err := c.Client().TimeToLive(ctx, l.ID())
			require.NoError(t, err)
			require.Positive(t, resp.TTL)
			return
		}
	}
}

// etcd raises a TTL below its minimum (ceil(1.5 × election timeout)); New
// refuses to hold a lease longer than asked and revokes what was granted.
func TestBelowServerMinimumTTL(t *testing.T) {
	c := testcluster.New(t, testcluster.WithSize(1), testcluster.WithTiming(100, 1000))
	ctx := ctxT(t, 10*time.Second)
	_, err := leasekeeper.New(ctx, c.Client(), leasekeeper.WithTTL(time.Second))
	require.ErrorIs(t, err, leasekeeper.ErrInvalidTTL)
	require.ErrorContains(t, err, "granted 2s")
	resp, err := c.Admin().Leases(ctx)
	require.NoError(t, err)
	require.Empty(t, resp.Leases, "the over-long lease was revoked")
	k, err := leasekeeper.New(ctx, c.Client(), leasekeeper.WithTTL(2*time.Second))
	require.NoError(t, err)
	require.NoError(t, k.Close(ctx))
}

func TestStateMetric(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	ctx := ctxT(t, 20*time.Second)
	k, err := leasekeeper.New(ctx, cluster.Client(), leasekeeper.WithTTL(10*time.Second), leasekeeper.WithMeterProvider(mp))
	require.NoError(t, err)
	events, _ := k.Subscribe()
	next(t, events, time.Second)
	require.NoError(t, cluster.RevokeLease(ctx, k.Current().ID()))
	require.Equal(t, leasekeeper.Lost, next(t, events, 5*time.Second).State)
	require.Equal(t, leasekeeper.Reconnected, next(t, events, 5*time.Second).State)
	require.NoError(t, k.Close(ctx))

	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(ctx, &rm))
	counts := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "concord.lease.state_changes" {
				continue
			}
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				s, _ := dp.Attributes.Value("state")
				counts[s.AsString()] += dp.Value
			}
		}
	}
	assert.Equal(t, map[string]int64{"Connected": 1, "Lost": 1, "Reconnected": 1, "Closed": 1}, counts)
}

// A recipe told by etcd that the lease is gone invalidates it: the keeper
// declares it lost at once and grants the next generation, without waiting
// for its next renewal.
func TestInvalidate(t *testing.T) {
	ctx := ctxT(t, 20*time.Second)
	k := newKeeper(t, cluster.Client(), leasekeeper.WithTTL(30*time.Second))
	events, _ := k.Subscribe()
	next(t, events, time.Second)
	l := k.Current()
	require.NoError(t, cluster.RevokeLease(ctx, l.ID()))
	_, err := cluster.Client().Put(ctx, t.Name(), "x", clientv3.WithLease(l.ID()))
	require.Error(t, err, "etcd refuses the revoked lease")

	k.Invalidate(l, err)
	// Renewals are 10 s apart at this TTL: a Lost within 2 s is Invalidate's.
	ev := next(t, events, 2*time.Second)
	require.Equal(t, leasekeeper.Lost, ev.State)
	require.ErrorIs(t, l.Err(), leasekeeper.ErrLeaseLost)
	require.ErrorContains(t, l.Err(), "lease not found")
	require.Equal(t, leasekeeper.Reconnected, next(t, events, 2*time.Second).State)
	l2, err := k.Lease(ctx)
	require.NoError(t, err)
	require.NotEqual(t, l.ID(), l2.ID())

	k.Invalidate(l, err) // an old generation: nothing happens
	require.NoError(t, l2.Err())
}

// Renewals share one keep-alive stream: with etcd auth on, each new stream
// costs a login (clientv3 authenticates per stream), so a stream per renewal
// would make every renewal a password check on the server.
func TestRenewalsShareOneStream(t *testing.T) {
	c := testcluster.New(t, testcluster.WithSize(1), testcluster.WithAuth())
	ctx := ctxT(t, 20*time.Second)
	var streams atomic.Int64
	cfg := c.ClientConfig()
	cfg.DialOptions = append(cfg.DialOptions, grpc.WithChainStreamInterceptor(
		func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			if method == "/etcdserverpb.Lease/LeaseKeepAlive" {
				streams.Add(1)
			}
			return streamer(ctx, desc, cc, method, opts...)
		}))
	cli, err := clientv3.New(cfg)
	require.NoError(t, err)
	defer cli.Close()
	u, err := c.AddUser(ctx, "worker", "jobs/")
	require.NoError(t, err)
	cfg.Username, cfg.Password = u.Name, u.Password
	userCli, err := clientv3.New(cfg)
	require.NoError(t, err)
	defer userCli.Close()

	for _, cl := range []*clientv3.Client{cli, userCli} {
		before := streams.Load()
		k, err := leasekeeper.New(ctx, cl, leasekeeper.WithTTL(c.LeaseTTL(time.Second)))
		require.NoError(t, err)
		waitRenewals(t, k, 6)
		require.Equal(t, leasekeeper.Connected, k.State())
		require.NoError(t, k.Close(ctx))
		assert.Equal(t, int64(1), streams.Load()-before, "six renewals on one stream")
	}
}

// etcd 3.4 is refused before anything is granted (CONCORD_ETCD_34 names a
// 3.4 binary, such as Debian's etcd-server package's /usr/bin/etcd).
func TestRefusesEtcd34(t *testing.T) {
	bin := os.Getenv("CONCORD_ETCD_34")
	if bin == "" {
		t.Skip("CONCORD_ETCD_34 is not set")
	}
	c := testcluster.New(t, testcluster.WithBinary(bin))
	ctx := ctxT(t, 20*time.Second)
	_, err := leasekeeper.New(ctx, c.Client(), leasekeeper.WithTTL(5*time.Second))
	require.ErrorIs(t, err, leasekeeper.ErrUnsupported)
	require.ErrorContains(t, err, "etcd 3.4.")
	resp, err := c.Admin().Leases(ctx)
	require.NoError(t, err)
	require.Empty(t, resp.Leases, "nothing was granted")
}
