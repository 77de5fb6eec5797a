package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/lock"
)

// The lock.* figures: an uncontended lock/unlock cycle against etcd's
// concurrency.Mutex and against the physical floor (two raw transactions),
// and 16 separate clients contending for one lock, with the handoff time
// from Unlock to the next Lock returning.

func init() {
	Register(Group{
		Name: "lock",
		Figures: []string{
			"lock.uncontended.cycle_p50",
			"lock.uncontended.cycle_p50_floor",
			"lock.contended16.cycles_per_s",
			"lock.handoff_p99",
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
	err = Rounds(ctx, env, func(int) error {
		var dOurs, dTheirs, dFloor []time.Duration
		for range cycles {
			start := time.Now()
			h, err := m.Lock(ctx)
			if err != nil {
				return err
			}
			if err := h.Unlock(ctx); err != nil {
				return err
			}
			dOurs = append(dOurs, time.Since(start))

			start = time.Now()
			if err := em.Lock(ctx); err != nil {
				return err
			}
			if err := em.Unlock(ctx); err != nil {
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
			if _, err := floorCli.Txn(ctx).Then(clientv3.OpDelete(floorKey)).Commit(); err != nil {
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

	var oursRate, theirsRate, oursP99, theirsP99 []float64
	err = Rounds(ctx, env, func(int) error {
		rate, hand, err := contend(ctx, cs, dur, func(c *contender) (func() error, error) {
			h, err := c.m.Lock(ctx)
			if err != nil {
				return nil, err
			}
			return func() error { return h.Unlock(ctx) }, nil
		})
		if err != nil {
			return fmt.Errorf("concord: %w", err)
		}
		oursRate, oursP99 = append(oursRate, rate), append(oursP99, PercentileMs(hand, 99))

		rate, hand, err = contend(ctx, cs, dur, func(c *contender) (func() error, error) {
			if err := c.em.Lock(ctx); err != nil {
				return nil, err
			}
			return func() error { return c.em.Unlock(ctx) }, nil
		})
		if err != nil {
			return fmt.Errorf("etcd: %w", err)
		}
		theirsRate, theirsP99 = append(theirsRate, rate), append(theirsP99, PercentileMs(hand, 99))
		return nil
	})
	if err != nil {
		return nil, err
	}
	return []Result{
		Pair("lock.contended16.cycles_per_s", "1/s", Median(oursRate), Median(theirsRate), "concurrency.Mutex", false),
		Pair("lock.handoff_p99", "ms", Median(oursP99), Median(theirsP99), "concurrency.Mutex", true),
	}, nil
}

// contend runs every contender in a loop of lock → unlock for dur, and
// returns cycles per second and the handoff times: from a holder calling
// unlock to the next holder's lock returning.
func contend(ctx context.Context, cs []*contender, dur time.Duration, lockFn func(*contender) (func() error, error)) (float64, []time.Duration, error) {
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
				if err := unlock(); err != nil {
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
		return 0, nil, err
	}
	return float64(cycles.Load()) / elapsed.Seconds(), hand, firstErr
}

func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}
