package main

import (
	"context"
	"fmt"
	"time"

	"github.com/concordkit/concord/cron"
	"github.com/concordkit/concord/leasekeeper"
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

	// The first second after election may include the campaign; skip it.
	if _, err := nextLag(ctx, lags, done); err != nil {
		return nil, err
	}
	for len(lags) > 0 {
		<-lags
	}
	perRound := jobs * env.Scale(4, 2)
	var p99 []float64
	err = Rounds(ctx, env, "cron.fire_lag", func(ctx context.Context, _ Round) error {
		var ds []time.Duration
		for range perRound {
			d, err := nextLag(ctx, lags, done)
			if err != nil {
				return err
			}
			ds = append(ds, d)
		}
		p99 = append(p99, PercentileMs(ds, 99))
		return nil
	})
	if err != nil {
		return nil, err
	}
	return []Result{Single("cron.fire_lag_p99", "ms", Median(p99), true)}, nil
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
