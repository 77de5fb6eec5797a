package queue_test

import (
	"context"
	"strings"
	"testing"

	"github.com/concordkit/concord/internal/holdingtest"
	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/queue"
)

// A claimed task is a holding of that task: the suite claims the one task
// of a queue of its own, and gives it back with Nack, so that the next
// claim takes the same task.
func TestConformanceTask(t *testing.T) {
	holdingtest.Run(t, cluster, "/conformance/task", holdingtest.Kind{
		ErrLost: queue.ErrLost, Exclusive: true,
		Acquire: func(ctx context.Context, k *leasekeeper.Keeper, name string) (holdingtest.Holding, error) {
			q := queue.New(k.Client(), name, queue.WithRetention(0), queue.WithMaxAttempts(100))
			// The first caller enqueues the task; later ones find it.
			if _, err := q.Enqueue(ctx, nil, queue.WithDedupID("the-task")); err != nil {
				return nil, err
			}
			t, err := q.Dequeue(ctx, k)
			if err != nil {
				return nil, err
			}
			return taskOf{t, q}, nil
		},
		Release: func(ctx context.Context, h holdingtest.Holding) error {
			t := h.(taskOf)
			defer t.q.Close()
			return t.Nack(ctx, 0)
		},
		// The queue's records of the task stay; only claims go.
		Leftover: func(key string) bool { return !strings.Contains(key, "/.queue/i/c/") },
	})
}

type taskOf struct {
	*queue.Task
	q *queue.Queue
}
