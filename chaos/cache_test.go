package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/cache"
	"github.com/concordkit/concord/testcluster"
)

// The cache checker. Writers put and delete keys under a prefix; caches on
// clients of their own follow it, with subscribers that apply the batches
// to views of their own. Checks:
//   - during the run, a cache's List at revision R equals etcd's range at R;
//   - every batch follows the subscriber's view: a Create for a key the view
//     lacks, an Update or Delete whose Prev is what the view holds, revisions
//     increasing; a change the stream skipped without a snapshot shows up as
//     a mismatch (an unreported gap);
//   - at the end, every cache and every subscriber's view equals etcd.

type cacheView struct {
	rev  int64
	kvs  map[string]viewKV
	name string
}

type viewKV struct {
	value []byte
	mod   int64
}

// apply applies one batch; honourSnapshots false is the unprotected variant
// that treats a snapshot as ordinary changes.
func (v *cacheView) apply(r *report, b cache.Batch, honourSnapshots bool) {
	if b.Revision <= v.rev && !(b.Snapshot && honourSnapshots) {
		r.violate("cache: %s: batch at revision %d after %d", v.name, b.Revision, v.rev)
	}
	if b.Snapshot && honourSnapshots {
		clear(v.kvs)
	}
	for _, ev := range b.Events {
		k := ev.KV.Key
		cur, have := v.kvs[k]
		switch {
		case ev.Type == cache.Create:
			if have {
				r.violate("cache: %s: create of %s at %d, but the view holds it (mod %d): a change was skipped unreported", v.name, k, b.Revision, cur.mod)
			}
		case ev.Prev == nil:
			r.violate("cache: %s: %v of %s at %d without its previous value", v.name, ev.Type, k, b.Revision)
		case !have:
			r.violate("cache: %s: %v of %s at %d, but the view lacks it: a change was skipped unreported", v.name, ev.Type, k, b.Revision)
		case ev.Prev.ModRevision != cur.mod || !bytes.Equal(ev.Prev.Value, cur.value):
			r.violate("cache: %s: %v of %s at %d from mod %d, but the view holds mod %d: a change was skipped unreported", v.name, ev.Type, k, b.Revision, ev.Prev.ModRevision, cur.mod)
		}
		if ev.Type == cache.Delete {
			delete(v.kvs, k)
		} else {
			v.kvs[k] = viewKV{ev.KV.Value, ev.KV.ModRevision}
		}
	}
	v.rev = max(v.rev, b.Revision)
}

// sameAs reports how the view differs from etcd's kvs, or "".
func sameAs(view map[string]viewKV, kvs []viewEntry) string {
	var diffs []string
	seen := map[string]bool{}
	for _, e := range kvs {
		seen[e.key] = true
		got, ok := view[e.key]
		switch {
		case !ok:
			diffs = append(diffs, "missing "+e.key)
		case got.mod != e.mod || !bytes.Equal(got.value, e.value):
			diffs = append(diffs, fmt.Sprintf("%s at mod %d, etcd has mod %d", e.key, got.mod, e.mod))
		}
	}
	for k := range view {
		if !seen[k] {
			diffs = append(diffs, "extra "+k)
		}
	}
	if len(diffs) == 0 {
		return ""
	}
	return fmt.Sprintf("%d differences, e.g. %v", len(diffs), diffs[:min(4, len(diffs))])
}

type viewEntry struct {
	key   string
	value []byte
	mod   int64
}

func etcdRange(ctx context.Context, cli *clientv3.Client, prefix string, rev int64) ([]viewEntry, int64, error) {
	opts := []clientv3.OpOption{clientv3.WithPrefix()}
	if rev > 0 {
		opts = append(opts, clientv3.WithRev(rev))
	}
	resp, err := cli.Get(ctx, prefix, opts...)
	if err != nil {
		return nil, 0, err
	}
	out := make([]viewEntry, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		out[i] = viewEntry{string(kv.Key), kv.Value, kv.ModRevision}
	}
	return out, resp.Header.Revision, nil
}

