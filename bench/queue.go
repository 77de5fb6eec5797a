package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/queue"
)

// The queue.* figures: enqueue → dequeue → ack through concord's queue,
// beside a naive etcd queue on the same cluster in the same round. The naive
// queue is what etcd's experimental recipe does: put a unique key; a
// consumer gets the first key under the prefix and deletes it with a
// transaction guarded on its ModRevision (at-most-once: a crash after the
// delete loses the item); an empty queue is waited on with a watch.

func init() {
	Register(Group{
		Name: "queue",
		Figures: []string{
			"queue.1x1.items_per_s",
			"queue.4x4.items_per_s",
			"queue.scaling_4_over_1",
			"queue.4x4.conflict_pct",
			"queue.idle_latency_p99",
			"queue.1x1.cpu_busy_pct",
			"queue.4x4.cpu_busy_pct",
			"queue.4x4.client_cpu_pct",
		},
		Run: runQueue,
	})
}

const queueBenchTTL = 5 * time.Second

// qConsumer is one consumer process: its own client, lease keeper and queue.
type qConsumer struct {
	cli *clientv3.Client
	k   *leasekeeper.Keeper
}

func runQueue(ctx context.Context, env *Env) ([]Result, error) {
	producers, err := env.Clients(4)
	if err != nil {
		return nil, err
	}
	clis, err := env.Clients(4)
	if err != nil {
		return nil, err
	}
	consumers := make([]qConsumer, len(clis))
	for i, cli := range clis {
		k, err := leasekeeper.New(ctx, cli, leasekeeper.WithTTL(queueBenchTTL))
		if err != nil {
			return nil, err
		}
		defer k.Close(context.WithoutCancel(ctx))
		consumers[i] = qConsumer{cli: cli, k: k}
	}
	admin := producers[0]
	items := env.Scale(2000, 300)
	samples := env.Scale(200, 40)

	var c1, n1, c4, n4, scale, conf, nconf, lat, nlat, busy1, busy4, client4 []float64
	err = Rounds(ctx, env, "queue", func(ctx context.Context, r Round) error {
		base := "bench/queue/r" + r.ID()
		defer func() { _, _ = admin.Delete(context.WithoutCancel(ctx), base, clientv3.WithPrefix()) }()

		before := readCPU()
		cr1, _, err := concordThroughput(ctx, base+"/c1", producers[:1], consumers[:1], items)
		b1 := busyPct(before, readCPU())
		if err != nil {
			return fmt.Errorf("concord 1x1: %w", err)
		}
		nr1, _, err := naiveThroughput(ctx, base+"/n1", producers[:1], clis[:1], items)
		if err != nil {
			return fmt.Errorf("naive 1x1: %w", err)
		}
		before, self, start := readCPU(), selfCPU(), time.Now()
		cr4, cpct, err := concordThroughput(ctx, base+"/c4", producers, consumers, items)
		b4 := busyPct(before, readCPU())
		own := clientPct(self, selfCPU(), time.Since(start))
		if env.Cluster == nil || env.Cluster.Binary() == "" {
			own = -1 // the members run in this process too
		}
		if err != nil {
			return fmt.Errorf("concord 4x4: %w", err)
		}
		nr4, npct, err := naiveThroughput(ctx, base+"/n4", producers, clis, items)
		if err != nil {
			return fmt.Errorf("naive 4x4: %w", err)
		}
		cp99, err := concordIdle(ctx, base+"/ci", producers[0], consumers[0], samples)
		if err != nil {
			return fmt.Errorf("concord idle: %w", err)
		}
		np99, err := naiveIdle(ctx, base+"/ni", producers[0], clis[0], samples)
		if err != nil {
			return fmt.Errorf("naive idle: %w", err)
		}
		c1, n1, c4, n4 = append(c1, cr1), append(n1, nr1), append(c4, cr4), append(n4, nr4)
		scale = append(scale, cr4/cr1)
		conf, nconf = append(conf, cpct), append(nconf, npct)
		lat, nlat = append(lat, cp99), append(nlat, np99)
		busy1, busy4, client4 = append(busy1, b1), append(busy4, b4), append(client4, own)
		return nil
	})
	if err != nil {
		return nil, err
	}
	const naive = "naive etcd queue"
	return []Result{
		Pair("queue.1x1.items_per_s", "1/s", Median(c1), Median(n1), naive, false),
		Pair("queue.4x4.items_per_s", "1/s", Median(c4), Median(n4), naive, false),
		Single("queue.scaling_4_over_1", "x", Median(scale), false),
		Pair("queue.4x4.conflict_pct", "pct", Median(conf), Median(nconf), naive, true),
		Pair("queue.idle_latency_p99", "ms", Median(lat), Median(nlat), naive, true),
		// How busy the whole machine (cluster and clients) was while
		// concord's queue ran: near 100, throughput is bounded by this
		// machine's CPU rather than by round trips. -1 where unknown.
		Single("queue.1x1.cpu_busy_pct", "pct", Median(busy1), true),
		Single("queue.4x4.cpu_busy_pct", "pct", Median(busy4), true),
		// Of that, the share the clients (this process) used, with the
		// members in processes of their own (-etcd); -1 otherwise.
		Single("queue.4x4.client_cpu_pct", "pct", Median(client4), true),
	}, nil
}

