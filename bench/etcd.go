package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/concordkit/concord/testcluster"
)

// The etcd.* figures measure etcd itself and its concurrency package on the
// bench cluster: the baselines that concord's figures are compared with.

func init() {
	Register(Group{
		Name:    "etcd-ops",
		Figures: []string{"etcd.put_p50", "etcd.txn_p50", "etcd.watch_deliver_p99", "etcd.lease_keepalive_p50"},
		Run:     runEtcdOps,
	})
	Register(Group{
		Name:    "etcd-mutex",
		Figures: []string{"etcd.mutex.uncontended_cycle_p50", "etcd.mutex.contended16_cycles_per_s", "etcd.mutex.handoff_p99"},
		Run:     runEtcdMutex,
	})
	Register(Group{
		Name:    "etcd-election",
		Figures: []string{"etcd.election.handoff_fresh_p99"},
		Run:     runEtcdElection,
	})
	Register(Group{
		Name:    "testcluster",
		Figures: []string{"testcluster.ready3_p50", "testcluster.teardown3_p50"},
		Faults:  []string{"testcluster.ready3_p50", "testcluster.teardown3_p50"},
		Run:     runTestcluster,
	})
}

func runEtcdOps(ctx context.Context, env *Env) ([]Result, error) {
	clis, err := env.Clients(2)
	if err != nil {
		return nil, err
	}
	cli, watcher := clis[0], clis[1]
	n := env.Scale(500, 50)
	var put, txn, watch, ka []float64
	err = Rounds(ctx, env, "etcd.ops", func(ctx context.Context, r Round) error {
		key := "bench/etcd/" + r.ID()
		defer func() { _, _ = cli.Delete(context.WithoutCancel(ctx), key, clientv3.WithPrefix()) }()
		var ds []time.Duration
		for i := range n {
			t0 := time.Now()
			if _, err := cli.Put(ctx, key, fmt.Sprint(i)); err != nil {
				return err
			}
			ds = append(ds, time.Since(t0))
		}
		putP50 := PercentileMs(ds, 50)

		ds = ds[:0]
		for i := range n {
			t0 := time.Now()
			if _, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.Version(key), ">", 0)).
				Then(clientv3.OpPut(key, fmt.Sprint(i))).Commit(); err != nil {
				return err
			}
			ds = append(ds, time.Since(t0))
		}
		txnP50 := PercentileMs(ds, 50)

		// Put on one client, measured until a watch on another client (a
		// separate connection, round-robin to any member) delivers it.
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		wkey := key + "/w"
		wch := watcher.Watch(wctx, wkey, clientv3.WithCreatedNotify())
		if r := <-wch; !r.Created {
			return fmt.Errorf("watch not created: %w", r.Err())
		}
		ds = ds[:0]
		for i := range n {
			t0 := time.Now()
			if _, err := cli.Put(ctx, wkey, fmt.Sprint(i)); err != nil {
				return err
			}
			select {
			case r := <-wch:
				if r.Err() != nil {
					return r.Err()
				}
			case <-time.After(5 * time.Second):
				return fmt.Errorf("watch delivered nothing in 5 s")
			}
			ds = append(ds, time.Since(t0))
		}
		watchP99 := PercentileMs(ds, 99)
		cancel()

		lease, err := cli.Grant(ctx, 60)
		if err != nil {
			return err
		}
		defer func() { _, _ = cli.Revoke(context.WithoutCancel(ctx), lease.ID) }()
		ds = ds[:0]
		for range n {
			t0 := time.Now()
			if _, err := cli.KeepAliveOnce(ctx, lease.ID); err != nil {
				return err
			}
			ds = append(ds, time.Since(t0))
		}
		put, txn, watch = append(put, putP50), append(txn, txnP50), append(watch, watchP99)
		ka = append(ka, PercentileMs(ds, 50))
		return nil
	})
	return []Result{
		BaselineOnly("etcd.put_p50", "ms", Median(put), "clientv3.Put", true),
		BaselineOnly("etcd.txn_p50", "ms", Median(txn), "clientv3.Txn compare+put", true),
		BaselineOnly("etcd.watch_deliver_p99", "ms", Median(watch), "clientv3.Watch", true),
		BaselineOnly("etcd.lease_keepalive_p50", "ms", Median(ka), "clientv3.KeepAliveOnce", true),
	}, err
}

// EtcdMutexCycle measures one Lock+Unlock of concurrency.Mutex, uncontended,
// on one session: the baseline for lock.uncontended.cycle_p50.
func EtcdMutexCycle(ctx context.Context, s *concurrency.Session, name string, n int) (float64, error) {
	m := concurrency.NewMutex(s, name)
	ds := make([]time.Duration, 0, n)
	for range n {
		t0 := time.Now()
		if err := m.Lock(ctx); err != nil {
			return 0, err
		}
		if err := release(ctx, m.Unlock); err != nil {
			return 0, err
		}
		ds = append(ds, time.Since(t0))
	}
	return PercentileMs(ds, 50), nil
}

