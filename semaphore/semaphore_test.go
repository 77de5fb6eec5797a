package semaphore_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/semaphore"
	"github.com/concordkit/concord/testcluster"
)

var cluster *testcluster.Cluster

func TestMain(m *testing.M) { testcluster.Main(m, &cluster) }

func ctxT(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func newClient(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := cluster.NewClient()
	require.NoError(t, err)
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

func newKeeper(t testing.TB, cli *clientv3.Client, ttl time.Duration) *leasekeeper.Keeper {
	t.Helper()
	k, err := leasekeeper.New(ctxT(t, 10*time.Second), cli, leasekeeper.WithTTL(cluster.LeaseTTL(ttl)))
	require.NoError(t, err)
	t.Cleanup(func() { _ = k.Close(context.Background()) })
	return k
}

// semName returns a name unique to the test; at the end of the test, after
// its keepers are closed, it removes the stored limit and checks that
// nothing is left under the name.
func semName(t testing.TB) string {
	t.Helper()
	name := "/test/" + strings.ReplaceAll(t.Name(), "/", "_")
	t.Cleanup(func() {
		ctx := ctxT(t, 5*time.Second)
		require.NoError(t, semaphore.Delete(ctx, cluster.Admin(), name))
		requireNoKeys(t, name)
	})
	return name
}

func requireNoKeys(t testing.TB, name string) {
	t.Helper()
	resp, err := cluster.Admin().Get(ctxT(t, 5*time.Second), name+"/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	require.NoError(t, err)
	var keys []string
	for _, kv := range resp.Kvs {
		keys = append(keys, string(kv.Key))
	}
	assert.Empty(t, keys, "keys left under %s", name)
}

// requests returns the number of permit requests in the queue.
func requests(t testing.TB, name string) int {
	t.Helper()
	info, err := semaphore.Inspect(ctxT(t, 5*time.Second), cluster.Admin(), name)
	require.NoError(t, err)
	return len(info.Holders) + len(info.Waiters)
}

func waitRequests(t testing.TB, name string, n int) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(10 * time.Second)
	for requests(t, name) != n {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("timed out waiting for %d requests in %s", n, name)
		}
	}
}

type result struct {
	p   *semaphore.Permit
	err error
}

func acquireAsync(ctx context.Context, s *semaphore.Semaphore, n int) <-chan result {
	ch := make(chan result, 1)
	go func() {
		p, err := s.Acquire(ctx, n)
		ch <- result{p, err}
	}()
	return ch
}

func recv(t testing.TB, ch <-chan result, d time.Duration) result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(d):
		t.Fatalf("no result within %v", d)
		return result{}
	}
}

func pending(t testing.TB, ch <-chan result) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("granted out of turn (err %v)", r.err)
	default:
	}
}

func TestBadInput(t *testing.T) {
	k := newKeeper(t, cluster.Client(), 2*time.Second)
	ctx := ctxT(t, 10*time.Second)
	for _, c := range []struct {
		s    *semaphore.Semaphore
		n    int
		want string
	}{
		{semaphore.New(k, "", 1), 1, "semaphore: invalid name"},
		{semaphore.New(k, "/a/.x", 1), 1, "semaphore: invalid name"},
		{semaphore.New(nil, "/a", 1), 1, "semaphore: nil keeper"},
		{semaphore.New(k, "/a", 0), 1, "semaphore: limit 0"},
		{semaphore.New(k, "/a", -3), 1, "semaphore: limit -3"},
		{semaphore.New(k, "/a", 2), 0, "semaphore: 0 permits"},
		{semaphore.New(k, "/a", 2), -1, "semaphore: -1 permits"},
		{semaphore.New(k, "/a", 2), 3, "more than the limit 2"},
		{semaphore.New(k, "/a", 2, semaphore.WithValue(strings.Repeat("v", 2<<20))), 1, "semaphore: value of"},
		{semaphore.New(k, "/a", 2, semaphore.WithMaxHold(-time.Millisecond)), 1, "semaphore: max hold -1ms: must not be negative"},
	} {
		_, err := c.s.Acquire(ctx, c.n)
		require.ErrorContains(t, err, c.want)
		_, err = c.s.TryAcquire(ctx, c.n)
		require.ErrorContains(t, err, c.want)
	}
	require.ErrorContains(t, semaphore.New(k, "/a", 2).SetLimit(ctx, 0), "semaphore: limit 0")
	requireNoKeys(t, "/a")
}

