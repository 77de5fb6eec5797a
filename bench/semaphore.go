package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/semaphore"
)

// The semaphore.* figures: 16 separate clients contending for 4 permits.
// etcd's concurrency package has no semaphore, so the figure stands alone.

func init() {
	Register(Group{
		Name:    "semaphore",
		Figures: []string{"semaphore.contended16_limit4.cycles_per_s"},
		Run:     runSemaphore,
	})
}

func runSemaphore(ctx context.Context, env *Env) ([]Result, error) {
	const n, limit = 16, 4
	const name = "bench/semaphore/contended"
	clis, err := env.Clients(n)
	if err != nil {
		return nil, err
	}
	sems := make([]*semaphore.Semaphore, n)
	for i, cli := range clis {
		k, err := leasekeeper.New(ctx, cli, leasekeeper.WithTTL(benchTTL))
		if err != nil {
			return nil, err
		}
		defer k.Close(context.WithoutCancel(ctx))
		sems[i] = semaphore.New(k, name, limit)
	}
	defer func() { _ = semaphore.Delete(context.WithoutCancel(ctx), clis[0], name) }()
	dur := time.Duration(env.Scale(3000, 800)) * time.Millisecond

	var rates []float64
	err = Rounds(ctx, env, "semaphore", func(ctx context.Context, _ Round) error {
		var (
			cycles   atomic.Int64
			mu       sync.Mutex // protects firstErr
			firstErr error
			wg       sync.WaitGroup
		)
		start := time.Now()
		stop := start.Add(dur)
		for _, s := range sems {
			wg.Go(func() {
				for time.Now().Before(stop) {
					p, err := s.Acquire(ctx, 1)
					if err == nil {
						cycles.Add(1)
						err = p.Release(ctx)
					}
					if err != nil {
						mu.Lock()
						firstErr = cmpErr(firstErr, err)
						mu.Unlock()
						return
					}
				}
			})
		}
		wg.Wait()
		if firstErr != nil {
			return fmt.Errorf("semaphore: %w", firstErr)
		}
		rates = append(rates, float64(cycles.Load())/time.Since(start).Seconds())
		return nil
	})
	if err != nil {
		return nil, err
	}
	return []Result{Single("semaphore.contended16_limit4.cycles_per_s", "1/s", Median(rates), false)}, nil
}
