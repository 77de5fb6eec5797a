package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/lock"
	"github.com/concordkit/concord/testcluster"
)

// The lock checkers. Workers in separate "processes" take the lock in turn
// and, while they hold it, repeat one step: read a set and a counter from
// etcd, then write the set with a new element and the counter plus one in
// one transaction guarded by the hold (Jepsen's lock-etcd-set, with a
// counter beside it), then read and write an in-process register with the
// hold's token.
//   - set: no acknowledged element is missing from the final set;
//   - register: the register accepts a write only with a token at least the
//     largest it has seen, so no accepted write is out of order and none is
//     based on a stale read;
//   - linearizability: the counter history (increments and reads from an
//     observer) is linearizable as a counter (porcupine).

// fencedRegister is a resource outside etcd protected by fencing tokens.
type fencedRegister struct {
	r           *report
	checkTokens bool // false: the unprotected variant accepts any token

	mu       sync.Mutex // protects the fields below
	maxTok   int64
	value    int64
	accepted int
	refused  int
}

// read returns the value for a holder with token tok, or false if the
// register has seen a newer token.
func (g *fencedRegister) read(tok int64) (int64, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.checkTokens && tok < g.maxTok {
		g.refused++
		return 0, false
	}
	g.maxTok = max(g.maxTok, tok)
	return g.value, true
}

// write sets the value to base+1 for a holder with token tok that read base.
func (g *fencedRegister) write(tok, base int64) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.checkTokens && tok < g.maxTok {
		g.refused++
		return false
	}
	if tok < g.maxTok {
		g.r.violate("register: accepted a write of token %d after token %d", tok, g.maxTok)
	}
	if base != g.value {
		g.r.violate("register: accepted a write of token %d based on value %d, but the value was %d (lost update)", tok, base, g.value)
	}
	g.maxTok = max(g.maxTok, tok)
	g.value = base + 1
	g.accepted++
	return true
}

type lockRun struct {
	workers int
	// The protections, each of which a test can switch off.
	ignoreContext bool          // holders work for tenure whatever their hold's context says
	unguarded     bool          // writes into etcd without Guard
	anyToken      bool          // the register accepts any token
	steps         int           // steps per holding, at most (when the context is honoured)
	stale         *atomic.Int64 // if set, receives the number of stale writes refused (guard and register)
	tenure        time.Duration
	nemesis       nemesisConfig
	duration      time.Duration
}