func TestAcquireRelease(t *testing.T) {
	name := semName(t)
	ctx := ctxT(t, 10*time.Second)
	cli := newClient(t)
	k := newKeeper(t, cli, 2*time.Second)
	s := semaphore.New(k, name, 3, semaphore.WithValue("worker-1"))

	p1, err := s.Acquire(ctx, 2)
	require.NoError(t, err)
	p2, err := s.TryAcquire(ctx, 1)
	require.NoError(t, err)
	require.Greater(t, p2.Token(), p1.Token())
	_, err = s.TryAcquire(ctx, 1)
	require.ErrorIs(t, err, semaphore.ErrNoPermits)
	require.Equal(t, 2, requests(t, name), "a refused TryAcquire left its key")

	info, err := semaphore.Inspect(ctx, cli, name)
	require.NoError(t, err)
	require.Equal(t, 3, info.Limit)
	require.Equal(t, 3, info.InUse)
	require.Len(t, info.Holders, 2)
	assert.Equal(t, "worker-1", info.Holders[0].Value)
	assert.Equal(t, 2, info.Holders[0].N)
	require.ErrorIs(t, semaphore.Delete(ctx, cli, name), semaphore.ErrInUse)

	resp, err := cli.Txn(ctx).If(p1.Guard()...).Then(clientv3.OpPut(name+"/data", "x")).Commit()
	require.NoError(t, err)
	require.True(t, resp.Succeeded)
	require.NoError(t, p1.Release(ctx))
	require.NoError(t, p1.Release(ctx))
	require.ErrorIs(t, context.Cause(p1.Context()), semaphore.ErrReleased)
	resp, err = cli.Txn(ctx).If(p1.Guard()...).Then(clientv3.OpPut(name+"/data", "y")).Commit()
	require.NoError(t, err)
	require.False(t, resp.Succeeded)
	_, err = cli.Delete(ctx, name+"/data")
	require.NoError(t, err)
	require.NoError(t, p2.Release(ctx))
}

func TestLimitMismatch(t *testing.T) {
	name := semName(t)
	ctx := ctxT(t, 10*time.Second)
	k := newKeeper(t, cluster.Client(), 2*time.Second)
	a := semaphore.New(k, name, 2)
	b := semaphore.New(k, name, 5)
	p, err := a.Acquire(ctx, 1)
	require.NoError(t, err)
	_, err = b.Acquire(ctx, 1)
	require.ErrorIs(t, err, semaphore.ErrLimitMismatch)
	require.Equal(t, 1, requests(t, name))

	// Growing the limit lets a waiter in at once.
	p2, err := a.Acquire(ctx, 1)
	require.NoError(t, err)
	ch := acquireAsync(ctx, a, 1)
	waitRequests(t, name, 3)
	pending(t, ch)
	require.NoError(t, b.SetLimit(ctx, 5))
	r := recv(t, ch, 5*time.Second)
	require.NoError(t, r.err)
	// a still expects 2.
	_, err = a.TryAcquire(ctx, 1)
	require.ErrorIs(t, err, semaphore.ErrLimitMismatch)
	p4, err := b.Acquire(ctx, 2)
	require.NoError(t, err)
	for _, p := range []*semaphore.Permit{p, p2, r.p, p4} {
		require.NoError(t, p.Release(ctx))
	}
}

// FIFO: a request for many permits is not overtaken by later small ones.
func TestFIFO(t *testing.T) {
	name := semName(t)
	ctx := ctxT(t, 10*time.Second)
	k := newKeeper(t, cluster.Client(), 2*time.Second)
	s := semaphore.New(k, name, 3)
	a, err := s.Acquire(ctx, 2)
	require.NoError(t, err)
	big := acquireAsync(ctx, s, 3)
	waitRequests(t, name, 2)
	small := acquireAsync(ctx, s, 1) // would fit beside a, but big asked first
	waitRequests(t, name, 3)
	pending(t, big)
	pending(t, small)
	_, err = s.TryAcquire(ctx, 1)
	require.ErrorIs(t, err, semaphore.ErrNoPermits)

	require.NoError(t, a.Release(ctx))
	rb := recv(t, big, 5*time.Second)
	require.NoError(t, rb.err)
	pending(t, small)
	require.NoError(t, rb.p.Release(ctx))
	rs := recv(t, small, 5*time.Second)
	require.NoError(t, rs.err)
	require.NoError(t, rs.p.Release(ctx))
}

