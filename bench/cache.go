package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/cache"
)

// The cache.* figures: in-process reads, how far a cache lags a raw watch on
// the same writes, and the initial load of a large prefix.

func init() {
	Register(Group{
		Name:    "cache",
		Figures: []string{"cache.get_per_s", "cache.staleness_p99", "cache.load_100k_ms"},
		Run:     runCache,
	})
}

func runCache(ctx context.Context, env *Env) ([]Result, error) {
	var out []Result
	r, err := benchCacheGet(ctx, env)
	if err != nil {
		return out, fmt.Errorf("get: %w", err)
	}
	out = append(out, r)
	r, err = benchCacheStaleness(ctx, env)
	if err != nil {
		return out, fmt.Errorf("staleness: %w", err)
	}
	out = append(out, r)
	r, err = benchCacheLoad(ctx, env)
	if err != nil {
		return out, fmt.Errorf("load: %w", err)
	}
	return append(out, r), nil
}

// fillPrefix writes n keys under prefix, 128 per transaction (etcd's
// default limit of operations per transaction).
func fillPrefix(ctx context.Context, cli *clientv3.Client, prefix string, n int, value string) error {
	for i := 0; i < n; i += 128 {
		var ops []clientv3.Op
		for j := i; j < min(i+128, n); j++ {
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("%s%07d", prefix, j), value))
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			return err
		}
	}
	return nil
}

// benchCacheGet: Gets per second on a 10k-key cache from one goroutine
// reading keys in a scattered order. One goroutine, because that is what
// the figure is about (an in-memory read, no I/O); from several goroutines
// at once the read lock's shared counter bounces between cores and each
// Get costs more (on 2 cores measured about 1.8x the time per Get).
func benchCacheGet(ctx context.Context, env *Env) (Result, error) {
	cli, err := env.NewClient()
	if err != nil {
		return Result{}, err
	}
	const prefix = "bench/cache/get/"
	const n = 10000
	defer cli.Delete(context.WithoutCancel(ctx), prefix, clientv3.WithPrefix())
	if err := fillPrefix(ctx, cli, prefix, n, strings.Repeat("v", 64)); err != nil {
		return Result{}, err
	}
	c, err := cache.New(ctx, cli, prefix)
	if err != nil {
		return Result{}, err
	}
	defer c.Close()
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("%s%07d", prefix, i)
	}
	gets := env.Scale(5_000_000, 500_000)
	var rates []float64
	err = Rounds(ctx, env, "cache.get", func(context.Context, Round) error {
		i := 0
		t0 := time.Now()
		for range gets {
			if _, ok := c.Get(keys[i%n]); !ok {
				return errors.New("a cached key is missing")
			}
			i += 31
		}
		rates = append(rates, float64(gets)/time.Since(t0).Seconds())
		return nil
	})
	return Single("cache.get_per_s", "1/s", Median(rates), false), err
}