type cacheRun struct {
	caches, writers int
	protected       bool // false: subscribers treat snapshots as ordinary changes
	keys            int
	slow            time.Duration // subscriber 1's pause, now and then
	nemesis         nemesisConfig
	duration        time.Duration
}

func runCache(t *testing.T, c *testcluster.Cluster, seed int64, cfg cacheRun) (*report, *nemesis) {
	ctx := ctxT(t, cfg.duration+2*time.Minute)
	r := newReport(t, seed)
	prefix := "chaos/" + strings.ReplaceAll(t.Name(), "/", "_") + "/"
	cfg.nemesis.clients = nil
	newCli := func() *clientv3.Client {
		cli, err := c.NewClient()
		require.NoError(t, err)
		cfg.nemesis.clients = append(cfg.nemesis.clients, cli)
		return cli
	}
	var caches []*cache.Cache
	for range cfg.caches {
		cc, err := cache.New(ctx, newCli(), prefix, cache.WithBuffer(4))
		require.NoError(t, err)
		caches = append(caches, cc)
	}
	defer func() {
		for _, cc := range caches {
			_ = cc.Close()
		}
	}()
	writers := make([]*clientv3.Client, cfg.writers)
	for i := range writers {
		writers[i] = newCli()
	}

	// Subscribers: one per cache, slow enough to be reset to snapshots now
	// and then (buffer of 4 batches).
	views := make([]*cacheView, len(caches))
	var viewMu sync.Mutex // protects views' contents for the final comparison
	viewMoved := make(chan struct{}, 1)
	var batches, snapshots atomic.Int64
	var subs sync.WaitGroup
	for i, cc := range caches {
		views[i] = &cacheView{kvs: map[string]viewKV{}, name: fmt.Sprintf("subscriber %d", i)}
		s := cc.Subscribe()
		defer s.Close()
		subs.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(seed), uint64(400+i)))
			for b := range s.C() {
				viewMu.Lock()
				views[i].apply(r, b, cfg.protected)
				viewMu.Unlock()
				batches.Add(1)
				if b.Snapshot {
					snapshots.Add(1)
				}
				select {
				case viewMoved <- struct{}{}:
				default:
				}
				// Subscriber 1 reads slowly now and then, so that it falls a
				// whole buffer behind and is reset to a snapshot.
				if i == 1 && rng.IntN(8) == 0 {
					pause(ctx, cfg.slow)
				}
			}
		})
	}

	n := newNemesis(t, c, seed, cfg.nemesis)
	wctx, wstop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for i, cli := range writers {
		rng := rand.New(rand.NewPCG(uint64(seed), uint64(500+i)))
		wg.Go(func() {
			for seq := 0; wctx.Err() == nil; seq++ {
				key := fmt.Sprintf("%sk%03d", prefix, rng.IntN(cfg.keys))
				op := clientv3.OpPut(key, fmt.Sprintf("w%d-%d", i, seq))
				if rng.IntN(10) < 3 {
					op = clientv3.OpDelete(key)
				}
				octx, cancel := context.WithTimeout(wctx, 2*time.Second)
				if _, err := cli.Do(octx, op); err == nil {
					r.ops.Add(1)
				}
				cancel()
				pause(wctx, 2*time.Millisecond)
			}
		})
	}
	// Spot checks: a cache's List at R equals etcd at R.
	var spots, spotsSkipped atomic.Int64
	for i, cc := range caches {
		wg.Go(func() {
			for pause(wctx, 150*time.Millisecond) {
				list, rev := cc.List("")
				view := map[string]viewKV{}
				for _, kv := range list {
					view[kv.Key] = viewKV{kv.Value, kv.ModRevision}
				}
				gctx, cancel := context.WithTimeout(wctx, 2*time.Second)
				kvs, _, err := etcdRange(gctx, c.Admin(), prefix, rev)
				cancel()
				if err != nil {
					if errors.Is(err, rpctypes.ErrCompacted) {
						spotsSkipped.Add(1)
					}
					continue
				}
				spots.Add(1)
				if d := sameAs(view, kvs); d != "" {
					r.violate("cache: cache %d: List at revision %d differs from etcd at %d: %s", i, rev, rev, d)
				}
			}
		})
	}
	nctx, ncancel := context.WithTimeout(ctx, nemesisTime(c, cfg.duration))
	n.run(nctx)
	ncancel()
	wstop()
	wg.Wait()

	// Final views. A write whose client gave up when the writers stopped
	// can still be applied after this read, so every view is compared with
	// etcd at the view's own revision, once it has reached this one.
	fctx, fcancel := context.WithTimeout(ctx, 30*time.Second)
	defer fcancel()
	_, rev, err := etcdRange(fctx, c.Admin(), prefix, 0)
	require.NoError(t, err)
	for i, cc := range caches {
		if err := cc.WaitRevision(fctx, rev); err != nil {
			r.violate("cache: cache %d did not reach revision %d: %v", i, rev, err)
			continue
		}
		list, lrev := cc.List("")
		view := map[string]viewKV{}
		for _, kv := range list {
			view[kv.Key] = viewKV{kv.Value, kv.ModRevision}
		}
		kvs, _, err := etcdRange(fctx, c.Admin(), prefix, lrev)
		require.NoError(t, err)
		if d := sameAs(view, kvs); d != "" {
			r.violate("cache: cache %d at revision %d differs from etcd at %d: %s", i, lrev, lrev, d)
		}
	}
	// A subscriber's view moves only with changes under the prefix; it must
	// reach the last of them before the deadline (short for the unprotected
	// variant, whose views are expected to be wrong anyway).
	vwait := 20 * time.Second
	if !cfg.protected {
		vwait = 3 * time.Second
	}
	vctx, vcancel := context.WithTimeout(fctx, vwait)
	defer vcancel()
	last, err := c.Admin().Get(fctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	require.NoError(t, err)
	lastChange := int64(0)
	for _, kv := range last.Kvs {
		lastChange = max(lastChange, kv.ModRevision)
	}
	for i, v := range views {
		for {
			viewMu.Lock()
			vrev := v.rev
			view := maps.Clone(v.kvs)
			viewMu.Unlock()
			if vrev >= lastChange {
				kvs, _, err := etcdRange(fctx, c.Admin(), prefix, vrev)
				require.NoError(t, err)
				if d := sameAs(view, kvs); d != "" {
					r.violate("cache: subscriber %d's view at revision %d differs from etcd at %d: %s", i, vrev, vrev, d)
				}
				break
			}
			select {
			case <-viewMoved:
				continue
			case <-vctx.Done():
			}
			r.violate("cache: subscriber %d's view stayed at revision %d; the last change under the prefix is at %d", i, vrev, lastChange)
			break
		}
	}
	r.note("%d batches (%d snapshots), %d spot checks (%d skipped: compacted)", batches.Load(), snapshots.Load(), spots.Load(), spotsSkipped.Load())
	for _, cc := range caches {
		_ = cc.Close()
	}
	subs.Wait()
	return r, n
}

func TestChaosCache(t *testing.T) {
	s := seed(t)
	c := testcluster.New(t)
	r, n := runCache(t, c, s, cacheRun{
		caches: 2, writers: 2, protected: true, keys: 40, slow: 100 * time.Millisecond,
		nemesis: defaultNemesis(), duration: chaosDuration(6 * time.Second),
	})
	r.expectNone(t, n)
}

// TestChaosCacheCheckerCatchesIgnoredSnapshots runs subscribers that apply a
// snapshot as ordinary changes instead of replacing their view: the changes
// they missed are never undone, and the checker must see it.
func TestChaosCacheCheckerCatchesIgnoredSnapshots(t *testing.T) {
	s := seed(t)
	c := testcluster.New(t)
	cfg := defaultNemesis()
	cfg.kinds = []faultKind{faultCompact}
	r, n := runCache(t, c, s, cacheRun{
		caches: 2, writers: 3, protected: false, keys: 10, slow: 200 * time.Millisecond,
		nemesis: cfg, duration: 4 * time.Second,
	})
	r.expectSome(t, n)
}