func TestCanceledAcquireLeavesNoKey(t *testing.T) {
	name := semName(t)
	ctx := ctxT(t, 10*time.Second)
	k := newKeeper(t, cluster.Client(), 2*time.Second)
	s := semaphore.New(k, name, 1)
	p, err := s.Acquire(ctx, 1)
	require.NoError(t, err)
	wctx, cancel := context.WithCancel(ctx)
	ch := acquireAsync(wctx, s, 1)
	waitRequests(t, name, 2)
	cancel()
	r := recv(t, ch, 5*time.Second)
	require.ErrorIs(t, r.err, context.Canceled)
	require.Equal(t, 1, requests(t, name))
	require.NoError(t, p.Release(ctx))
}

func TestWaiterLeaseLost(t *testing.T) {
	name := semName(t)
	ctx := ctxT(t, 10*time.Second)
	k1 := newKeeper(t, newClient(t), 2*time.Second)
	k2 := newKeeper(t, newClient(t), 2*time.Second)
	p, err := semaphore.New(k1, name, 1).Acquire(ctx, 1)
	require.NoError(t, err)
	ch := acquireAsync(ctx, semaphore.New(k2, name, 1), 1)
	waitRequests(t, name, 2)
	require.NoError(t, cluster.RevokeLease(ctx, k2.Current().ID()))
	r := recv(t, ch, 5*time.Second)
	require.ErrorIs(t, r.err, semaphore.ErrLost)
	require.NoError(t, p.Release(ctx))
}

// Never more than limit permits out: 3 keepers × 8 goroutines asking for 1
// or 2 permits of 4, while one keeper's client is cut off mid-run (its
// permits count as out until their contexts are canceled, which must happen
// before the server hands them to anyone else).
func TestNeverOverLimit(t *testing.T) {
	name := semName(t)
	ctx := ctxT(t, 60*time.Second)
	const limit, keepers, goroutines, rounds = 4, 3, 8, 4
	var (
		inUse, peak atomic.Int64
		over        atomic.Int32
		granted     atomic.Int32
		wg          sync.WaitGroup
	)
	take := func(p *semaphore.Permit) func() {
		n := int64(p.N())
		if v := inUse.Add(n); v > limit {
			over.Add(1)
		} else {
			for old := peak.Load(); v > old && !peak.CompareAndSwap(old, v); old = peak.Load() {
			}
		}
		// Out until released or lost, whichever comes first.
		give := sync.OnceFunc(func() { inUse.Add(-n) })
		stop := context.AfterFunc(p.Context(), give)
		return func() { stop(); give() }
	}
	var cut *clientv3.Client
	cutOnce := sync.Once{}
	var cutLease atomic.Int64 // the cut keeper's lease at the cut
	for ki := range keepers {
		cli := newClient(t)
		if ki == 0 {
			cut = cli
		}
		k := newKeeper(t, cli, 2*time.Second)
		s := semaphore.New(k, name, limit)
		for g := range goroutines {
			wg.Go(func() {
				for r := range rounds {
					p, err := s.Acquire(ctx, 1+(g+r)%2)
					if err != nil {
						if ki == 0 && errors.Is(err, semaphore.ErrLost) {
							continue // the cut keeper's requests die with its lease
						}
						t.Errorf("acquire: %v", err)
						return
					}
					done := take(p)
					if granted.Add(1) >= 10 && ki == 0 {
						cutOnce.Do(func() {
							cutLease.Store(int64(p.Lease()))
							cluster.CutClient(cut)
						})
					}
					// Work a little while, or until the context says stop.
					// A holder on the cut lease then holds on for as long as
					// it believes it may: only its context tells it to stop.
					select {
					case <-p.Context().Done():
					case <-time.After(time.Duration(1+g%3) * time.Millisecond):
						if int64(p.Lease()) == cutLease.Load() {
							<-p.Context().Done()
						}
					}
					done()
					if err := p.Release(ctx); err != nil && ki != 0 {
						t.Errorf("release: %v", err)
					}
				}
			})
		}
	}
	// Restore the cut client once the server has expired its lease (no
	// event tells that; poll), so that its goroutines can finish with a new
	// lease. By then the other keepers have been granted its permits.
	restored := make(chan struct{})
	go func() {
		defer close(restored)
		defer cluster.RestoreClient(cut)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
			case <-ctx.Done():
				return
			}
			id := cutLease.Load()
			if id == 0 {
				continue
			}
			resp, err := cluster.Admin().TimeToLive(ctx, clientv3.LeaseID(id))
			if err == nil && resp.TTL == -1 {
				return
			}
		}
	}()
	wg.Wait()
	<-restored
	require.Zero(t, over.Load(), "more than %d permits out (peak %d)", limit, peak.Load())
	require.Positive(t, granted.Load())
	t.Logf("granted %d, peak %d of %d", granted.Load(), peak.Load(), limit)
}

