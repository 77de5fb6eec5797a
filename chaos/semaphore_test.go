package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/semaphore"
	"github.com/concordkit/concord/testcluster"
)

// The semaphore checker. Workers in separate "processes" acquire one or two
// permits of a semaphore and, while they hold them, write to a log under
// the permit's Guard. A guarded write at revision R proves the permit was
// held at R, so each permit's writes span a stretch of revisions in which
// it was held. Swept in revision order, the permits whose spans cover any
// one revision must never add up to more than the limit.

type semaphoreRun struct {
	workers, limit int
	maxWant        int  // each acquire asks for 1 to maxWant permits
	protected      bool // false: writes without Guard, the permit's context ignored
	tenure         span // how long a holder works (when it ignores its context)
	nemesis        nemesisConfig
	duration       time.Duration
}

func runSemaphore(t *testing.T, c *testcluster.Cluster, seed int64, cfg semaphoreRun) (*report, *nemesis) {
	ctx := ctxT(t, cfg.duration+2*time.Minute)
	r := newReport(t, seed)
	base := "chaos/" + strings.ReplaceAll(t.Name(), "/", "_") + "/"
	name, logPrefix := base+"sem", base+"log/"

	keepers, closeKeepers := workloadKeepers(ctx, t, c, &cfg.nemesis, cfg.workers)
	defer closeKeepers()
	holding := make([]atomic.Bool, cfg.workers)
	cfg.nemesis.holder = func() int {
		for i := range holding {
			if holding[i].Load() {
				return i
			}
		}
		return -1
	}

	var permits, refused, acquireErrs atomic.Int64
	n := newNemesis(t, c, seed, cfg.nemesis)
	wctx, wstop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for i, k := range keepers {
		rng := rand.New(rand.NewPCG(uint64(seed), uint64(700+i)))
		wg.Go(func() {
			s := semaphore.New(k, name, cfg.limit)
			cli := k.Client()
			for wctx.Err() == nil {
				want := 1 + rng.IntN(max(cfg.maxWant, 1))
				p, err := s.Acquire(wctx, want)
				if err != nil {
					if wctx.Err() == nil {
						acquireErrs.Add(1)
						pause(wctx, 20*time.Millisecond)
					}
					continue
				}
				permits.Add(1)
				holding[i].Store(true)
				end := time.Now().Add(tenure(c, cfg.tenure.draw(rng)))
				cmps, octx := p.Guard(), p.Context()
				if !cfg.protected {
					cmps, octx = nil, context.WithoutCancel(wctx)
				}
				for seq := 0; time.Now().Before(end) && wctx.Err() == nil; seq++ {
					if cfg.protected && p.Context().Err() != nil {
						break
					}
					pctx, cancel := context.WithTimeout(octx, 3*time.Second)
					key := fmt.Sprintf("%s%d/%d/%04d", logPrefix, p.Token(), p.N(), seq)
					ok, err := fencedWrite(pctx, cli, cmps, key, p.Token())
					cancel()
					if ok {
						r.ops.Add(1)
					} else if err == nil {
						refused.Add(1)
						break
					}
					pause(wctx, 5*time.Millisecond)
				}
				holding[i].Store(false)
				rctx, cancel := context.WithTimeout(context.WithoutCancel(wctx), 3*time.Second)
				_ = p.Release(rctx)
				cancel()
			}
		})
	}
	nctx, ncancel := context.WithTimeout(ctx, nemesisTime(c, cfg.duration))
	n.run(nctx)
	ncancel()
	wstop()
	wg.Wait()

	most, spans := checkSemaphoreLog(ctx, t, r, c.Admin(), logPrefix, cfg.limit)
	r.note("%d permits granted, %d permits wrote, at most %d of %d permits held at once by fenced writes, %d writes refused by the guard, %d Acquire errors",
		permits.Load(), spans, most, cfg.limit, refused.Load(), acquireErrs.Load())
	if spans < 2 {
		t.Errorf("only %d permits wrote: the checker checked nothing", spans)
	}
	return r, n
}

// checkSemaphoreLog sweeps the permits' write spans in revision order and
// reports each revision at which they add up to more than limit. It returns
// the largest sum seen and the number of permits.
func checkSemaphoreLog(ctx context.Context, t *testing.T, r *report, admin *clientv3.Client, logPrefix string, limit int) (int, int) {
	gctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := admin.Get(gctx, logPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	require.NoError(t, err)
	type spanOf struct {
		first, last int64
		n           int
	}
	spans := map[int64]*spanOf{}
	for _, kv := range resp.Kvs {
		parts := strings.Split(strings.TrimPrefix(string(kv.Key), logPrefix), "/")
		tok, _ := strconv.ParseInt(parts[0], 10, 64)
		n, _ := strconv.Atoi(parts[1])
		s := spans[tok]
		if s == nil {
			s = &spanOf{first: kv.ModRevision, last: kv.ModRevision, n: n}
			spans[tok] = s
		}
		s.first, s.last = min(s.first, kv.ModRevision), max(s.last, kv.ModRevision)
	}
	type edge struct {
		rev   int64
		delta int
		tok   int64
	}
	var edges []edge
	for tok, s := range spans {
		edges = append(edges, edge{s.first, s.n, tok}, edge{s.last + 1, -s.n, tok})
	}
	// At one revision, departures (after their last write) come before arrivals.
	sort.Slice(edges, func(i, j int) bool {
		if edges[i].rev != edges[j].rev {
			return edges[i].rev < edges[j].rev
		}
		return edges[i].delta < edges[j].delta
	})
	sum, most := 0, 0
	held := map[int64]bool{}
	for _, e := range edges {
		sum += e.delta
		if e.delta > 0 {
			held[e.tok] = true
		} else {
			delete(held, e.tok)
		}
		most = max(most, sum)
		if sum > limit && e.delta > 0 {
			var toks []string
			for tok := range held {
				toks = append(toks, fmt.Sprintf("%d×%d", tok, spans[tok].n))
			}
			sort.Strings(toks)
			r.violate("semaphore: at revision %d permits %v (%d of a limit of %d) wrote under their guards", e.rev, toks, sum, limit)
		}
	}
	return most, len(spans)
}

func TestChaosSemaphore(t *testing.T) {
	s := seed(t)
	c := testcluster.New(t)
	r, n := runSemaphore(t, c, s, semaphoreRun{
		workers: 5, limit: 3, maxWant: 2, protected: true, tenure: span{20 * time.Millisecond, 400 * time.Millisecond},
		nemesis: defaultNemesis(), duration: chaosDuration(6 * time.Second),
	})
	r.expectNone(t, n)
}

// TestChaosSemaphoreCheckerCatchesUnfencedHolders runs holders that ignore
// their permit's context and write without Guard: a holder cut off past its
// lease's expiry keeps writing after its permits went to someone else. Each
// asks for one permit, so the worker waiting behind two holders takes the
// cut one's permit as soon as it expires (a request for two would wait for
// the other holder too, and the overlap would depend on the draw).
func TestChaosSemaphoreCheckerCatchesUnfencedHolders(t *testing.T) {
	s := seed(t)
	c := testcluster.New(t)
	cfg := defaultNemesis()
	cfg.kinds = nil
	cfg.cutGap = span{100 * time.Millisecond, 300 * time.Millisecond}
	cfg.holderAlways = true
	r, n := runSemaphore(t, c, s, semaphoreRun{
		workers: 3, limit: 2, maxWant: 1, protected: false, tenure: span{3 * time.Second, 3500 * time.Millisecond},
		nemesis: cfg, duration: 4500 * time.Millisecond,
	})
	r.expectSome(t, n)
}