// warmUpErr is why a fresh queue did not answer its first TryDequeue with
// ErrEmpty.
func warmUpErr(err error) error {
	if err == nil {
		return errors.New("warm-up: a fresh queue was not empty")
	}
	return fmt.Errorf("warm-up: %w", err)
}

// firstErr keeps the first error of several goroutines.
type firstErr struct {
	mu  sync.Mutex // protects err
	err error
}

// produce runs one producer per enqueue function, n items in all (the first
// takes the remainder), until finished closes or the run is canceled (the
// first error cancels it); it then cancels the run, joins every goroutine
// in wg, and returns the time from the first enqueue to finished.
func produce(rctx context.Context, cancel context.CancelFunc, wg *sync.WaitGroup, fe *firstErr, n int, enqueue []func(context.Context) error, finished <-chan struct{}) time.Duration {
	start := time.Now()
	per := n / len(enqueue)
	for i, enq := range enqueue {
		cnt := per
		if i == 0 {
			cnt += n - per*len(enqueue)
		}
		wg.Go(func() {
			for range cnt {
				if err := enq(rctx); err != nil {
					if rctx.Err() == nil {
						fe.set(err)
						cancel()
					}
					return
				}
			}
		})
	}
	select {
	case <-finished:
	case <-rctx.Done():
	}
	elapsed := time.Since(start)
	cancel()
	wg.Wait()
	return elapsed
}

func (f *firstErr) set(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.err = err
	}
}

// concordThroughput moves n items from the producers to the consumers and
// returns items per second (from the first enqueue to the last ack) and the
// share of claim transactions that failed.
func concordThroughput(ctx context.Context, name string, producers []*clientv3.Client, cons []qConsumer, n int) (float64, float64, error) {
	qs := make([]*queue.Queue, len(cons))
	for i, c := range cons {
		q := queue.New(c.cli, name, queue.WithRetention(0))
		defer q.Close()
		qs[i] = q
	}
	// Load every consumer's view before timing: an empty queue costs one
	// read and one watch per consumer process, once.
	for i, q := range qs {
		if _, err := q.TryDequeue(ctx, cons[i].k); !errors.Is(err, queue.ErrEmpty) {
			return 0, 0, warmUpErr(err)
		}
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var done atomic.Int64
	var fe firstErr
	var wg sync.WaitGroup
	finished := make(chan struct{})
	for i, q := range qs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				t, err := q.Dequeue(rctx, cons[i].k)
				if err != nil {
					if rctx.Err() == nil {
						fe.set(err)
						cancel()
					}
					return
				}
				if err := t.Ack(rctx); err != nil {
					fe.set(err)
					cancel()
					return
				}
				if done.Add(1) == int64(n) {
					close(finished)
				}
			}
		}()
	}
	enqueue := make([]func(context.Context) error, len(producers))
	for i, p := range producers {
		q := queue.New(p, name, queue.WithRetention(0))
		enqueue[i] = func(ctx context.Context) error {
			_, err := q.Enqueue(ctx, []byte("payload"))
			return err
		}
	}
	elapsed := produce(rctx, cancel, &wg, &fe, n, enqueue, finished)
	if fe.err != nil {
		return 0, 0, fe.err
	}
	var claims, conflicts int64
	for _, q := range qs {
		c, f := q.ClaimCounts()
		claims += c
		conflicts += f
	}
	pct := 0.0
	if claims > 0 {
		pct = 100 * float64(conflicts) / float64(claims)
	}
	return float64(n) / elapsed.Seconds(), pct, nil
}

