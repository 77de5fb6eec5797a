package queue_test

import (
	"flag"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/queue"
)

var decay = flag.Bool("queue.decay", false, "run the no-decay test: throughput after 50,000 processed tasks (minutes)")

// TestNoDecay drains the same amount of work before and after 50,000 more
// tasks went through the queue, without compaction, and wants the queue
// to slow by no more than 20% beyond plain etcd work timed beside it:
// claims never range over the tombstones consumed tasks leave behind.
func TestNoDecay(t *testing.T) {
	if !*decay {
		t.Skip("long: run with -queue.decay")
	}
	ctx := ctxT(t, 20*time.Minute)
	name := qname(t)
	producer := newQueue(t, cluster.Client(), name, queue.WithRetention(0))
	type consumer struct {
		q *queue.Queue
		k *leasekeeper.Keeper
	}
	cons := make([]consumer, 4)
	for i := range cons {
		cli, err := cluster.NewClient()
		require.NoError(t, err)
		t.Cleanup(func() { _ = cli.Close() })
		cons[i] = consumer{newQueue(t, cli, name, queue.WithRetention(0)), newKeeper(t, cli, 5*time.Second)}
	}
	// drain enqueues n tasks in batches, then times four consumers taking
	// and acknowledging all of them.
	drain := func(n int) float64 {
		items := make([]queue.Item, n)
		_, err := producer.EnqueueBatch(ctx, items)
		require.NoError(t, err)
		start := time.Now()
		var wg sync.WaitGroup
		per := n / len(cons)
		for _, c := range cons {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range per {
					task, err := c.q.Dequeue(ctx, c.k)
					if !assertNoErr(t, err) {
						return
					}
					if !assertNoErr(t, task.Ack(ctx)) {
						return
					}
				}
			}()
		}
		wg.Wait()
		return float64(per*len(cons)) / time.Since(start).Seconds()
	}
	// raw times plain etcd work of the same shape beside it: four clients
	// each putting a fresh key and deleting it, as many cycles as a drain
	// has tasks. etcd itself slows as its database grows without
	// compaction; the queue must not slow more than that.
	raw := func(n int) float64 {
		start := time.Now()
		var wg sync.WaitGroup
		per := n / len(cons)
		for i, c := range cons {
			cli := c.k.Client()
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range per {
					key := fmt.Sprintf("%s/raw/%d/%d/%d", name, i, j, start.UnixNano())
					if _, err := cli.Put(ctx, key, "x"); !assertNoErr(t, err) {
						return
					}
					if _, err := cli.Delete(ctx, key); !assertNoErr(t, err) {
						return
					}
				}
			}()
		}
		wg.Wait()
		return float64(per*len(cons)) / time.Since(start).Seconds()
	}
	const window = 4000
	// Warm up past the first expiries of the retention leases (finished
	// records are deleted by etcd in bursts as each lease ends), so that both
	// measurements include that steady cost.
	drain(10000)
	before, rawBefore := drain(window), raw(window)
	for done := 0; done < 50000; done += 10000 {
		drain(10000)
	}
	after, rawAfter := drain(window), raw(window)
	t.Logf("throughput: %.0f tasks/s at the start, %.0f after 50,000 tasks (%.0f%%); plain etcd put/delete cycles beside it: %.0f/s, then %.0f/s (%.0f%%)",
		before, after, 100*after/before, rawBefore, rawAfter, 100*rawAfter/rawBefore)
	require.GreaterOrEqual(t, after/before, 0.8*rawAfter/rawBefore, "the queue's throughput decayed more than etcd's own")
}

func assertNoErr(t *testing.T, err error) bool {
	t.Helper()
	if err != nil {
		t.Error(err)
		return false
	}
	return true
}
