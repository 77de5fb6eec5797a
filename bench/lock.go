package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/concordkit/concord/internal/retry"
	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/lock"
)

// The lock.* figures: an uncontended lock/unlock cycle against etcd's
// concurrency.Mutex and against the physical floor (two raw transactions),
// and 16 separate clients contending for one lock, with the handoff time
// from Unlock to the next Lock returning, the raft entries each cycle costs,
// and the handoff's p50 in uncontended Puts (about the raft commits a
// handoff waits for in a row).

func init() {
	Register(Group{
		Name: "lock",
		Figures: []string{
			"lock.uncontended.cycle_p50",
			"lock.uncontended.cycle_p50_floor",
			"lock.contended16.cycles_per_s",
			"lock.handoff_p99",
			"lock.contended16.raft_entries_per_cycle",
			"lock.handoff_p50",
			"lock.handoff_p50_in_puts",
		},
		Run: runLock,
	})
}

const benchTTL = 10 * time.Second

func runLock(ctx context.Context, env *Env) ([]Result, error) {
	var out []Result
	rs, err := benchLockUncontended(ctx, env)
	out = append(out, rs...)
	if err != nil {
		return out, fmt.Errorf("uncontended: %w", err)
	}
	rs, err = benchLockContended(ctx, env)
	out = append(out, rs...)
	if err != nil {
		return out, fmt.Errorf("contended: %w", err)
	}
	return out, nil
}

// benchLockUncontended alternates, cycle by cycle, a concord Mutex, etcd's
// Mutex and the raw floor (a put-if-absent transaction with the lease, then
// a delete transaction).
//
// Each of the three has a client of its own. A client sends its requests to
// the members in turn, and a cycle of each is two requests: on one shared
// client the three would make six requests per round, so each would always
// send its lock to one member and its unlock to the next, the same two
// every cycle, and whichever of the three never reached the leader (its
// requests forwarded by a follower) would lose by that alone. On a client of
// its own, each goes round all three members alike.
func benchLockUncontended(ctx context.Context, env *Env) ([]Result, error) {
	clis, err := env.Clients(3)
	if err != nil {
		return nil, err
	}
	k, err := leasekeeper.New(ctx, clis[0], leasekeeper.WithTTL(benchTTL))
	if err != nil {
		return nil, err
	}
	defer k.Close(context.WithoutCancel(ctx))
	sess, err := concurrency.NewSession(clis[1], concurrency.WithTTL(int(benchTTL/time.Second)))
	if err != nil {
		return nil, err
	}
	defer sess.Close()
	const name = "bench/lock/uncontended"
	m := lock.New(k, name)
	em := concurrency.NewMutex(sess, "bench/etcdlock/uncontended")
	floorKey, floorCli := "bench/lock/floor", clis[2]
	cycles := env.Scale(400, 60)

	var ours, theirs, floor []float64
	err = Rounds(ctx, env, "lock.uncontended", func(ctx context.Context, _ Round) error {
		var dOurs, dTheirs, dFloor []time.Duration
		for range cycles {
			start := time.Now()
			h, err := m.Lock(ctx)
			if err != nil {
				return err
			}
			if err := release(ctx, h.Unlock); err != nil {
				return err
			}
			dOurs = append(dOurs, time.Since(start))

			start = time.Now()
			if err := em.Lock(ctx); err != nil {
				return err
			}
			if err := release(ctx, em.Unlock); err != nil {
				return err
			}
			dTheirs = append(dTheirs, time.Since(start))

			start = time.Now()
			resp, err := floorCli.Txn(ctx).
				If(clientv3.Compare(clientv3.CreateRevision(floorKey), "=", 0)).
				Then(clientv3.OpPut(floorKey, "", clientv3.WithLease(sess.Lease()))).Commit()
			if err != nil {
				return err
			}
			if !resp.Succeeded {
				return fmt.Errorf("floor key %s exists", floorKey)
			}
			if err := release(ctx, func(ctx context.Context) error {
				_, err := floorCli.Txn(ctx).Then(clientv3.OpDelete(floorKey)).Commit()
				return err
			}); err != nil {
				return err
			}
			dFloor = append(dFloor, time.Since(start))
		}
		ours = append(ours, PercentileMs(dOurs, 50))
		theirs = append(theirs, PercentileMs(dTheirs, 50))
		floor = append(floor, PercentileMs(dFloor, 50))
		return nil
	})
	if err != nil {
		return nil, err
	}
	return []Result{
		Pair("lock.uncontended.cycle_p50", "ms", Median(ours), Median(theirs), "concurrency.Mutex", true),
		Pair("lock.uncontended.cycle_p50_floor", "ms", Median(ours), Median(floor), "raw txn put+delete", true),
	}, nil
}