// concordIdle measures enqueue → Dequeue returning on a worker already
// waiting, samples times, and returns the p99 in ms.
func concordIdle(ctx context.Context, name string, producer *clientv3.Client, c qConsumer, samples int) (float64, error) {
	q := queue.New(c.cli, name, queue.WithRetention(0))
	defer q.Close()
	p := queue.New(producer, name, queue.WithRetention(0))
	if _, err := q.TryDequeue(ctx, c.k); !errors.Is(err, queue.ErrEmpty) {
		return 0, warmUpErr(err)
	}
	lat := make([]time.Duration, 0, samples)
	for range samples {
		got := make(chan error, 1)
		var recv time.Time
		go func() {
			t, err := q.Dequeue(ctx, c.k)
			recv = time.Now()
			if err == nil {
				err = t.Ack(ctx)
			}
			got <- err
		}()
		// Let the consumer reach its wait, so that the figure is the
		// wake-up of an idle worker rather than a race with a busy one.
		runtimeYield()
		sent := time.Now()
		if _, err := p.Enqueue(ctx, nil); err != nil {
			return 0, err
		}
		if err := <-got; err != nil {
			return 0, err
		}
		lat = append(lat, recv.Sub(sent))
	}
	return PercentileMs(lat, 99), nil
}

// runtimeYield gives a just-started consumer a moment to reach its wait;
// the pause is outside the measured interval.
func runtimeYield() { time.Sleep(time.Millisecond) }

// naiveThroughput is concordThroughput for the naive queue.
func naiveThroughput(ctx context.Context, prefix string, producers, consumers []*clientv3.Client, n int) (float64, float64, error) {
	prefix += "/"
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var done, claims, conflicts atomic.Int64
	var fe firstErr
	var wg sync.WaitGroup
	finished := make(chan struct{})
	for _, cli := range consumers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				err := naiveDequeue(rctx, cli, prefix, &claims, &conflicts)
				if err != nil {
					if rctx.Err() == nil {
						fe.set(err)
						cancel()
					}
					return
				}
				if done.Add(1) == int64(n) {
					close(finished)
				}
			}
		}()
	}
	enqueue := make([]func(context.Context) error, len(producers))
	for i, cli := range producers {
		enqueue[i] = func(ctx context.Context) error { return naiveEnqueue(ctx, cli, prefix) }
	}
	elapsed := produce(rctx, cancel, &wg, &fe, n, enqueue, finished)
	if fe.err != nil {
		return 0, 0, fe.err
	}
	pct := 0.0
	if c := claims.Load(); c > 0 {
		pct = 100 * float64(conflicts.Load()) / float64(c)
	}
	return float64(n) / elapsed.Seconds(), pct, nil
}

// naiveEnqueue puts a new key named by the time, retrying if it exists.
func naiveEnqueue(ctx context.Context, cli *clientv3.Client, prefix string) error {
	for {
		key := prefix + fmt.Sprintf("%020d", time.Now().UnixNano())
		resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, "payload")).Commit()
		if err != nil {
			return err
		}
		if resp.Succeeded {
			return nil
		}
	}
}

// naiveDequeue takes the first key and deletes it, guarded on its
// ModRevision; on an empty queue it waits for a put with a watch.
func naiveDequeue(ctx context.Context, cli *clientv3.Client, prefix string, claims, conflicts *atomic.Int64) error {
	for {
		resp, err := cli.Get(ctx, prefix, clientv3.WithFirstKey()...)
		if err != nil {
			return err
		}
		if len(resp.Kvs) == 0 {
			if err := naiveWait(ctx, cli, prefix, resp.Header.Revision); err != nil {
				return err
			}
			continue
		}
		kv := resp.Kvs[0]
		tr, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision)).
			Then(clientv3.OpDelete(string(kv.Key))).Commit()
		if err != nil {
			return err
		}
		claims.Add(1)
		if tr.Succeeded {
			return nil
		}
		conflicts.Add(1)
	}
}

func naiveWait(ctx context.Context, cli *clientv3.Client, prefix string, rev int64) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for resp := range cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
		if err := resp.Err(); err != nil {
			return err
		}
		for _, ev := range resp.Events {
			if ev.Type == clientv3.EventTypePut {
				return nil
			}
		}
	}
	return ctx.Err()
}

// naiveIdle is concordIdle for the naive queue.
func naiveIdle(ctx context.Context, prefix string, producer, consumer *clientv3.Client, samples int) (float64, error) {
	prefix += "/"
	var claims, conflicts atomic.Int64
	lat := make([]time.Duration, 0, samples)
	for range samples {
		got := make(chan error, 1)
		var recv time.Time
		go func() {
			err := naiveDequeue(ctx, consumer, prefix, &claims, &conflicts)
			recv = time.Now()
			got <- err
		}()
		runtimeYield()
		sent := time.Now()
		if err := naiveEnqueue(ctx, producer, prefix); err != nil {
			return 0, err
		}
		if err := <-got; err != nil {
			return 0, err
		}
		lat = append(lat, recv.Sub(sent))
	}
	return PercentileMs(lat, 99), nil
}