func runLock(t *testing.T, c *testcluster.Cluster, seed int64, cfg lockRun) (*report, *nemesis) {
	ctx := ctxT(t, cfg.duration+2*time.Minute)
	r := newReport(t, seed)
	base := "chaos/" + strings.ReplaceAll(t.Name(), "/", "_") + "/"
	name, setKey, ctrKey := base+"lock", base+"set", base+"counter"
	reg := &fencedRegister{r: r, checkTokens: !cfg.anyToken}
	hist := newHistory()

	keepers, closeKeepers := workloadKeepers(ctx, t, c, &cfg.nemesis, cfg.workers)
	defer closeKeepers()
	var holder atomic.Int64
	holder.Store(-1)
	cfg.nemesis.holder = func() int { return int(holder.Load()) }

	var acked sync.Map // element → struct{}
	var holds, refused, ambiguous, lockErrs atomic.Int64
	n := newNemesis(t, c, seed, cfg.nemesis)
	wctx, wstop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for i, k := range keepers {
		rng := rand.New(rand.NewPCG(uint64(seed), uint64(300+i)))
		wg.Go(func() {
			m := lock.New(k, name)
			cli := k.Client()
			seq := 0
			for wctx.Err() == nil {
				h, err := m.Lock(wctx)
				if err != nil {
					if wctx.Err() == nil {
						lockErrs.Add(1)
						pause(wctx, 20*time.Millisecond)
					}
					continue
				}
				holds.Add(1)
				holder.Store(int64(i))
				steps, end := 1+rng.IntN(max(cfg.steps, 1)), time.Now().Add(tenure(c, cfg.tenure))
				for s := 0; wctx.Err() == nil; s++ {
					if !cfg.ignoreContext && (s >= steps || h.Context().Err() != nil) {
						break
					}
					if cfg.ignoreContext && time.Now().After(end) {
						break
					}
					seq++
					elem := fmt.Sprintf("w%d.%d", i, seq)
					switch lockStep(wctx, r, cli, h, cfg, setKey, ctrKey, elem, hist, i, reg) {
					case stepAcked:
						acked.Store(elem, struct{}{})
					case stepRefused:
						refused.Add(1)
					case stepUnknown:
						ambiguous.Add(1)
					}
					pause(wctx, time.Duration(rng.IntN(10))*time.Millisecond)
				}
				holder.CompareAndSwap(int64(i), -1)
				uctx, cancel := context.WithTimeout(context.WithoutCancel(wctx), 3*time.Second)
				_ = h.Unlock(uctx)
				cancel()
			}
		})
	}
	// An observer reads the counter outside the lock, for the history.
	obs, err := c.NewClient()
	require.NoError(t, err)
	wg.Go(func() {
		for wctx.Err() == nil {
			call := hist.now()
			gctx, cancel := context.WithTimeout(wctx, 2*time.Second)
			resp, err := obs.Get(gctx, ctrKey)
			cancel()
			if err == nil {
				hist.add(cfg.workers, counterInput{}, counterOutput{value: counterValue(resp.Kvs)}, call, hist.now())
				r.ops.Add(1)
			}
			pause(wctx, 25*time.Millisecond)
		}
	})
	nctx, ncancel := context.WithTimeout(ctx, nemesisTime(c, cfg.duration))
	n.run(nctx)
	ncancel()
	wstop()
	wg.Wait()

	// set: every acknowledged element is in the final set.
	gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := c.Admin().Get(gctx, setKey)
	require.NoError(t, err)
	final := map[string]bool{}
	if len(resp.Kvs) > 0 {
		for e := range strings.SplitSeq(string(resp.Kvs[0].Value), ",") {
			final[e] = true
		}
	}
	var lost []string
	nAcked := 0
	acked.Range(func(k, _ any) bool {
		nAcked++
		if !final[k.(string)] {
			lost = append(lost, k.(string))
		}
		return true
	})
	if len(lost) > 0 {
		slices.Sort(lost)
		r.violate("set: %d of %d acknowledged elements lost, e.g. %v", len(lost), nAcked, lost[:min(5, len(lost))])
	}
	res, nops := hist.check(r, 30*time.Second)
	reg.mu.Lock()
	r.note("%d holds, %d set elements acknowledged (%d lost), %d in transit (unknown), %d writes refused by the guard; register: %d writes accepted, %d stale refused; counter history of %d operations: %s",
		holds.Load(), nAcked, len(lost), ambiguous.Load(), refused.Load(), reg.accepted, reg.refused, nops, res)
	reg.mu.Unlock()
	if cfg.stale != nil {
		cfg.stale.Store(refused.Load() + int64(reg.refused))
	}
	if holds.Load() < 2 {
		t.Errorf("fewer than two holds: the checkers checked nothing")
	}
	return r, n
}

type stepOutcome int

const (
	stepAcked   stepOutcome = iota // the write was applied
	stepRefused                    // the guard failed: the hold is gone
	stepUnknown                    // the write failed in transit
	stepFailed                     // the read failed; nothing was written
)

func counterValue(kvs []*mvccpb.KeyValue) int64 {
	if len(kvs) == 0 {
		return 0
	}
	v, _ := strconv.ParseInt(string(kvs[0].Value), 10, 64)
	return v
}

