package cache_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/concordkit/concord/cache"
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

// prefixFor returns a prefix unique to the test and checks, when the test
// ends, that the test removed every key it wrote under it.
func prefixFor(t *testing.T, c *testcluster.Cluster) string {
	t.Helper()
	p := "/cache-test/" + t.Name() + "/"
	t.Cleanup(func() {
		admin := c.Admin()
		if admin == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := admin.Get(ctx, p, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if assert.NoError(t, err) {
			assert.Zero(t, resp.Count, "keys left under %s", p)
		}
	})
	return p
}

func cleanup(t *testing.T, c *testcluster.Cluster, prefix string) {
	t.Helper()
	_, err := c.Admin().Delete(ctxT(t, 5*time.Second), prefix, clientv3.WithPrefix())
	require.NoError(t, err)
}

func newCache(t *testing.T, cli *clientv3.Client, prefix string, opts ...cache.Option) *cache.Cache {
	t.Helper()
	c, err := cache.New(ctxT(t, 10*time.Second), cli, prefix, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func recv(t *testing.T, s *cache.Subscription, d time.Duration) cache.Batch {
	t.Helper()
	select {
	case b, ok := <-s.C():
		require.True(t, ok, "subscription closed")
		return b
	case <-time.After(d):
		t.Fatalf("no batch within %v", d)
		return cache.Batch{}
	}
}

func TestLoadGetListWatch(t *testing.T) {
	p := prefixFor(t, cluster)
	defer cleanup(t, cluster, p)
	ctx := ctxT(t, 20*time.Second)
	admin := cluster.Admin()
	for i := range 25 {
		_, err := admin.Put(ctx, fmt.Sprintf("%sk%02d", p, i), fmt.Sprint(i))
		require.NoError(t, err)
	}
	// A key just past the prefix must stay out.
	_, err := admin.Put(ctx, strings.TrimSuffix(p, "/")+"0", "outside")
	require.NoError(t, err)
	defer admin.Delete(context.Background(), strings.TrimSuffix(p, "/")+"0")

	c := newCache(t, cluster.Client(), p, cache.WithPageSize(7)) // four pages
	require.Equal(t, 25, c.Len())
	kv, ok := c.Get(p + "k03")
	require.True(t, ok)
	assert.Equal(t, "3", string(kv.Value))
	list, rev := c.List(p + "k1")
	require.Len(t, list, 10)
	assert.Equal(t, p+"k10", list[0].Key)
	assert.Equal(t, p+"k19", list[9].Key)
	assert.Equal(t, c.Revision(), rev)

	s := c.Subscribe()
	defer s.Close()
	snap := recv(t, s, time.Second)
	require.True(t, snap.Snapshot)
	require.Len(t, snap.Events, 25)
	assert.Equal(t, rev, snap.Revision)

	// Read-your-writes: a put at r is visible after WaitRevision(r).
	put, err := admin.Put(ctx, p+"k03", "three")
	require.NoError(t, err)
	require.NoError(t, c.WaitRevision(ctx, put.Header.Revision))
	kv, _ = c.Get(p + "k03")
	assert.Equal(t, "three", string(kv.Value))
	b := recv(t, s, 5*time.Second)
	require.Len(t, b.Events, 1)
	assert.Equal(t, cache.Update, b.Events[0].Type)
	assert.Equal(t, "3", string(b.Events[0].Prev.Value))
	assert.Equal(t, put.Header.Revision, b.Revision)

	// A transaction's changes arrive as one batch.
	txn, err := admin.Txn(ctx).Then(
		clientv3.OpPut(p+"new", "n"),
		clientv3.OpDelete(p+"k00"),
	).Commit()
	require.NoError(t, err)
	b = recv(t, s, 5*time.Second)
	assert.Equal(t, txn.Header.Revision, b.Revision)
	require.Len(t, b.Events, 2)
	assert.Equal(t, cache.Delete, b.Events[0].Type)
	assert.Equal(t, p+"k00", b.Events[0].KV.Key)
	assert.Equal(t, "0", string(b.Events[0].Prev.Value))
	assert.Equal(t, cache.Create, b.Events[1].Type)
	assert.Equal(t, p+"new", b.Events[1].KV.Key)

	// A revision outside the prefix is reached through a progress
	// notification.
	out, err := admin.Put(ctx, "/cache-test-elsewhere", "x")
	require.NoError(t, err)
	defer admin.Delete(context.Background(), "/cache-test-elsewhere")
	require.NoError(t, c.WaitRevision(ctxT(t, 5*time.Second), out.Header.Revision))
	_, ok = c.Get(strings.TrimSuffix(p, "/") + "0")
	assert.False(t, ok)
}

func TestCloseJoinsAndEndsSubscriptions(t *testing.T) {
	p := prefixFor(t, cluster)
	c, err := cache.New(ctxT(t, 5*time.Second), cluster.Client(), p)
	require.NoError(t, err)
	s := c.Subscribe()
	recv(t, s, time.Second)
	waitErr := make(chan error, 1)
	go func() { waitErr <- c.WaitRevision(context.Background(), 1<<60) }()
	require.NoError(t, c.Close())
	require.NoError(t, c.Close())
	_, ok := <-s.C()
	assert.False(t, ok)
	select {
	case err := <-waitErr:
		assert.ErrorIs(t, err, cache.ErrClosed)
	case <-time.After(5 * time.Second):
		t.Fatal("WaitRevision did not return after Close")
	}
	s2 := c.Subscribe()
	_, ok = <-s2.C()
	assert.False(t, ok)
	s.Close() // idempotent after the cache closed it
}

func TestBadOptions(t *testing.T) {
	_, err := cache.New(ctxT(t, time.Second), nil, "/x")
	assert.ErrorContains(t, err, "cache: nil client")
	_, err = cache.New(ctxT(t, time.Second), cluster.Client(), "/x", cache.WithPageSize(0))
	assert.ErrorContains(t, err, "cache: page size")
	_, err = cache.New(ctxT(t, time.Second), cluster.Client(), "/x", cache.WithBuffer(-1))
	assert.ErrorContains(t, err, "cache: buffer")
}

// A subscriber that does not read is reset to a snapshot instead of stalling
// the cache or the other subscribers.
func TestSlowSubscriberIsReset(t *testing.T) {
	p := prefixFor(t, cluster)
	defer cleanup(t, cluster, p)
	ctx := ctxT(t, 20*time.Second)
	c := newCache(t, cluster.Client(), p, cache.WithBuffer(4))
	slow := c.Subscribe()
	defer slow.Close()
	fast := c.Subscribe()
	defer fast.Close()
	recv(t, fast, time.Second)

	var last int64
	for i := range 20 {
		r, err := cluster.Admin().Put(ctx, fmt.Sprintf("%sk%02d", p, i), "v")
		require.NoError(t, err)
		last = r.Header.Revision
		// The fast subscriber keeps up while the slow one reads nothing.
		b := recv(t, fast, 5*time.Second)
		require.False(t, b.Snapshot)
		require.Equal(t, last, b.Revision)
	}
	require.NoError(t, c.WaitRevision(ctx, last))
	// The slow subscriber holds at most its buffer, ending with a snapshot
	// of the latest state.
	var got []cache.Batch
	for len(got) == 0 || got[len(got)-1].Revision < last {
		got = append(got, recv(t, slow, time.Second))
	}
	require.LessOrEqual(t, len(got), 4)
	end := got[len(got)-1]
	require.True(t, end.Snapshot)
	assert.Len(t, end.Events, 20)
}

// After a compaction the cache reloads and emits the difference.
func TestCompactionReloadEmitsDifference(t *testing.T) {
	tc := testcluster.New(t)
	p := prefixFor(t, tc)
	ctx := ctxT(t, 30*time.Second)
	admin := tc.Admin()
	for _, k := range []string{"a", "b", "c"} {
		_, err := admin.Put(ctx, p+k, "1")
		require.NoError(t, err)
	}
	cli, err := tc.NewClient(testcluster.To(0))
	require.NoError(t, err)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	c := newCache(t, cli, p, cache.WithMeterProvider(mp))
	s := c.Subscribe()
	defer s.Close()
	recv(t, s, time.Second)

	// The cache's member goes down; keys change and history is compacted
	// while it is away, so its watch cannot resume where it stopped.
	require.NoError(t, tc.Stop(0))
	tc.CutClient(cli) // hold the client off until member 0 has caught up
	_, err = admin.Delete(ctx, p+"a")
	require.NoError(t, err)
	_, err = admin.Put(ctx, p+"b", "2")
	require.NoError(t, err)
	_, err = admin.Put(ctx, p+"d", "1")
	require.NoError(t, err)
	// Delete and recreate c: one Update after the reload.
	_, err = admin.Delete(ctx, p+"c")
	require.NoError(t, err)
	_, err = admin.Put(ctx, p+"c", "again")
	require.NoError(t, err)
	rev, err := tc.Compact(ctx)
	require.NoError(t, err)
	require.NoError(t, tc.Restart(ctx, 0))
	waitCompacted(t, tc, 0, rev)
	tc.RestoreClient(cli)

	b := recv(t, s, 20*time.Second)
	require.False(t, b.Snapshot)
	assert.GreaterOrEqual(t, b.Revision, rev)
	types := map[string]cache.EventType{}
	for _, ev := range b.Events {
		types[strings.TrimPrefix(ev.KV.Key, p)] = ev.Type
	}
	assert.Equal(t, map[string]cache.EventType{"a": cache.Delete, "b": cache.Update, "c": cache.Update, "d": cache.Create}, types)
	assert.Equal(t, 1, c.Reloads())
	list, _ := c.List(p)
	assert.Len(t, list, 3)
	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(ctx, &rm))
	assert.EqualValues(t, 1, counterValue(t, rm, "concord.cache.reloads"))
	_, err = admin.Delete(ctx, p, clientv3.WithPrefix())
	require.NoError(t, err)
}

// waitCompacted waits until member i has applied a compaction at rev, read
// directly on that member.
func waitCompacted(t *testing.T, tc *testcluster.Cluster, i int, rev int64) {
	t.Helper()
	cfg := tc.ClientConfig()
	cfg.Endpoints = []string{tc.Endpoints()[i]}
	direct, err := clientv3.New(cfg)
	require.NoError(t, err)
	defer direct.Close()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := direct.Get(ctx, "compacted?", clientv3.WithSerializable(), clientv3.WithRev(rev-1))
		cancel()
		if errors.Is(err, rpctypes.ErrCompacted) {
			return
		}
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("member %d did not apply the compaction at %d: %v", i, rev, err)
		}
	}
}

