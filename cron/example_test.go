package cron_test

import (
	"context"
	"fmt"
	"time"

	"github.com/concordkit/concord/cron"
	"github.com/concordkit/concord/leasekeeper"
)

func ExampleScheduler() {
	ctx := context.Background()
	cli := cluster.Client()
	k, err := leasekeeper.New(ctx, cli, leasekeeper.WithTTL(2*time.Second))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer k.Close(ctx)

	s := cron.New(k, "examples/cron")
	ran := make(chan struct{})
	err = s.Add("report", "@daily", func(ctx context.Context, r cron.Run) error {
		fmt.Println("ran", r.Job, "triggered:", r.Trigger)
		close(ran)
		return nil
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	// Any process (or the CLI) can ask the leader to run a job now.
	if err := cron.Trigger(ctx, cli, "examples/cron", "report"); err != nil {
		fmt.Println(err)
		return
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(rctx) }()
	<-ran
	stop()
	<-done // Run returns after the runs it started have finished

	st, err := cron.Status(ctx, cli, "examples/cron")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(st[0].Job, st[0].Outcome, st[0].Next.After(time.Now()))
	_ = cron.Delete(ctx, cli, "examples/cron")
	// Output:
	// ran report triggered: true
	// report ok true
}