// EtcdMutexContended runs contenders sessions (one client each) locking one
// name for d and returns cycles per second and the handoff durations (Unlock
// called → the next Lock returns): the baseline for lock.contended16.*.
func EtcdMutexContended(ctx context.Context, sessions []*concurrency.Session, name string, d time.Duration) (float64, []time.Duration, error) {
	var (
		cycles    atomic.Int64
		mu        sync.Mutex // protects unlockAt, handoffs
		unlockAt  time.Time
		handoffs  []time.Duration
		firstErr  error
		errOnce   sync.Once
		wg        sync.WaitGroup
		runCtx, s = context.WithTimeout(ctx, d)
	)
	defer s()
	for _, sess := range sessions {
		wg.Go(func() {
			m := concurrency.NewMutex(sess, name)
			for runCtx.Err() == nil {
				if err := m.Lock(runCtx); err != nil {
					if runCtx.Err() == nil {
						errOnce.Do(func() { firstErr = err })
					}
					return
				}
				now := time.Now()
				mu.Lock()
				if !unlockAt.IsZero() {
					handoffs = append(handoffs, now.Sub(unlockAt))
				}
				mu.Unlock()
				cycles.Add(1)
				mu.Lock()
				unlockAt = time.Now()
				mu.Unlock()
				// Unlock with a context of its own: the run's end must not
				// leave the key behind.
				if err := release(ctx, m.Unlock); err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
			}
		})
	}
	wg.Wait()
	return float64(cycles.Load()) / d.Seconds(), handoffs, firstErr
}

func sessions(env *Env, n int) ([]*concurrency.Session, func(), error) {
	clis, err := env.Clients(n)
	if err != nil {
		return nil, nil, err
	}
	var out []*concurrency.Session
	closeAll := func() {
		for _, s := range out {
			_ = s.Close()
		}
	}
	for _, cli := range clis {
		s, err := concurrency.NewSession(cli, concurrency.WithTTL(10))
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		out = append(out, s)
	}
	return out, closeAll, nil
}

func runEtcdMutex(ctx context.Context, env *Env) ([]Result, error) {
	ss, closeAll, err := sessions(env, 16)
	if err != nil {
		return nil, err
	}
	defer closeAll()
	var cycle, rate, handoff []float64
	d := time.Duration(env.Scale(3, 1)) * time.Second
	err = Rounds(ctx, env, "etcd.mutex", func(ctx context.Context, r Round) error {
		c, err := EtcdMutexCycle(ctx, ss[0], "bench/etcd-mutex/u"+r.ID(), env.Scale(200, 30))
		if err != nil {
			return err
		}
		rt, hs, err := EtcdMutexContended(ctx, ss, "bench/etcd-mutex/c"+r.ID(), d)
		if err != nil {
			return err
		}
		cycle, rate = append(cycle, c), append(rate, rt)
		handoff = append(handoff, PercentileMs(hs, 99))
		return nil
	})
	return []Result{
		BaselineOnly("etcd.mutex.uncontended_cycle_p50", "ms", Median(cycle), "concurrency.Mutex", true),
		BaselineOnly("etcd.mutex.contended16_cycles_per_s", "1/s", Median(rate), "concurrency.Mutex", false),
		BaselineOnly("etcd.mutex.handoff_p99", "ms", Median(handoff), "concurrency.Mutex", true),
	}, err
}

// EtcdElectionHandoff measures, n times, Resign called → the next
// candidate's Campaign returns, where that candidate started campaigning
// `waited` before the resignation: the baseline for election.handoff_*.
func EtcdElectionHandoff(ctx context.Context, a, b *concurrency.Session, name string, waited time.Duration, n int) ([]time.Duration, error) {
	var ds []time.Duration
	ea := concurrency.NewElection(a, name)
	eb := concurrency.NewElection(b, name)
	for range n {
		if err := ea.Campaign(ctx, "a"); err != nil {
			return nil, err
		}
		won := make(chan error, 1)
		var wonAt time.Time
		go func() {
			err := eb.Campaign(ctx, "b")
			wonAt = time.Now()
			won <- err
		}()
		// Let b's Campaign reach its wait: it must have created its key and
		// started watching before a resigns.
		t := time.NewTimer(waited)
		<-t.C
		resignAt := time.Now()
		if err := ea.Resign(ctx); err != nil {
			return nil, err
		}
		if err := <-won; err != nil {
			return nil, err
		}
		ds = append(ds, wonAt.Sub(resignAt))
		if err := eb.Resign(ctx); err != nil {
			return nil, err
		}
	}
	return ds, nil
}

func runEtcdElection(ctx context.Context, env *Env) ([]Result, error) {
	ss, closeAll, err := sessions(env, 2)
	if err != nil {
		return nil, err
	}
	defer closeAll()
	var fresh []float64
	err = Rounds(ctx, env, "etcd.election", func(ctx context.Context, r Round) error {
		ds, err := EtcdElectionHandoff(ctx, ss[0], ss[1], "bench/etcd-election/"+r.ID(), 5*time.Millisecond, env.Scale(20, 5))
		if err != nil {
			return err
		}
		fresh = append(fresh, PercentileMs(ds, 99))
		return nil
	})
	return []Result{
		BaselineOnly("etcd.election.handoff_fresh_p99", "ms", Median(fresh), "concurrency.Election", true),
	}, err
}

// runTestcluster times a fresh cluster like the bench's own (embedded or
// processes, same timings) from Start to serving, and its Close.
func runTestcluster(ctx context.Context, env *Env) ([]Result, error) {
	var ready, teardown []float64
	err := Rounds(ctx, env, "testcluster", func(ctx context.Context, _ Round) error {
		t0 := time.Now()
		c, err := testcluster.Start(ctx, env.clusterOpts...)
		if err != nil {
			return err
		}
		r := float64(time.Since(t0)) / float64(time.Millisecond)
		t1 := time.Now()
		if err := c.Close(); err != nil {
			return err
		}
		ready = append(ready, r)
		teardown = append(teardown, float64(time.Since(t1))/float64(time.Millisecond))
		return nil
	})
	return []Result{
		Single("testcluster.ready3_p50", "ms", Median(ready), true),
		Single("testcluster.teardown3_p50", "ms", Median(teardown), true),
	}, err
}
