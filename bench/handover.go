package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/concordkit/concord/election"
	"github.com/concordkit/concord/leasekeeper"
)

// The election.handover_* figures: a leader and three waiting candidates;
// leadership is to go to the newest of them (the replica a rolling deploy
// started last).
//
//   - handover_p99: concord's Term.Handover(election.Newest) → the newest
//     candidate's Campaign returns; beside etcd's concurrency.Election,
//     where leadership reaches the newest only through the candidates
//     ahead of it: the leader resigns, and each candidate ahead resigns as
//     soon as it leads.
//   - handover_commits: the etcd revisions from just before the handover
//     to the one at which the newest candidate leads (median): the writes
//     on the way, each one raft entry.

func init() {
	Register(Group{
		Name:    "handover",
		Figures: []string{"election.handover_p99", "election.handover_commits"},
		Run:     runHandover,
	})
}

const handoverWaiting = 3

func runHandover(ctx context.Context, env *Env) ([]Result, error) {
	n := env.Scale(20, 4)
	clis, err := env.Clients(2 * (handoverWaiting + 1))
	if err != nil {
		return nil, err
	}
	var ours [handoverWaiting + 1]*election.Election
	var theirs [handoverWaiting + 1]*concurrency.Election
	const prefix = "bench/election.handover"
	for i := range ours {
		k, err := leasekeeper.New(ctx, clis[i], leasekeeper.WithTTL(benchTTL))
		if err != nil {
			return nil, err
		}
		defer k.Close(context.WithoutCancel(ctx))
		ours[i] = election.New(k, prefix)
		sess, err := concurrency.NewSession(clis[len(ours)+i], concurrency.WithTTL(int(benchTTL/time.Second)))
		if err != nil {
			return nil, err
		}
		defer sess.Close()
		theirs[i] = concurrency.NewElection(sess, prefix+"/etcd")
	}
	var pd, td, pc, tc []float64
	err = Rounds(ctx, env, "election.handover", func(ctx context.Context, _ Round) error {
		var do, dt []time.Duration
		var co, ct []float64
		for range n {
			d, c, err := handoverConcord(ctx, clis[0], ours[:])
			if err != nil {
				return fmt.Errorf("concord: %w", err)
			}
			do, co = append(do, d), append(co, c)
			d, c, err = handoverEtcd(ctx, clis[0], theirs[:], prefix+"/etcd")
			if err != nil {
				return fmt.Errorf("etcd: %w", err)
			}
			dt, ct = append(dt, d), append(ct, c)
		}
		pd, td = append(pd, PercentileMs(do, 99)), append(td, PercentileMs(dt, 99))
		pc, tc = append(pc, Median(co)), append(tc, Median(ct))
		return nil
	})
	if err != nil {
		return nil, err
	}
	return []Result{
		Pair("election.handover_p99", "ms", Median(pd), Median(td), "concurrency.Election", true),
		Pair("election.handover_commits", "revs", Median(pc), Median(tc), "concurrency.Election", true),
	}, nil
}

// rev reads the cluster's current revision.
func rev(ctx context.Context, cli *clientv3.Client) (int64, error) {
	resp, err := cli.Get(ctx, "bench/rev-probe", clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

// campaignAsync starts a campaign and reports its term when it returns.
func campaignAsync(ctx context.Context, e *election.Election) <-chan termWon {
	ch := make(chan termWon, 1)
	go func() {
		t, err := e.Campaign(ctx, "v")
		ch <- termWon{t, time.Now(), err}
	}()
	return ch
}

type termWon struct {
	t   *election.Term
	at  time.Time
	err error
}

func handoverConcord(ctx context.Context, cli *clientv3.Client, els []*election.Election) (time.Duration, float64, error) {
	lead, err := els[0].Campaign(ctx, "v")
	if err != nil {
		return 0, 0, err
	}
	waiting := make([]<-chan termWon, len(els))
	for i := 1; i < len(els); i++ {
		waiting[i] = campaignAsync(ctx, els[i])
		if err := waitKeys(ctx, cli, "bench/election.handover/.election", int64(i+1)); err != nil {
			return 0, 0, err
		}
	}
	r0, err := rev(ctx, cli)
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	if err := lead.Handover(ctx, election.Newest); err != nil {
		return 0, 0, err
	}
	newest := <-waiting[len(els)-1]
	if newest.err != nil {
		return 0, 0, newest.err
	}
	d := newest.at.Sub(start)
	l, err := election.LeaderOf(ctx, cli, "bench/election.handover")
	if err != nil {
		return 0, 0, err
	}
	// The revision at which it leads: the deletion that made its key the
	// oldest, which the term's own key predates; LeaderOf reports the
	// read's revision, so look at the candidates ahead's end instead.
	commits := float64(leadRev(ctx, cli, l.Key, r0) - r0)
	// The passed-over candidates campaign on, in the order they queued
	// again: let each lead and resign.
	if err := newest.t.Resign(ctx); err != nil {
		return 0, 0, err
	}
	merged := make(chan termWon, len(els))
	for i := 1; i < len(els)-1; i++ {
		go func() { merged <- <-waiting[i] }()
	}
	for i := 1; i < len(els)-1; i++ {
		w := <-merged
		if w.err != nil {
			return 0, 0, w.err
		}
		if err := w.t.Resign(ctx); err != nil {
			return 0, 0, err
		}
	}
	return d, commits, nil
}

func handoverEtcd(ctx context.Context, cli *clientv3.Client, els []*concurrency.Election, prefix string) (time.Duration, float64, error) {
	if err := els[0].Campaign(ctx, "v"); err != nil {
		return 0, 0, err
	}
	waiting := make([]chan error, len(els))
	at := make([]time.Time, len(els))
	for i := 1; i < len(els); i++ {
		waiting[i] = make(chan error, 1)
		go func() {
			err := els[i].Campaign(ctx, "v")
			at[i] = time.Now()
			waiting[i] <- err
		}()
		if err := waitKeys(ctx, cli, prefix, int64(i+1)); err != nil {
			return 0, 0, err
		}
	}
	r0, err := rev(ctx, cli)
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	if err := els[0].Resign(ctx); err != nil {
		return 0, 0, err
	}
	for i := 1; i < len(els); i++ {
		if err := <-waiting[i]; err != nil {
			return 0, 0, err
		}
		if i < len(els)-1 {
			if err := els[i].Resign(ctx); err != nil {
				return 0, 0, err
			}
		}
	}
	d := at[len(els)-1].Sub(start)
	last := els[len(els)-1]
	commits := float64(leadRev(ctx, cli, last.Key(), r0) - r0)
	if err := last.Resign(ctx); err != nil {
		return 0, 0, err
	}
	return d, commits, nil
}

// leadRev returns the revision at which key became the oldest candidate:
// the latest deletion, after r0, of a key older than it under its prefix,
// read from the history since r0.
func leadRev(ctx context.Context, cli *clientv3.Client, key string, r0 int64) int64 {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	now, err := rev(ctx, cli)
	if err != nil {
		return 0
	}
	prefix := key[:strings.LastIndexByte(key, '/')+1]
	var latest int64
	for resp := range cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(r0+1), clientv3.WithPrevKV()) {
		for _, ev := range resp.Events {
			if ev.Type == clientv3.EventTypeDelete && string(ev.Kv.Key) != key && ev.Kv.ModRevision <= now {
				latest = max(latest, ev.Kv.ModRevision)
			}
		}
		if resp.Header.Revision >= now || resp.Err() != nil {
			break
		}
	}
	return latest
}
