package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/pubsub"
)

// The pubsub.* figures: publish → delivery, against a raw etcd put → watch on
// the same cluster, with samples of both sides alternating in each round.

func init() {
	Register(Group{
		Name:    "pubsub",
		Figures: []string{"pubsub.deliver_p99", "pubsub.fanout100_p99"},
		Run:     runPubsub,
	})
}

// receiver collects, per sample, the time each of its readers got the
// sample's message.
type receiver struct {
	got chan time.Time
	wg  sync.WaitGroup
}

// waitAll waits until n readers reported and returns when the last did.
func (r *receiver) waitAll(n int) (time.Time, error) {
	var last time.Time
	timeout := time.NewTimer(5 * time.Second)
	defer timeout.Stop()
	for range n {
		select {
		case at := <-r.got:
			if at.IsZero() {
				return last, fmt.Errorf("a subscriber got a gap instead of the message")
			}
			if at.After(last) {
				last = at
			}
		case <-timeout.C:
			return last, fmt.Errorf("delivery took over 5 s")
		}
	}
	return last, nil
}

// concordReaders starts one reader per subscription.
func concordReaders(ctx context.Context, subs []*pubsub.Subscription) (*receiver, error) {
	r := &receiver{got: make(chan time.Time, len(subs))}
	for _, s := range subs {
		r.wg.Go(func() {
			for {
				ev, err := s.Next(ctx)
				if err != nil {
					return
				}
				if ev.Gap != nil {
					// A lost sample: the zero time fails the run.
					r.got <- time.Time{}
					continue
				}
				r.got <- time.Now()
			}
		})
	}
	return r, nil
}

// rawReaders starts n raw etcd watches of key on cli, each with a reader, and
// returns once every watch is created.
func rawReaders(ctx context.Context, cli *clientv3.Client, key string, n int) (*receiver, error) {
	r := &receiver{got: make(chan time.Time, n)}
	for range n {
		wch := cli.Watch(ctx, key, clientv3.WithCreatedNotify())
		if resp := <-wch; !resp.Created {
			return nil, fmt.Errorf("raw watch not created: %v", resp.Err())
		}
		r.wg.Go(func() {
			for resp := range wch {
				for range resp.Events {
					r.got <- time.Now()
				}
			}
		})
	}
	return r, nil
}

func runPubsub(ctx context.Context, env *Env) ([]Result, error) {
	pubCli, err := env.NewClient()
	if err != nil {
		return nil, err
	}
	// Both sides' watches are served by one member, a follower. The client
	// balances round-robin per stream, so on a client of every member the
	// pubsub watch and the raw watch, opened one after the other, land on
	// different members; a watch on the leader sees a put about 0.07 ms
	// (p50) sooner than one on a follower (measured here), so which member
	// each side got, not pubsub, swung the figure from run to run. A
	// follower is where two of three watchers are.
	leader, err := env.Leader(ctx)
	if err != nil {
		return nil, err
	}
	subCli, err := env.NewClientTo((leader + 1) % env.Members())
	if err != nil {
		return nil, err
	}
	pub := pubsub.NewHub(pubCli)
	defer pub.Close()
	// Enough samples that a p99 is not one scheduling hiccup of a shared
	// machine: the 10th worst of 1000.
	n := env.Scale(1000, 100)
	fanN := env.Scale(300, 50)

	var deliver, deliverRaw, fan, fanRaw []float64
	err = Rounds(ctx, env, "pubsub", func(ctx context.Context, r Round) error {
		topic := "bench/pubsub/" + r.ID()
		rawKey := "bench/pubsub-raw/" + r.ID()
		defer func() {
			_, _ = pubCli.Delete(context.WithoutCancel(ctx), topic, clientv3.WithPrefix())
			_, _ = pubCli.Delete(context.WithoutCancel(ctx), rawKey, clientv3.WithPrefix())
		}()

		// deliver: one subscriber on another connection vs one raw watch.
		d, dr, err := measure(ctx, pub, pubCli, subCli, topic+"/one", rawKey+"/one", 1, n)
		if err != nil {
			return err
		}

		// fanout100: 100 subscriptions in one process vs 100 raw watches.
		f, fr, err := measure(ctx, pub, pubCli, subCli, topic+"/fan", rawKey+"/fan", 100, fanN)
		if err != nil {
			return err
		}
		deliver, deliverRaw = append(deliver, d), append(deliverRaw, dr)
		fan, fanRaw = append(fan, f), append(fanRaw, fr)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return []Result{
		Pair("pubsub.deliver_p99", "ms", Median(deliver), Median(deliverRaw), "raw put → watch", true),
		Pair("pubsub.fanout100_p99", "ms", Median(fan), Median(fanRaw), "raw put → 100 watches", true),
	}, nil
}

// measure returns the p99, over samples, of the time from the start of a
// publish until all subs subscribers received it, for concord and for raw
// etcd, alternating one sample of each.
func measure(ctx context.Context, pub *pubsub.Hub, pubCli, subCli *clientv3.Client, topic, rawKey string, subs, samples int) (float64, float64, error) {
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hub := pubsub.NewHub(subCli)
	defer hub.Close()
	var ss []*pubsub.Subscription
	for range subs {
		s, err := hub.Subscribe(rctx, topic, pubsub.FromLatest(), pubsub.WithBuffer(samples+1))
		if err != nil {
			return 0, 0, err
		}
		ss = append(ss, s)
	}
	cr, err := concordReaders(rctx, ss)
	if err != nil {
		return 0, 0, err
	}
	defer cr.wg.Wait()
	rr, err := rawReaders(rctx, subCli, rawKey, subs)
	if err != nil {
		return 0, 0, err
	}
	defer rr.wg.Wait()
	defer cancel()

	var ds, dr []time.Duration
	for i := range samples {
		payload := fmt.Sprint(i)
		t0 := time.Now()
		if _, err := pub.Publish(ctx, topic, []byte(payload)); err != nil {
			return 0, 0, err
		}
		last, err := cr.waitAll(subs)
		if err != nil {
			return 0, 0, fmt.Errorf("pubsub: %w", err)
		}
		ds = append(ds, last.Sub(t0))

		t0 = time.Now()
		if _, err := pubCli.Put(ctx, rawKey, payload); err != nil {
			return 0, 0, err
		}
		last, err = rr.waitAll(subs)
		if err != nil {
			return 0, 0, fmt.Errorf("raw: %w", err)
		}
		dr = append(dr, last.Sub(t0))
	}
	return PercentileMs(ds, 99), PercentileMs(dr, 99), nil
}
