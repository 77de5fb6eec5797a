package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/concordkit/concord/cron"
	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/queue"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// cron.fire_lag_p99: from a job's scheduled time to its fn starting on the
// leader, with 10 jobs due every second on one leader (each run claims its
// time with one fenced transaction first). etcd has no scheduler to compare
// with.

func init() {
	Register(Group{
		Name:    "cron",
		Figures: []string{"cron.fire_lag_p99"},
		Run:     runCron,
	})
}

func runCron(ctx context.Context, env *Env) ([]Result, error) {
	const name = "bench/cron"
	const jobs = 10
	cli, err := env.NewClient()
	if err != nil {
		return nil, err
	}
	k, err := leasekeeper.New(ctx, cli, leasekeeper.WithTTL(benchTTL))
	if err != nil {
		return nil, err
	}
	defer k.Close(context.WithoutCancel(ctx))
	defer func() { _ = cron.Delete(context.WithoutCancel(ctx), cli, name) }()

	lags := make(chan time.Duration, 1024)
	s := cron.New(k, name)
	for i := range jobs {
		if err := s.Add(fmt.Sprintf("job%d", i), "* * * * * *", func(_ context.Context, r cron.Run) error {
			select {
			case lags <- time.Since(r.Time):
			default:
			}
			return nil
		}); err != nil {
			return nil, err
		}
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(rctx) }()
	defer func() {
		cancel()
		<-done
	}()

	_, p99, err := lagRounds(ctx, env, "cron.fire_lag", lags, done, jobs*env.Scale(4, 2))
	if err != nil {
		return nil, err
	}
	return []Result{Single("cron.fire_lag_p99", "ms", Median(p99), true)}, nil
}

// lagRounds takes perRound lags a round, after skipping the first second
// after election (it may include the campaign), and returns each round's
// p50 and p99 in milliseconds.
func lagRounds(ctx context.Context, env *Env, label string, lags <-chan time.Duration, done <-chan error, perRound int) (p50, p99 []float64, err error) {
	if _, err := nextLag(ctx, lags, done); err != nil {
		return nil, nil, err
	}
	for len(lags) > 0 {
		<-lags
	}
	err = Rounds(ctx, env, label, func(ctx context.Context, _ Round) error {
		var ds []time.Duration
		for range perRound {
			d, err := nextLag(ctx, lags, done)
			if err != nil {
				return err
			}
			ds = append(ds, d)
		}
		p50 = append(p50, PercentileMs(ds, 50))
		p99 = append(p99, PercentileMs(ds, 99))
		return nil
	})
	return p50, p99, err
}

func nextLag(ctx context.Context, lags <-chan time.Duration, done <-chan error) (time.Duration, error) {
	select {
	case d := <-lags:
		return d, nil
	case err := <-done:
		return 0, fmt.Errorf("scheduler stopped: %w", err)
	case <-time.After(10 * time.Second):
		return 0, fmt.Errorf("no run within 10 s")
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// cron.dispatch_lag_p50/p99: from a dispatched job's scheduled time to a
// worker's Dequeue returning its task: 10 jobs due every second, enqueued
// by the leader in each time's claim (AddDispatch), 2 workers, each its own
// client and lease, waiting in Dequeue. The leader-run fire lag of the
// same run is the reference: the difference is what dispatching costs (one
// watch event to the workers and the queue's claim transaction).

func init() {
	Register(Group{
		Name:    "cron_dispatch",
		Figures: []string{"cron.dispatch_lag_p50", "cron.dispatch_lag_p99"},
		Run:     runCronDispatch,
	})
}

func runCronDispatch(ctx context.Context, env *Env) ([]Result, error) {
	const name = "bench/cron-dispatch"
	const qname = "bench/cron-dispatch-q"
	const jobs, workers = 10, 2
	clis, err := env.Clients(1 + workers)
	if err != nil {
		return nil, err
	}
	keepers := make([]*leasekeeper.Keeper, len(clis))
	for i, cli := range clis {
		if keepers[i], err = leasekeeper.New(ctx, cli, leasekeeper.WithTTL(benchTTL)); err != nil {
			return nil, err
		}
		defer keepers[i].Close(context.WithoutCancel(ctx))
	}
	defer func() {
		_ = cron.Delete(context.WithoutCancel(ctx), clis[0], name)
		_, _ = clis[0].Delete(context.WithoutCancel(ctx), qname, clientv3.WithPrefix())
	}()

	lq := queue.New(clis[0], qname)
	defer lq.Close()
	s := cron.New(keepers[0], name)
	for i := range jobs {
		if err := s.AddDispatch(fmt.Sprintf("job%d", i), "* * * * * *", lq); err != nil {
			return nil, err
		}
	}
	lags := make(chan time.Duration, 1024)
	wctx, stopWorkers := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		stopWorkers()
		wg.Wait()
	}()
	for w := 1; w <= workers; w++ {
		q := queue.New(clis[w], qname)
		defer q.Close()
		wg.Go(func() {
			for {
				t, err := q.Dequeue(wctx, keepers[w])
				if err != nil {
					return
				}
				if d, err := cron.DecodeDispatched(t.Payload); err == nil {
					select {
					case lags <- time.Since(d.Time):
					default:
					}
				}
				_ = t.Ack(wctx)
			}
		})
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(rctx) }()
	defer func() {
		cancel()
		<-done
	}()

	p50, p99, err := lagRounds(ctx, env, "cron.dispatch_lag", lags, done, jobs*env.Scale(4, 2))
	if err != nil {
		return nil, err
	}
	return []Result{
		Single("cron.dispatch_lag_p50", "ms", Median(p50), true),
		Single("cron.dispatch_lag_p99", "ms", Median(p99), true),
	}, nil
}
