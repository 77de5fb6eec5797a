package queue_test

import (
	"context"
	"fmt"
	"time"

	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/queue"
)

// A producer enqueues two tasks, the second more urgent; a worker takes the
// urgent one first, reports progress and acknowledges both.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cli := cluster.Client()

	q := queue.New(cli, "/examples/thumbnails")
	defer q.Close()
	defer q.Delete(context.WithoutCancel(ctx))

	_, _ = q.Enqueue(ctx, []byte("cat.jpg"))
	_, _ = q.Enqueue(ctx, []byte("ceo.jpg"), queue.WithPriority(10))

	k, err := leasekeeper.New(ctx, cli, leasekeeper.WithTTL(5*time.Second))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer k.Close(context.WithoutCancel(ctx))

	for range 2 {
		t, err := q.Dequeue(ctx, k)
		if err != nil {
			fmt.Println(err)
			return
		}
		// Work runs under t.Context(): it ends if the claim is lost.
		_ = t.Progress(ctx, 0.5, "resized", nil)
		fmt.Printf("%s (attempt %d)\n", t.Payload, t.Attempt)
		if err := t.Ack(ctx); err != nil {
			fmt.Println(err)
			return
		}
	}
	s, _ := q.Stats(ctx)
	fmt.Printf("ready %d, running %d, done %d\n", s.Ready, s.Running, s.Done)
	// Output:
	// ceo.jpg (attempt 1)
	// cat.jpg (attempt 1)
	// ready 0, running 0, done 2
}
