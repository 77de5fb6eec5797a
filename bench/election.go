package main

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/concordkit/concord/election"
	"github.com/concordkit/concord/leasekeeper"
)

// The election.* figures, concord's Election beside etcd's
// concurrency.Election, alternating sample by sample on the same cluster:
//
//   - handoff_fresh_p99: Resign → the next candidate's Campaign returns,
//     when that candidate began campaigning 5 ms before the resignation;
//   - handoff_waited_p99: the same when it began 200 ms before;
//   - failover_over_ttl: the leader's client is cut off → the next
//     candidate's Campaign returns, minus the lease TTL (median).

func init() {
	Register(Group{
		Name: "election",
		Figures: []string{
			"election.handoff_fresh_p99",
			"election.handoff_waited_p99",
			"election.failover_over_ttl",
		},
		Faults: []string{"election.failover_over_ttl"},
		Run:    runElection,
	})
}

func runElection(ctx context.Context, env *Env) ([]Result, error) {
	var out []Result
	for _, h := range []struct {
		name  string
		ahead time.Duration
		n     int
	}{
		{"election.handoff_fresh_p99", 5 * time.Millisecond, env.Scale(100, 8)},
		{"election.handoff_waited_p99", 200 * time.Millisecond, env.Scale(25, 4)},
	} {
		r, err := benchHandoff(ctx, env, h.name, h.ahead, h.n)
		if err != nil {
			return out, fmt.Errorf("%s: %w", h.name, err)
		}
		out = append(out, r)
	}
	if env.Cluster == nil {
		return append(out, Skip("election.failover_over_ttl", errNoFaults.Error())), nil
	}
	r, err := benchFailover(ctx, env, env.Scale(3, 1))
	if err != nil {
		return out, fmt.Errorf("failover: %w", err)
	}
	return append(out, r), nil
}

// handoffSide is one side's pair of contenders on two clients of their own.
type handoffSide interface {
	// lead makes contender i leader; wait starts contender i campaigning
	// and returns a channel that reports when its Campaign returned;
	// resign resigns i.
	lead(ctx context.Context, i int) error
	wait(ctx context.Context, i int) <-chan won
	resign(ctx context.Context, i int) error
}

// won is when a waiting candidate's Campaign returned, taken in its own
// goroutine so the resigner's return does not count.
type won struct {
	at  time.Time
	err error
}

type concordSide struct {
	els   [2]*election.Election
	terms [2]*election.Term
}

func (s *concordSide) lead(ctx context.Context, i int) (err error) {
	s.terms[i], err = s.els[i].Campaign(ctx, "v")
	return err
}

func (s *concordSide) wait(ctx context.Context, i int) <-chan won {
	ch := make(chan won, 1)
	go func() {
		t, err := s.els[i].Campaign(ctx, "v")
		at := time.Now()
		s.terms[i] = t
		ch <- won{at, err}
	}()
	return ch
}

func (s *concordSide) resign(ctx context.Context, i int) error { return s.terms[i].Resign(ctx) }

type etcdSide struct{ els [2]*concurrency.Election }

func (s *etcdSide) lead(ctx context.Context, i int) error { return s.els[i].Campaign(ctx, "v") }

func (s *etcdSide) wait(ctx context.Context, i int) <-chan won {
	ch := make(chan won, 1)
	go func() {
		err := s.els[i].Campaign(ctx, "v")
		ch <- won{time.Now(), err}
	}()
	return ch
}

func (s *etcdSide) resign(ctx context.Context, i int) error { return s.els[i].Resign(ctx) }