// An Acquire on a client cut off from etcd returns when its context ends,
// with its cause: neither the start of its watch nor the withdrawal of a
// request that was never sent keeps a fresh Semaphore value waiting, and a
// value used before (its request sent, and stalled) withdraws it until the
// lease is lost. After the client is restored the same values work.
func TestAcquireCutOffReturnsOnTime(t *testing.T) {
	name := semName(t)
	usedName := semName(t) + "_used"
	ctx := ctxT(t, 30*time.Second)
	cli := newClient(t)
	k := newKeeper(t, cli, 2*time.Second)
	fresh := semaphore.New(k, name, 1)
	used := semaphore.New(k, usedName, 1)
	t.Cleanup(func() {
		cctx := ctxT(t, 5*time.Second)
		require.NoError(t, semaphore.Delete(cctx, cluster.Admin(), usedName))
		requireNoKeys(t, usedName)
	})
	p, err := semaphore.New(newKeeper(t, newClient(t), 5*time.Second), name, 1).Acquire(ctx, 1)
	require.NoError(t, err)
	up, err := used.Acquire(ctx, 1)
	require.NoError(t, err)
	require.NoError(t, up.Release(ctx))

	cluster.CutClient(cli)
	restored := false
	defer func() {
		if !restored {
			cluster.RestoreClient(cli)
		}
	}()
	for _, s := range []*semaphore.Semaphore{fresh, used} {
		actx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		select {
		case r := <-acquireAsync(actx, s, 1):
			require.ErrorIs(t, r.err, context.DeadlineExceeded)
		case <-time.After(3 * time.Second):
			t.Fatal("Acquire on a cut-off client did not return in time")
		}
		cancel()
	}

	cluster.RestoreClient(cli)
	restored = true
	ch := acquireAsync(ctx, fresh, 1)
	waitRequests(t, name, 2)
	require.NoError(t, p.Release(ctx))
	r := recv(t, ch, 10*time.Second)
	require.NoError(t, r.err)
	require.NoError(t, r.p.Release(ctx))
	up, err = used.Acquire(ctx, 1)
	require.NoError(t, err)
	require.NoError(t, up.Release(ctx))
}

// A Release on a client cut off from etcd succeeds once the lease is lost:
// the key goes with the lease.
func TestReleaseCutOffEndsWithLease(t *testing.T) {
	name := semName(t)
	ctx := ctxT(t, 30*time.Second)
	cli := newClient(t)
	p, err := semaphore.New(newKeeper(t, cli, 2*time.Second), name, 1).Acquire(ctx, 1)
	require.NoError(t, err)
	cluster.CutClient(cli)
	defer cluster.RestoreClient(cli)
	done := make(chan error, 1)
	go func() { done <- p.Release(ctx) }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Release on a cut-off client did not return")
	}
	require.ErrorIs(t, context.Cause(p.Context()), semaphore.ErrLost)
	// The key goes when the server expires the lease.
	cluster.RestoreClient(cli)
	waitRequests(t, name, 0)
}