// contender is one of the 16: its own client, and its own keeper or session.
type contender struct {
	k    *leasekeeper.Keeper
	m    *lock.Mutex
	sess *concurrency.Session
	em   *concurrency.Mutex
}

// benchLockContended runs 16 contenders for one lock for a fixed time, first
// with concord's Mutex, then with etcd's, in every round. Each contender is
// a separate client with its own lease, as 16 processes would be.
func benchLockContended(ctx context.Context, env *Env) ([]Result, error) {
	const n = 16
	clis, err := env.Clients(n)
	if err != nil {
		return nil, err
	}
	cs := make([]*contender, n)
	for i, cli := range clis {
		k, err := leasekeeper.New(ctx, cli, leasekeeper.WithTTL(benchTTL))
		if err != nil {
			return nil, err
		}
		defer k.Close(context.WithoutCancel(ctx))
		sess, err := concurrency.NewSession(cli, concurrency.WithTTL(int(benchTTL/time.Second)))
		if err != nil {
			return nil, err
		}
		defer sess.Close()
		cs[i] = &contender{
			k:    k,
			m:    lock.New(k, "bench/lock/contended"),
			sess: sess,
			em:   concurrency.NewMutex(sess, "bench/etcdlock/contended"),
		}
	}
	dur := time.Duration(env.Scale(3000, 800)) * time.Millisecond

	var oursRate, theirsRate, oursP99, theirsP99, oursEntries, theirsEntries []float64
	var oursP50, theirsP50, oursInPuts, theirsInPuts []float64
	err = Rounds(ctx, env, "lock.contended16", func(ctx context.Context, r Round) error {
		put, err := putP50(ctx, clis[0], "bench/lock/put/"+r.ID(), 50)
		if err != nil {
			return err
		}
		idx := env.raft.raftIndex(ctx)
		ours, err := contend(ctx, cs, dur, func(c *contender) (func(context.Context) error, error) {
			h, err := c.m.Lock(ctx)
			if err != nil {
				return nil, err
			}
			return h.Unlock, nil
		})
		if err != nil {
			return fmt.Errorf("concord: %w", err)
		}
		oe := perCycle(env.raft.raftIndex(ctx), idx, ours.cycles)

		idx = env.raft.raftIndex(ctx)
		theirs, err := contend(ctx, cs, dur, func(c *contender) (func(context.Context) error, error) {
			if err := c.em.Lock(ctx); err != nil {
				return nil, err
			}
			return c.em.Unlock, nil
		})
		if err != nil {
			return fmt.Errorf("etcd: %w", err)
		}
		te := perCycle(env.raft.raftIndex(ctx), idx, theirs.cycles)
		oursRate, oursP99 = append(oursRate, ours.rate), append(oursP99, PercentileMs(ours.hand, 99))
		theirsRate, theirsP99 = append(theirsRate, theirs.rate), append(theirsP99, PercentileMs(theirs.hand, 99))
		oursEntries, theirsEntries = append(oursEntries, oe), append(theirsEntries, te)
		o50, t50 := PercentileMs(ours.hand, 50), PercentileMs(theirs.hand, 50)
		oursP50, theirsP50 = append(oursP50, o50), append(theirsP50, t50)
		oursInPuts, theirsInPuts = append(oursInPuts, o50/put), append(theirsInPuts, t50/put)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return []Result{
		Pair("lock.contended16.cycles_per_s", "1/s", Median(oursRate), Median(theirsRate), "concurrency.Mutex", false),
		Pair("lock.handoff_p99", "ms", Median(oursP99), Median(theirsP99), "concurrency.Mutex", true),
		Pair("lock.contended16.raft_entries_per_cycle", "1", Median(oursEntries), Median(theirsEntries), "concurrency.Mutex", true),
		Pair("lock.handoff_p50", "ms", Median(oursP50), Median(theirsP50), "concurrency.Mutex", true),
		Pair("lock.handoff_p50_in_puts", "puts", Median(oursInPuts), Median(theirsInPuts), "concurrency.Mutex", true),
	}, nil
}

// putP50 returns the p50 of n Puts of key, deleted afterwards: the time of
// one raft commit as a client sees it. A handoff's p50 divided by it is
// about how many commits (each a disk sync on a real cluster) a handoff
// waits for one after another; the floor is one, the releasing delete.
func putP50(ctx context.Context, cli *clientv3.Client, key string, n int) (float64, error) {
	defer func() { _, _ = cli.Delete(context.WithoutCancel(ctx), key) }()
	ds := make([]time.Duration, 0, n)
	for i := range n {
		t0 := time.Now()
		if _, err := cli.Put(ctx, key, fmt.Sprint(i)); err != nil {
			return 0, err
		}
		ds = append(ds, time.Since(t0))
	}
	return PercentileMs(ds, 50), nil
}

// contended is what one side did in a run of contend.
type contended struct {
	rate   float64         // cycles per second
	cycles int64           // lock → unlock cycles completed
	hand   []time.Duration // handoffs: a holder calling unlock → the next holder's lock returning
}

// contend runs every contender in a loop of lock → unlock for dur.
func contend(ctx context.Context, cs []*contender, dur time.Duration, lockFn func(*contender) (func(context.Context) error, error)) (contended, error) {
	var (
		cycles    atomic.Int64
		unlocking atomic.Int64 // unix ns when the last holder called unlock; 0 at start
		mu        sync.Mutex   // protects hand, firstErr
		hand      []time.Duration
		firstErr  error
		wg        sync.WaitGroup
	)
	stop := time.Now().Add(dur)
	start := time.Now()
	for _, c := range cs {
		wg.Go(func() {
			for time.Now().Before(stop) {
				unlock, err := lockFn(c)
				if err != nil {
					mu.Lock()
					firstErr = cmpErr(firstErr, err)
					mu.Unlock()
					return
				}
				got := time.Now()
				if u := unlocking.Load(); u != 0 {
					mu.Lock()
					hand = append(hand, got.Sub(time.Unix(0, u)))
					mu.Unlock()
				}
				cycles.Add(1)
				unlocking.Store(time.Now().UnixNano())
				if err := release(ctx, unlock); err != nil {
					mu.Lock()
					firstErr = cmpErr(firstErr, err)
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := ctx.Err(); err != nil {
		return contended{}, err
	}
	n := cycles.Load()
	return contended{rate: float64(n) / elapsed.Seconds(), cycles: n, hand: hand}, firstErr
}

// release calls unlock, and again while it fails with a transient error,
// with a context of its own: a holder that gave up on its unlock would keep
// the lock (its lease lives on), and the rest of the round, and the round
// run again after this one failed, would wait behind it. It returns the
// first error, so that the round still counts as failed and is retried.
func release(ctx context.Context, unlock func(context.Context) error) error {
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	first := unlock(uctx)
	for err := first; err != nil && retry.Retriable(err) && uctx.Err() == nil; {
		time.Sleep(50 * time.Millisecond)
		err = unlock(uctx)
	}
	return first
}

// perCycle is the raft entries committed between the indexes start and
// end per lock cycle: on a real cluster each is a disk sync and a round of
// replication, so it is what the handoff rate is made of. It counts every
// entry, not only those on the critical path of a handoff (0: unknown).
func perCycle(end, start uint64, cycles int64) float64 {
	if start == 0 || end < start || cycles == 0 {
		return 0
	}
	return float64(end-start) / float64(cycles)
}

func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}