// handoff measures one handoff: i leads, 1-i starts campaigning, ahead
// later i resigns; the time until 1-i's Campaign returns. Afterwards 1-i
// leads.
func handoff(ctx context.Context, s handoffSide, i int, ahead time.Duration) (time.Duration, error) {
	done := s.wait(ctx, 1-i)
	t := time.NewTimer(ahead)
	defer t.Stop()
	select {
	case <-t.C:
	case w := <-done:
		return 0, fmt.Errorf("campaign returned before the resignation: %v", w.err)
	}
	start := time.Now()
	if err := s.resign(ctx, i); err != nil {
		return 0, err
	}
	select {
	case w := <-done:
		if w.err != nil {
			return 0, w.err
		}
		return w.at.Sub(start), nil
	case <-time.After(10 * time.Second):
		return 0, fmt.Errorf("no handoff within 10 s")
	}
}

func benchHandoff(ctx context.Context, env *Env, name string, ahead time.Duration, n int) (Result, error) {
	// Each side's two contenders get clients of their own. On shared
	// clients the two sides' requests interleave on each client's round
	// robin over the members, which can pin one side's requests to the
	// members that forward to the Raft leader, and the other's to the
	// leader, whichever it is in that run.
	clis, err := env.Clients(4)
	if err != nil {
		return Result{}, err
	}
	ours := &concordSide{}
	theirs := &etcdSide{}
	prefix := "bench/" + name
	for i := range 2 {
		k, err := leasekeeper.New(ctx, clis[i], leasekeeper.WithTTL(benchTTL))
		if err != nil {
			return Result{}, err
		}
		defer k.Close(context.WithoutCancel(ctx))
		ours.els[i] = election.New(k, prefix)
		sess, err := concurrency.NewSession(clis[2+i], concurrency.WithTTL(int(benchTTL/time.Second)))
		if err != nil {
			return Result{}, err
		}
		defer sess.Close()
		theirs.els[i] = concurrency.NewElection(sess, prefix+"/etcd")
	}
	if err := ours.lead(ctx, 0); err != nil {
		return Result{}, err
	}
	if err := theirs.lead(ctx, 0); err != nil {
		return Result{}, err
	}
	var po, pt []float64
	leader := 0
	err = Rounds(ctx, env, name, func(ctx context.Context, _ Round) error {
		var do, dt []time.Duration
		for range n {
			d, err := handoff(ctx, ours, leader, ahead)
			if err != nil {
				return fmt.Errorf("concord: %w", err)
			}
			do = append(do, d)
			d, err = handoff(ctx, theirs, leader, ahead)
			if err != nil {
				return fmt.Errorf("etcd: %w", err)
			}
			dt = append(dt, d)
			leader = 1 - leader
		}
		po = append(po, PercentileMs(do, 99))
		pt = append(pt, PercentileMs(dt, 99))
		return nil
	})
	_ = ours.resign(context.WithoutCancel(ctx), leader)
	_ = theirs.resign(context.WithoutCancel(ctx), leader)
	if err != nil {
		return Result{}, err
	}
	return Pair(name, "ms", Median(po), Median(pt), "concurrency.Election", true), nil
}

// benchFailover: a leader on its own client, a waiting candidate on
// another; the leader's client is cut off and the candidate's Campaign
// returns once the server expired the leader's lease, whose TTL is the
// cluster's shortest.
func benchFailover(ctx context.Context, env *Env, n int) (Result, error) {
	const name = "bench/election.failover/"
	var po, pt []float64
	err := Rounds(ctx, env, "election.failover", func(ctx context.Context, r Round) error {
		var do, dt []float64
		for range n {
			// Names of the attempt's own: a failed attempt can leave a
			// candidate behind that a retry must not queue after.
			d, err := failoverConcord(ctx, env, name+"concord/"+r.ID())
			if err != nil {
				return fmt.Errorf("concord: %w", err)
			}
			do = append(do, d)
			d, err = failoverEtcd(ctx, env, name+"etcd/"+r.ID())
			if err != nil {
				return fmt.Errorf("etcd: %w", err)
			}
			dt = append(dt, d)
		}
		po = append(po, Median(do))
		pt = append(pt, Median(dt))
		return nil
	})
	if err != nil {
		return Result{}, err
	}
	return Pair("election.failover_over_ttl", "ms", Median(po), Median(pt), "concurrency.Election", true), nil
}

