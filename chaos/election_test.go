package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/concordkit/concord/election"
	"github.com/concordkit/concord/testcluster"
)

// The election checker: candidates in separate "processes" (a client and a
// keeper each) run terms through Election.Run; each leader writes to a log
// under its term's Guard for a while, then steps down. At most one term's
// fenced writes may succeed at any time (checkFencedOrder).

type electionRun struct {
	candidates int
	protected  bool          // false: writes without Guard, and ignoring the term's context
	tenure     span          // how long a leader writes before stepping down
	nemesis    nemesisConfig // clients are filled in
	duration   time.Duration
}

func runElection(t *testing.T, c *testcluster.Cluster, seed int64, cfg electionRun) (*report, *nemesis) {
	ctx := ctxT(t, cfg.duration+2*time.Minute)
	r := newReport(t, seed)
	base := "chaos/" + strings.ReplaceAll(t.Name(), "/", "_")
	name, logPrefix := base+"/election", base+"/log/"

	keepers, closeKeepers := workloadKeepers(ctx, t, c, &cfg.nemesis, cfg.candidates)
	defer closeKeepers()

	var terms, lost, refused atomic.Int64
	var leader atomic.Int64
	leader.Store(-1)
	cfg.nemesis.holder = func() int { return int(leader.Load()) }
	n := newNemesis(t, c, seed, cfg.nemesis)
	wctx, wstop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for i, k := range keepers {
		rng := rand.New(rand.NewPCG(uint64(seed), uint64(100+i)))
		wg.Go(func() {
			e := election.New(k, name)
			cli := k.Client()
			err := e.Run(wctx, fmt.Sprint(i), func(tctx context.Context, term *election.Term) error {
				terms.Add(1)
				leader.Store(int64(i))
				defer func() {
					if term.Err() != nil && tctx.Err() != nil && wctx.Err() == nil {
						lost.Add(1)
					}
				}()
				end := time.Now().Add(tenure(c, cfg.tenure.draw(rng)))
				cmps := term.Guard()
				wrCtx := tctx
				if !cfg.protected {
					cmps, wrCtx = nil, context.WithoutCancel(wctx)
				}
				for seq := 0; time.Now().Before(end); seq++ {
					if cfg.protected && tctx.Err() != nil {
						return nil
					}
					if !cfg.protected && wctx.Err() != nil {
						return nil
					}
					pctx, cancel := context.WithTimeout(wrCtx, 5*time.Second)
					ok, err := fencedWrite(pctx, cli, cmps, fmt.Sprintf("%sc%d-t%d-%05d", logPrefix, i, term.Token(), seq), term.Token())
					cancel()
					switch {
					case ok:
						r.ops.Add(1)
					case err == nil:
						refused.Add(1) // the guard failed: the term is over
						return nil
					}
					if !pause(wrCtx, 10*time.Millisecond) {
						return nil
					}
				}
				return nil
			})
			if wctx.Err() == nil {
				t.Errorf("candidate %d: Run returned before the end: %v", i, err)
			}
		})
	}
	nctx, ncancel := context.WithTimeout(ctx, nemesisTime(c, cfg.duration))
	n.run(nctx)
	ncancel()
	wstop()
	wg.Wait()

	writes, tokens, err := checkFencedOrder(ctx, r, c.Admin(), logPrefix)
	require.NoError(t, err)
	r.note("%d terms (%d ended by a loss), %d fenced writes in etcd from %d terms, %d writes refused by the guard",
		terms.Load(), lost.Load(), writes, tokens, refused.Load())
	if tokens < 2 {
		t.Errorf("fewer than two terms wrote: the checker checked nothing")
	}
	return r, n
}

func TestChaosElection(t *testing.T) {
	s := seed(t)
	c := testcluster.New(t)
	r, n := runElection(t, c, s, electionRun{
		candidates: 3, protected: true,
		tenure:  span{50 * time.Millisecond, 1500 * time.Millisecond},
		nemesis: defaultNemesis(), duration: chaosDuration(6 * time.Second),
	})
	r.expectNone(t, n)
}

// TestChaosElectionCheckerCatchesUnguardedWrites runs leaders that write
// without Guard and ignore their term's context: a leader cut off from the
// cluster keeps its writes in flight, and they land after the next leader's.
func TestChaosElectionCheckerCatchesUnguardedWrites(t *testing.T) {
	s := seed(t)
	c := testcluster.New(t)
	cfg := defaultNemesis()
	cfg.kinds = nil
	cfg.cutGap = span{100 * time.Millisecond, 300 * time.Millisecond}
	cfg.holderAlways = true
	r, n := runElection(t, c, s, electionRun{
		candidates: 2, protected: false,
		tenure:  span{3 * time.Second, 4 * time.Second},
		nemesis: cfg, duration: 4500 * time.Millisecond,
	})
	r.expectSome(t, n)
}