// benchCacheStaleness: for each put by one client, the time until a cache on
// a second client shows it and until a raw prefix watch on a third client
// delivers it, both clients connected to the same follower. Both observe the
// same puts, so they are measured side by side under the same load.
func benchCacheStaleness(ctx context.Context, env *Env) (Result, error) {
	writer, err := env.NewClient()
	if err != nil {
		return Result{}, err
	}
	// Both readers on one follower, as in the pubsub figures: a watch on the
	// leader sees a put sooner than one on a follower, and the placement of
	// each side, not the cache, would decide the ratio.
	leader, err := env.Leader(ctx)
	if err != nil {
		return Result{}, err
	}
	follower := (leader + 1) % env.Members()
	cacheCli, err := env.NewClientTo(follower)
	if err != nil {
		return Result{}, err
	}
	watchCli, err := env.NewClientTo(follower)
	if err != nil {
		return Result{}, err
	}
	const prefix = "bench/cache/stale/"
	defer writer.Delete(context.WithoutCancel(ctx), prefix, clientv3.WithPrefix())
	if err := fillPrefix(ctx, writer, prefix, 1000, "v"); err != nil {
		return Result{}, err
	}
	c, err := cache.New(ctx, cacheCli, prefix)
	if err != nil {
		return Result{}, err
	}
	defer c.Close()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := watchCli.Watch(wctx, prefix, clientv3.WithPrefix())
	sub := c.Subscribe()
	defer sub.Close()
	<-sub.C() // the snapshot

	// Each side is read by its own goroutine that stamps every value when
	// it arrives: read after Put returns, both would show the Put's own
	// latency whenever the event came first.
	type arrival struct {
		val string
		at  time.Time
	}
	cacheGot, watchGot := make(chan arrival, 1024), make(chan arrival, 1024)
	readers := make(chan error, 2) // why a reader stopped; each sends once
	var wg sync.WaitGroup
	wg.Go(func() {
		for b := range sub.C() {
			at := time.Now()
			for _, ev := range b.Events {
				select {
				case cacheGot <- arrival{string(ev.KV.Value), at}:
				case <-wctx.Done():
				}
			}
		}
		readers <- errors.New("cache subscription closed")
	})
	wg.Go(func() {
		for wr := range wch {
			at := time.Now()
			if wr.Err() != nil {
				readers <- fmt.Errorf("raw watch ended: %w", wr.Err())
				return
			}
			for _, ev := range wr.Events {
				select {
				case watchGot <- arrival{string(ev.Kv.Value), at}:
				case <-wctx.Done():
				}
			}
		}
		readers <- errors.New("raw watch ended")
	})
	// The readers end with the subscription and the watch, closed on return.
	defer func() { sub.Close(); cancel(); wg.Wait() }()
	awaitVal := func(ch <-chan arrival, val string, deadline <-chan time.Time) (time.Time, error) {
		for {
			select {
			case a := <-ch:
				if a.val == val {
					return a.at, nil
				}
			case err := <-readers:
				return time.Time{}, err
			case <-deadline:
				return time.Time{}, errors.New("a put was not seen within 10 s")
			}
		}
	}

	puts := env.Scale(300, 50)
	var concord, raw []float64
	err = Rounds(ctx, env, "cache.staleness", func(ctx context.Context, r Round) error {
		var cd, wd []time.Duration
		for i := range puts {
			val := fmt.Sprintf("r%s-%d", r.ID(), i)
			key := fmt.Sprintf("%s%07d", prefix, i%1000)
			t0 := time.Now()
			if _, err := writer.Put(ctx, key, val); err != nil {
				return err
			}
			deadline := time.After(10 * time.Second)
			cAt, err := awaitVal(cacheGot, val, deadline)
			if err != nil {
				return err
			}
			wAt, err := awaitVal(watchGot, val, deadline)
			if err != nil {
				return err
			}
			cd = append(cd, cAt.Sub(t0))
			wd = append(wd, wAt.Sub(t0))
		}
		concord = append(concord, PercentileMs(cd, 99))
		raw = append(raw, PercentileMs(wd, 99))
		return nil
	})
	return Pair("cache.staleness_p99", "ms", Median(concord), Median(raw), "raw etcd watch", true), err
}

// benchCacheLoad: a cache's initial load of 100k keys (paged, all pages at
// one revision) beside one unpaged Get of the same prefix.
func benchCacheLoad(ctx context.Context, env *Env) (Result, error) {
	cli, err := env.NewClient()
	if err != nil {
		return Result{}, err
	}
	const prefix = "bench/cache/load/"
	n := env.Scale(100_000, 10_000)
	defer cli.Delete(context.WithoutCancel(ctx), prefix, clientv3.WithPrefix())
	if err := fillPrefix(ctx, cli, prefix, n, strings.Repeat("v", 100)); err != nil {
		return Result{}, err
	}
	var concord, raw []float64
	err = Rounds(ctx, env, "cache.load", func(ctx context.Context, r Round) error {
		var ours, theirs float64
		// Alternate which side goes first, so neither always runs warm.
		sides := []func() error{
			func() error {
				t0 := time.Now()
				c, err := cache.New(ctx, cli, prefix)
				if err != nil {
					return err
				}
				ours = float64(time.Since(t0)) / float64(time.Millisecond)
				if c.Len() != n {
					err = fmt.Errorf("cache loaded %d keys, want %d", c.Len(), n)
				}
				_ = c.Close()
				return err
			},
			func() error {
				t0 := time.Now()
				resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
				if err != nil {
					return err
				}
				theirs = float64(time.Since(t0)) / float64(time.Millisecond)
				if len(resp.Kvs) != n {
					return fmt.Errorf("get returned %d keys, want %d", len(resp.Kvs), n)
				}
				return nil
			},
		}
		if r.N%2 == 1 {
			sides[0], sides[1] = sides[1], sides[0]
		}
		for _, side := range sides {
			if err := side(); err != nil {
				return err
			}
		}
		concord, raw = append(concord, ours), append(raw, theirs)
		return nil
	})
	return Pair("cache.load_100k_ms", "ms", Median(concord), Median(raw), "one unpaged Get", true), err
}