// failoverClients returns a leader client (to be cut) and a candidate client.
func failoverClients(env *Env) (*clientv3.Client, *clientv3.Client, error) {
	lc, err := env.NewCuttableClient()
	if err != nil {
		return nil, nil, err
	}
	cc, err := env.NewClient()
	if err != nil {
		return nil, nil, err
	}
	return lc, cc, nil
}

func failoverConcord(ctx context.Context, env *Env, name string) (float64, error) {
	lc, cc, err := failoverClients(env)
	if err != nil {
		return 0, err
	}
	// The shortest TTL the members grant: the figure is the failover time
	// beyond it (1 s with 100 ms elections, 2 s with etcd's default 1 s).
	ttl := env.Cluster.MinLeaseTTL()
	kl, err := leasekeeper.New(ctx, lc, leasekeeper.WithTTL(ttl))
	if err != nil {
		return 0, err
	}
	kc, err := leasekeeper.New(ctx, cc, leasekeeper.WithTTL(ttl))
	if err != nil {
		_ = kl.Close(ctx)
		return 0, err
	}
	defer kc.Close(context.WithoutCancel(ctx))
	a, b := election.New(kl, name), election.New(kc, name)
	ta, err := a.Campaign(ctx, "a")
	if err != nil {
		_ = kl.Close(ctx)
		return 0, err
	}
	done := make(chan error, 1)
	var tb *election.Term
	go func() {
		var err error
		tb, err = b.Campaign(ctx, "b")
		done <- err
	}()
	if err := waitKeys(ctx, cc, name, 2); err != nil {
		return 0, err
	}
	env.Cluster.CutClient(lc)
	start := time.Now()
	err = <-done
	d := time.Since(start)
	env.Cluster.RestoreClient(lc)
	_ = ta.Resign(ctx)
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	_ = kl.Close(cctx)
	cancel()
	if err != nil {
		return 0, err
	}
	_ = tb.Resign(ctx)
	return float64(d-ttl) / float64(time.Millisecond), nil
}

func failoverEtcd(ctx context.Context, env *Env, name string) (float64, error) {
	lc, cc, err := failoverClients(env)
	if err != nil {
		return 0, err
	}
	ttl := env.Cluster.MinLeaseTTL()
	sl, err := concurrency.NewSession(lc, concurrency.WithTTL(int(ttl/time.Second)))
	if err != nil {
		return 0, err
	}
	sc, err := concurrency.NewSession(cc, concurrency.WithTTL(int(ttl/time.Second)))
	if err != nil {
		return 0, err
	}
	defer sc.Close()
	a, b := concurrency.NewElection(sl, name), concurrency.NewElection(sc, name)
	if err := a.Campaign(ctx, "a"); err != nil {
		return 0, err
	}
	done := make(chan error, 1)
	go func() { done <- b.Campaign(ctx, "b") }()
	if err := waitKeys(ctx, cc, name, 2); err != nil {
		return 0, err
	}
	env.Cluster.CutClient(lc)
	start := time.Now()
	err = <-done
	d := time.Since(start)
	env.Cluster.RestoreClient(lc)
	_ = sl.Close() // its lease is gone already; Close only stops the keep-alive
	if err != nil {
		return 0, err
	}
	_ = b.Resign(ctx)
	return float64(d-ttl) / float64(time.Millisecond), nil
}

// waitKeys waits until n keys exist under prefix, polling: the candidate's
// key is written inside its Campaign, which gives no signal before it
// returns.
func waitKeys(ctx context.Context, cli *clientv3.Client, prefix string, n int64) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := cli.Get(ctx, prefix+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return err
		}
		if resp.Count >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d candidates under %s not seen within 5 s", n, prefix)
		}
		time.Sleep(time.Millisecond)
	}
}
