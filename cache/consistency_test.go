package cache_test

import (
	"context"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/cache"
	"github.com/concordkit/concord/testcluster"
)

var long = flag.Bool("cache.long", false, "run the consistency test for 30 s instead of 2 s per phase")

// state is a prefix's content: key → value.
type state map[string]string

func etcdAt(ctx context.Context, cli *clientv3.Client, prefix string, rev int64) (state, error) {
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev))
	if err != nil {
		return nil, err
	}
	s := state{}
	for _, kv := range resp.Kvs {
		s[string(kv.Key)] = string(kv.Value)
	}
	return s, nil
}

func cacheState(kvs []cache.KV) state {
	s := state{}
	for _, kv := range kvs {
		s[kv.Key] = string(kv.Value)
	}
	return s
}

// replayer applies a subscription's batches to a view of its own and checks
// every few batches that the view equals etcd at the batch's revision.
type replayer struct {
	view     state
	rev      int64
	batches  int
	checked  atomic.Int64
	mismatch []string
	every    int // compare with etcd every this many batches (default 7)
}

func (r *replayer) run(ctx context.Context, admin *clientv3.Client, s *cache.Subscription) {
	for b := range s.C() {
		if b.Revision < r.rev {
			r.mismatch = append(r.mismatch, fmt.Sprintf("revision went back from %d to %d", r.rev, b.Revision))
		}
		if b.Snapshot {
			r.view = state{}
		}
		for _, ev := range b.Events {
			switch ev.Type {
			case cache.Create:
				if _, ok := r.view[ev.KV.Key]; ok && !b.Snapshot {
					r.mismatch = append(r.mismatch, fmt.Sprintf("rev %d: create of existing %s", b.Revision, ev.KV.Key))
				}
				r.view[ev.KV.Key] = string(ev.KV.Value)
			case cache.Update:
				if old, ok := r.view[ev.KV.Key]; !ok || old != string(ev.Prev.Value) {
					r.mismatch = append(r.mismatch, fmt.Sprintf("rev %d: update of %s with wrong previous value", b.Revision, ev.KV.Key))
				}
				r.view[ev.KV.Key] = string(ev.KV.Value)
			case cache.Delete:
				if _, ok := r.view[ev.KV.Key]; !ok {
					r.mismatch = append(r.mismatch, fmt.Sprintf("rev %d: delete of missing %s", b.Revision, ev.KV.Key))
				}
				delete(r.view, ev.KV.Key)
			}
		}
		r.rev = b.Revision
		r.batches++
		if r.every == 0 {
			r.every = 7
		}
		if r.batches%r.every != 1%r.every {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		want, err := etcdAt(cctx, admin, prefixOf(r), b.Revision)
		cancel()
		if err != nil {
			continue // compacted meanwhile, or a member is down: nothing to compare
		}
		r.checked.Add(1)
		if !maps.Equal(want, r.view) {
			r.mismatch = append(r.mismatch, fmt.Sprintf("view at rev %d differs from etcd: %d keys vs %d", b.Revision, len(r.view), len(want)))
		}
	}
}

var consistencyPrefix string

func prefixOf(*replayer) string { return consistencyPrefix }

// TestConsistency: writers make random writes (puts, deletes, transactions)
// while members restart and history is compacted under one cache; every
// cache must equal etcd at its revision whenever sampled and at the end, and
// every subscriber's replayed view must equal etcd at its batch's revision.
func TestConsistency(t *testing.T) {
	tc := testcluster.New(t)
	p := prefixFor(t, tc)
	consistencyPrefix = p
	ctx := ctxT(t, 3*time.Minute)
	admin := tc.Admin()
	defer cleanup(t, tc, p)
	phase := 700 * time.Millisecond
	const minWritesPerPhase = 40
	if *long {
		phase = 10 * time.Second
	}

	// One cache per member, each through a client pinned to that member, so
	// that a member's restart breaks that cache's watch. The last one has a
	// small buffer, so its subscriber is also reset to snapshots.
	caches := make([]*cache.Cache, tc.Size())
	clis := make([]*clientv3.Client, tc.Size())
	reps := make([]*replayer, tc.Size())
	var wg sync.WaitGroup
	for i := range caches {
		cli, err := tc.NewClient(testcluster.To(i))
		require.NoError(t, err)
		opts := []cache.Option{cache.WithPageSize(5)}
		if i == tc.Size()-1 {
			opts = append(opts, cache.WithBuffer(2))
		}
		clis[i] = cli
		caches[i] = newCache(t, cli, p, opts...)
		reps[i] = &replayer{}
		s := caches[i].Subscribe()
		wg.Go(func() { reps[i].run(ctx, admin, s) })
		t.Cleanup(s.Close)
	}

	// Writers.
	stop := make(chan struct{})
	var writes atomic.Int64
	var writers sync.WaitGroup
	stopWriters := sync.OnceFunc(func() { close(stop); writers.Wait() })
	t.Cleanup(stopWriters) // also when the test fails half-way
	for w := range 3 {
		cli, err := tc.NewClient()
		require.NoError(t, err)
		writers.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				key := fmt.Sprintf("%sk%02d", p, rng.IntN(40))
				wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				var err error
				switch r := rng.IntN(10); {
				case r < 6:
					_, err = cli.Put(wctx, key, fmt.Sprintf("w%d-%d", w, n))
				case r < 8:
					_, err = cli.Delete(wctx, key)
				default:
					other := fmt.Sprintf("%sk%02d", p, 40+rng.IntN(10))
					_, err = cli.Txn(wctx).Then(clientv3.OpPut(other, fmt.Sprintf("t%d-%d", w, n)), clientv3.OpDelete(key)).Commit()
				}
				cancel()
				if err == nil {
					writes.Add(1)
				}
			}
		})
	}

	// Sample every cache against etcd while all this goes on.
	var samples atomic.Int64
	var sampleErrs []string
	var sampleMu sync.Mutex
	samplerStop := make(chan struct{})
	var sampler sync.WaitGroup
	stopSampler := sync.OnceFunc(func() { close(samplerStop); sampler.Wait() })
	t.Cleanup(stopSampler)
	sampler.Go(func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-samplerStop:
				return
			case <-tick.C:
			}
			for i, c := range caches {
				kvs, rev := c.List(p)
				sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				want, err := etcdAt(sctx, admin, p, rev)
				cancel()
				if err != nil {
					continue
				}
				samples.Add(1)
				if got := cacheState(kvs); !maps.Equal(want, got) {
					sampleMu.Lock()
					sampleErrs = append(sampleErrs, fmt.Sprintf("cache %d at rev %d: %d keys, etcd %d", i, rev, len(got), len(want)))
					sampleMu.Unlock()
				}
			}
		}
	})

	// waitWrites lets the writers go on for d, and longer if needed for
	// minWritesPerPhase of their writes to succeed meanwhile (a loaded
	// machine, an election after a crash).
	waitWrites := func(d time.Duration) {
		t.Helper()
		from := writes.Load()
		run := time.NewTimer(d)
		defer run.Stop()
		<-run.C // the workload's duration, not a synchronisation
		deadline := time.After(15 * time.Second)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for writes.Load()-from < minWritesPerPhase {
			select {
			case <-tick.C:
			case <-deadline:
				t.Fatalf("%d writes succeeded in %v, want %d", writes.Load()-from, d+15*time.Second, minWritesPerPhase)
			}
		}
	}

	waitWrites(phase)
	// A crash and a graceful stop, each restarted while writes go on.
	require.NoError(t, tc.Kill(0))
	waitWrites(phase)
	require.NoError(t, tc.Restart(ctx, 0))
	waitWrites(phase)
	require.NoError(t, tc.Stop(1))
	waitWrites(phase)
	require.NoError(t, tc.Restart(ctx, 1))
	waitWrites(phase)
	// Member 2 goes down and history is compacted while it is away; its
	// cache's client is held off until the member has caught up, so its
	// watch must find its start compacted and reload.
	require.NoError(t, tc.Stop(2))
	tc.CutClient(clis[2])
	waitWrites(phase)
	rev, err := tc.Compact(ctx)
	require.NoError(t, err)
	waitWrites(phase)
	require.NoError(t, tc.Restart(ctx, 2))
	waitCompacted(t, tc, 2, rev)
	tc.RestoreClient(clis[2])
	waitWrites(phase)

	stopWriters()
	final, err := admin.Get(ctx, p, clientv3.WithPrefix())
	require.NoError(t, err)
	want := state{}
	for _, kv := range final.Kvs {
		want[string(kv.Key)] = string(kv.Value)
	}
	for i, c := range caches {
		require.NoError(t, c.WaitRevision(ctx, final.Header.Revision), "cache %d", i)
		kvs, _ := c.List(p)
		assert.Equal(t, want, cacheState(kvs), "cache %d at the end", i)
	}
	stopSampler()
	for _, c := range caches {
		require.NoError(t, c.Close()) // closes the subscriptions: replayers drain and end
	}
	wg.Wait()
	for i, r := range reps {
		assert.Empty(t, r.mismatch, "subscriber %d", i)
		assert.Equal(t, want, r.view, "subscriber %d's replayed view at the end", i)
		assert.Positive(t, r.checked.Load(), "subscriber %d was never compared with etcd", i)
	}
	assert.Empty(t, sampleErrs)
	assert.GreaterOrEqual(t, caches[2].Reloads(), 1, "the cache behind the compaction did not reload")
	t.Logf("%d writes, %d cache samples compared, batches per subscriber %d/%d/%d, reloads %d/%d/%d",
		writes.Load(), samples.Load(), reps[0].batches, reps[1].batches, reps[2].batches,
		caches[0].Reloads(), caches[1].Reloads(), caches[2].Reloads())
}