// A Release behind another Release of the same permit that is stalled on a
// cut-off client gives up when its own context ends, instead of waiting as
// long as the first (up to the TTL).
func TestReleaseBehindStalledReleaseReturnsOnTime(t *testing.T) {
	name := semName(t)
	ctx := ctxT(t, 60*time.Second)
	cli := newClient(t)
	p, err := semaphore.New(newKeeper(t, cli, 20*time.Second), name, 1).Acquire(ctx, 1)
	require.NoError(t, err)
	cluster.CutClient(cli)
	defer cluster.RestoreClient(cli)
	first := make(chan error, 1)
	go func() { first <- p.Release(ctx) }()
	require.Eventually(t, func() bool { return semaphore.Releasing(p) }, 10*time.Second, 5*time.Millisecond,
		"first Release never held its turn")

	second := make(chan error, 1)
	go func() {
		sctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		second <- p.Release(sctx)
	}()
	select {
	case err := <-second:
		require.ErrorIs(t, err, context.DeadlineExceeded)
	case <-time.After(5 * time.Second):
		t.Fatal("Release behind a stalled Release did not return when its context ended")
	}
	require.NoError(t, p.Context().Err(), "the permit ended before etcd confirmed the delete")

	cluster.RestoreClient(cli)
	require.NoError(t, <-first)
	require.ErrorIs(t, context.Cause(p.Context()), semaphore.ErrReleased)
	require.NoError(t, p.Release(ctx))
	waitRequests(t, name, 0)
}

// An Acquire that etcd refuses because the keeper's lease is gone on the
// server has the keeper replace the lease at once: the next Acquire succeeds
// on a new lease instead of failing on the old one until the keeper's next
// renewal (10 s away at this TTL).
func TestAcquireOnRevokedLeaseReplacesIt(t *testing.T) {
	name := semName(t)
	ctx := ctxT(t, 30*time.Second)
	k := newKeeper(t, newClient(t), 30*time.Second)
	l, err := k.Lease(ctx)
	require.NoError(t, err)
	s := semaphore.New(k, name, 2)
	p, err := s.Acquire(ctx, 1) // stores the limit
	require.NoError(t, err)
	require.NoError(t, p.Release(ctx))
	require.NoError(t, cluster.RevokeLease(ctx, l.ID()))
	_, err = s.Acquire(ctx, 1)
	require.ErrorIs(t, err, semaphore.ErrLost)
	require.ErrorIs(t, l.Err(), leasekeeper.ErrLeaseLost, "the keeper was not told")

	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	p, err = s.Acquire(actx, 1)
	require.NoError(t, err)
	require.NotEqual(t, l.ID(), p.Lease())
	require.NoError(t, p.Release(ctx))
	waitRequests(t, name, 0)
}

// The package's functions that take a client report a nil one as an error.
func TestNilClient(t *testing.T) {
	ctx := ctxT(t, 5*time.Second)
	_, err := semaphore.Inspect(ctx, nil, "n")
	require.ErrorContains(t, err, "semaphore: nil client")
	require.ErrorContains(t, semaphore.Delete(ctx, nil, "n"), "semaphore: nil client")
}

// A value or key under the semaphore's prefix that concord did not write stops
// Acquire and Inspect with ErrCorrupt, and its own request is withdrawn: a
// permit count too large to be real (it would overflow the sum of the
// permits ahead and grant wrongly) as much as garbage.
func TestCorruptRequestAhead(t *testing.T) {
	for _, tc := range []struct{ key, value string }{
		{"q/0000000000000000", "garbage"},
		{"q/0000000000000000", "s1:9223372036854775807:0:"},
		{"q/0000000000000000", "s1:2147483648:0:"},
		{"other", "s1:1:0:"}, // no key of the semaphore's
	} {
		t.Run(tc.key+"="+tc.value[:4], func(t *testing.T) {
			name := semName(t)
			ctx := ctxT(t, 20*time.Second)
			s := semaphore.New(newKeeper(t, newClient(t), 5*time.Second), name, 2)
			p, err := s.Acquire(ctx, 1) // stores the limit
			require.NoError(t, err)
			require.NoError(t, p.Release(ctx))
			planted := name + "/.semaphore/" + tc.key
			_, err = cluster.Admin().Put(ctx, planted, tc.value)
			require.NoError(t, err)
			defer func() { _, _ = cluster.Admin().Delete(context.Background(), planted) }()

			_, err = s.TryAcquire(ctx, 1)
			require.ErrorIs(t, err, semaphore.ErrCorrupt)
			_, err = s.Acquire(ctx, 1)
			require.ErrorIs(t, err, semaphore.ErrCorrupt)
			_, err = semaphore.Inspect(ctx, cluster.Admin(), name)
			require.ErrorIs(t, err, semaphore.ErrCorrupt)
			resp, err := cluster.Admin().Get(ctx, name+"/.semaphore/", clientv3.WithPrefix(), clientv3.WithCountOnly())
			require.NoError(t, err)
			require.EqualValues(t, 2, resp.Count, "a request was left behind (the limit and the planted key stay)")
		})
	}
}
