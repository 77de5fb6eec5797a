package semaphore_test

import (
	"context"
	"fmt"
	"time"

	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/semaphore"
)

// Two permits of three for one job; a third is free for others, a fourth is
// not.
func ExampleSemaphore() {
	ctx := context.Background()
	k, err := leasekeeper.New(ctx, cluster.Client(), leasekeeper.WithTTL(5*time.Second))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer k.Close(context.WithoutCancel(ctx))
	defer semaphore.Delete(context.WithoutCancel(ctx), cluster.Client(), "/examples/gpus")

	s := semaphore.New(k, "/examples/gpus", 3)
	p, err := s.Acquire(ctx, 2)
	if err != nil {
		fmt.Println(err)
		return
	}
	q, err := s.TryAcquire(ctx, 1)
	fmt.Println("third permit:", err)
	_, err = s.TryAcquire(ctx, 1)
	fmt.Println("fourth permit:", err)

	info, _ := semaphore.Inspect(ctx, cluster.Client(), "/examples/gpus")
	fmt.Println("in use:", info.InUse, "of", info.Limit)
	_ = q.Release(ctx)
	_ = p.Release(ctx)
	// Output:
	// third permit: <nil>
	// fourth permit: semaphore: no permits available
	// in use: 3 of 3
}
