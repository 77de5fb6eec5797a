package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
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
	err = Rounds(ctx, env, func(int) error {
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
// delivers it. Both observe the same puts, so they are measured side by side
// under the same load.
func benchCacheStaleness(ctx context.Context, env *Env) (Result, error) {
	clis, err := env.Clients(3)
	if err != nil {
		return Result{}, err
	}
	writer, cacheCli, watchCli := clis[0], clis[1], clis[2]
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

	// seen reports, for the value it waits for, when each side saw it.
	type seen struct{ cache, watch time.Time }
	puts := env.Scale(300, 50)
	var concord, raw []float64
	err = Rounds(ctx, env, func(round int) error {
		var cd, wd []time.Duration
		for i := range puts {
			val := fmt.Sprintf("r%d-%d", round, i)
			key := fmt.Sprintf("%s%07d", prefix, i%1000)
			var s seen
			t0 := time.Now()
			if _, err := writer.Put(ctx, key, val); err != nil {
				return err
			}
			deadline := time.NewTimer(10 * time.Second)
			for s.cache.IsZero() || s.watch.IsZero() {
				select {
				case b, ok := <-sub.C():
					if !ok {
						return errors.New("cache subscription closed")
					}
					for _, ev := range b.Events {
						if ev.KV.Key == key && string(ev.KV.Value) == val {
							s.cache = time.Now()
						}
					}
				case wr, ok := <-wch:
					if !ok || wr.Err() != nil {
						return fmt.Errorf("raw watch ended: %v", wr.Err())
					}
					for _, ev := range wr.Events {
						if string(ev.Kv.Key) == key && string(ev.Kv.Value) == val {
							s.watch = time.Now()
						}
					}
				case <-deadline.C:
					return errors.New("a put was not seen within 10 s")
				}
			}
			deadline.Stop()
			cd = append(cd, s.cache.Sub(t0))
			wd = append(wd, s.watch.Sub(t0))
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
	err = Rounds(ctx, env, func(round int) error {
		// Alternate which side goes first, so neither always runs warm.
		sides := []func() error{
			func() error {
				t0 := time.Now()
				c, err := cache.New(ctx, cli, prefix)
				if err != nil {
					return err
				}
				concord = append(concord, float64(time.Since(t0))/float64(time.Millisecond))
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
				raw = append(raw, float64(time.Since(t0))/float64(time.Millisecond))
				if len(resp.Kvs) != n {
					return fmt.Errorf("get returned %d keys, want %d", len(resp.Kvs), n)
				}
				return nil
			},
		}
		if round%2 == 1 {
			sides[0], sides[1] = sides[1], sides[0]
		}
		for _, side := range sides {
			if err := side(); err != nil {
				return err
			}
		}
		return nil
	})
	return Pair("cache.load_100k_ms", "ms", Median(concord), Median(raw), "one unpaged Get", true), err
}