// lockStep does one step under hold h.
func lockStep(ctx context.Context, r *report, cli *clientv3.Client, h *lock.Hold, cfg lockRun, setKey, ctrKey, elem string, hist *history, client int, reg *fencedRegister) stepOutcome {
	// The register outside etcd, fenced by the token alone.
	if v, ok := reg.read(h.Token()); ok && reg.write(h.Token(), v) {
		r.ops.Add(1)
	}
	wctx := h.Context()
	if cfg.ignoreContext {
		wctx = context.WithoutCancel(ctx)
	}
	call := hist.now()
	rctx, cancel := context.WithTimeout(wctx, 3*time.Second)
	read, err := cli.Txn(rctx).Then(clientv3.OpGet(setKey), clientv3.OpGet(ctrKey)).Commit()
	cancel()
	if err != nil {
		return stepFailed
	}
	set := ""
	if kvs := read.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		set = string(kvs[0].Value) + ","
	}
	ctr := counterValue(read.Responses[1].GetResponseRange().Kvs)
	puts := []clientv3.Op{clientv3.OpPut(setKey, set+elem), clientv3.OpPut(ctrKey, strconv.FormatInt(ctr+1, 10))}
	var cmps []clientv3.Cmp
	if !cfg.unguarded {
		cmps = h.Guard()
	}
	wctx2, cancel := context.WithTimeout(wctx, 5*time.Second)
	resp, err := cli.Txn(wctx2).If(cmps...).Then(puts...).Commit()
	cancel()
	out := stepAcked
	switch {
	case err != nil:
		hist.add(client, counterInput{inc: true}, counterOutput{unknown: true}, call, 0)
		out = stepUnknown
	case !resp.Succeeded:
		hist.add(client, counterInput{}, counterOutput{value: ctr}, call, hist.now())
		return stepRefused
	default:
		hist.add(client, counterInput{inc: true}, counterOutput{value: ctr + 1}, call, hist.now())
		r.ops.Add(1)
	}
	return out
}

func TestChaosLock(t *testing.T) {
	s := seed(t)
	c := testcluster.New(t)
	r, n := runLock(t, c, s, lockRun{
		workers: 3, steps: 8,
		nemesis: defaultNemesis(), duration: chaosDuration(6 * time.Second),
	})
	r.expectNone(t, n)
}

// TestChaosLockCheckersCatchUnfencedWork runs holders that ignore their
// hold's context, write without Guard, and a register that accepts any
// token: each checker must report what follows.
func TestChaosLockCheckersCatchUnfencedWork(t *testing.T) {
	s := seed(t)
	c := testcluster.New(t)
	cfg := defaultNemesis()
	cfg.kinds = nil
	cfg.cutGap = span{100 * time.Millisecond, 300 * time.Millisecond}
	cfg.holderAlways = true
	r, n := runLock(t, c, s, lockRun{
		workers: 2, ignoreContext: true, unguarded: true, anyToken: true, tenure: 3 * time.Second,
		nemesis: cfg, duration: 4500 * time.Millisecond,
	})
	r.expectSome(t, n)
	for _, kind := range []string{"set:", "register:", "linearizability:"} {
		if r.countPrefix(kind) == 0 {
			t.Errorf("the %s checker reported nothing on unfenced work", strings.TrimSuffix(kind, ":"))
		}
	}
}

// TestChaosLockFencingStopsHoldersThatIgnoreContext runs holders that ignore
// their hold's context, as a paused process would, but keep the fences:
// writes through Guard, a register that checks tokens. Jepsen found etcd
// locks unsafe alone and safe fenced; here the guard and the register must
// refuse the stale holders' writes, and nothing may be lost.
func TestChaosLockFencingStopsHoldersThatIgnoreContext(t *testing.T) {
	s := seed(t)
	c := testcluster.New(t)
	cfg := defaultNemesis()
	cfg.kinds = nil
	cfg.cutGap = span{100 * time.Millisecond, 300 * time.Millisecond}
	cfg.holderAlways = true
	var stale atomic.Int64
	r, n := runLock(t, c, s, lockRun{
		workers: 2, ignoreContext: true, tenure: 3 * time.Second, stale: &stale,
		nemesis: cfg, duration: 4500 * time.Millisecond,
	})
	r.expectNone(t, n)
	if stale.Load() == 0 {
		t.Errorf("no stale write was attempted: the fences were not exercised")
	}
}
