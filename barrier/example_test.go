package barrier_test

import (
	"context"
	"fmt"
	"sync"

	"github.com/concordkit/concord/barrier"
)

func ExampleLatch() {
	ctx := context.Background()
	l := barrier.NewLatch(cluster.Client(), "examples/latch", 3)
	defer l.Delete(ctx)

	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = l.CountDown(ctx) // e.g. one worker done
		}()
	}
	if err := l.Wait(ctx); err != nil {
		fmt.Println(err)
		return
	}
	wg.Wait()
	n, _ := l.Count(ctx)
	fmt.Println("open; remaining:", n)
	// Output:
	// open; remaining: 0
}