// An empty prefix caches the whole keyspace.
func TestWholeKeyspace(t *testing.T) {
	p := prefixFor(t, cluster)
	defer cleanup(t, cluster, p)
	ctx := ctxT(t, 10*time.Second)
	before := put(t, p+"before", "1")
	c := newCache(t, cluster.Client(), "")
	_, ok := c.Get(p + "before")
	require.True(t, ok)
	assert.GreaterOrEqual(t, c.Revision(), before)
	rev := put(t, "\x01"+p, "low key")
	defer cluster.Admin().Delete(context.Background(), "\x01"+p)
	require.NoError(t, c.WaitRevision(ctx, rev))
	_, ok = c.Get("\x01" + p)
	assert.True(t, ok)
}

// etcd 3.4 is refused (CONCORD_ETCD_34 names a 3.4 binary, such as Debian's
// etcd-server package's /usr/bin/etcd).
func TestRefusesEtcd34(t *testing.T) {
	bin := os.Getenv("CONCORD_ETCD_34")
	if bin == "" {
		t.Skip("CONCORD_ETCD_34 is not set")
	}
	c := testcluster.New(t, testcluster.WithBinary(bin))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := cache.New(ctx, c.Client(), "x/")
	require.ErrorIs(t, err, cache.ErrUnsupported)
	require.ErrorContains(t, err, "etcd 3.4.")
}
