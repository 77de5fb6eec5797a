package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/retry"
	"github.com/concordkit/concord/testcluster"
)

// Result is one figure. A figure compares concord with a baseline measured in
// the same run on the same cluster, or reports one side alone.
type Result struct {
	Name          string
	Unit          string // "ms", "1/s", "pct", "x", "B"
	Concord       float64
	Baseline      float64
	BaselineName  string
	HasConcord    bool
	HasBaseline   bool
	LowerIsBetter bool // true for times and costs, false for rates

	// Skipped says why the figure was not measured on this run.
	Skipped string
	// Retried counts the rounds of the figure's group that failed with a
	// transient error and ran again: a figure whose rounds were retried
	// still has its full number of rounds, but the run hit a fault.
	Retried int
}

// X is how many times better concord is than the baseline: >1 means concord
// wins. 0 when either side is missing.
func (r Result) X() float64 {
	if !r.HasConcord || !r.HasBaseline || r.Concord == 0 || r.Baseline == 0 {
		return 0
	}
	if r.LowerIsBetter {
		return r.Baseline / r.Concord
	}
	return r.Concord / r.Baseline
}

// Pair is a figure measured on both sides.
func Pair(name, unit string, concord, baseline float64, baselineName string, lowerIsBetter bool) Result {
	return Result{Name: name, Unit: unit, Concord: concord, Baseline: baseline, BaselineName: baselineName,
		HasConcord: true, HasBaseline: true, LowerIsBetter: lowerIsBetter}
}

// Single is a figure of concord's alone.
func Single(name, unit string, v float64, lowerIsBetter bool) Result {
	return Result{Name: name, Unit: unit, Concord: v, HasConcord: true, LowerIsBetter: lowerIsBetter}
}

// BaselineOnly is a figure of etcd's alone (the numbers later figures beat).
func BaselineOnly(name, unit string, v float64, baselineName string, lowerIsBetter bool) Result {
	return Result{Name: name, Unit: unit, Baseline: v, BaselineName: baselineName, HasBaseline: true, LowerIsBetter: lowerIsBetter}
}

// Skip is a figure this run cannot measure, and why.
func Skip(name, why string) Result { return Result{Name: name, Skipped: why} }

// Env is what a group of figures runs on: one 3-member cluster shared by the
// whole run, started by the bench (Cluster set) or given by -endpoints
// (Cluster nil: no faults, no fresh clusters).
type Env struct {
	Cluster *testcluster.Cluster
	Rounds  int // each figure is the median of this many rounds (at least 5)
	Quick   bool

	// RoundTimeout bounds one attempt of a round, so that a round stuck
	// on a request that will never be answered fails and is retried.
	RoundTimeout time.Duration
	// Retries is how many times one round may be retried after a
	// transient failure.
	Retries int

	clusterOpts []testcluster.Option // how the bench starts clusters
	endpoints   []string             // -endpoints: the cluster's client URLs
	dialCfg     clientv3.Config      // -endpoints: TLS and credentials
	delay       time.Duration        // client latency, each direction (bench-started clusters only)
	log         *progress            // progress lines on stderr
	raft        *raftWatch           // elections seen, per group and round

	mu      sync.Mutex
	clients []*clientv3.Client
	retried int // rounds retried in the current group
}

// NewClient returns a new client of its own (its own connection, like a
// separate process), connected to every member as in production, closed at
// the end of the group. With -delay it goes through the cluster's proxies,
// which add the latency; otherwise it talks to the members directly.
func (e *Env) NewClient() (*clientv3.Client, error) {
	if e.Cluster == nil {
		return e.dial(e.endpoints)
	}
	if e.delay > 0 {
		return e.newClient()
	}
	return e.newClient(testcluster.Direct())
}

// NewClientTo is NewClient connected to member i alone.
func (e *Env) NewClientTo(i int) (*clientv3.Client, error) {
	if e.Cluster == nil {
		if i < 0 || i >= len(e.endpoints) {
			return nil, fmt.Errorf("no member %d", i)
		}
		return e.dial(e.endpoints[i : i+1])
	}
	if e.delay > 0 {
		return e.newClient(testcluster.To(i))
	}
	return e.newClient(testcluster.Direct(), testcluster.To(i))
}

// NewCuttableClient is NewClient through the cluster's loopback proxies, for
// figures that cut a client off (Env.Cluster.CutClient). The proxy adds a
// little CPU per request; use it only where a cut is needed. Only on a
// cluster the bench started.
func (e *Env) NewCuttableClient() (*clientv3.Client, error) {
	if e.Cluster == nil {
		return nil, errNoFaults
	}
	return e.newClient()
}

var errNoFaults = errors.New("needs a cluster the bench starts (not -endpoints)")

func (e *Env) newClient(opts ...testcluster.ClientOption) (*clientv3.Client, error) {
	cli, err := e.Cluster.NewClient(opts...)
	if err != nil {
		return nil, err
	}
	e.track(cli)
	return cli, nil
}

func (e *Env) dial(eps []string) (*clientv3.Client, error) {
	cfg := e.dialCfg
	cfg.Endpoints = eps
	if cfg.TLS != nil {
		cfg.TLS = cfg.TLS.Clone()
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, err
	}
	e.track(cli)
	return cli, nil
}

func (e *Env) track(cli *clientv3.Client) {
	e.mu.Lock()
	e.clients = append(e.clients, cli)
	e.mu.Unlock()
}

// Members returns the number of members.
func (e *Env) Members() int {
	if e.Cluster == nil {
		return len(e.endpoints)
	}
	return e.Cluster.Size()
}

// Leader returns the index of the raft leader, once the members agree on
// one (on -endpoints: the member that says it leads).
func (e *Env) Leader(ctx context.Context) (int, error) {
	if e.Cluster != nil {
		return e.Cluster.WaitLeader(ctx)
	}
	for {
		for i, st := range e.raft.status(ctx) {
			if st != nil && st.Header.MemberId == st.Leader {
				return i, nil
			}
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("no leader: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Clients returns n new clients.
func (e *Env) Clients(n int) ([]*clientv3.Client, error) {
	out := make([]*clientv3.Client, n)
	for i := range out {
		cli, err := e.NewClient()
		if err != nil {
			return nil, err
		}
		out[i] = cli
	}
	return out, nil
}

// Scale returns full, or small when the run is -quick.
func (e *Env) Scale(full, small int) int {
	if e.Quick {
		return small
	}
	return full
}

func (e *Env) closeClients() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, c := range e.clients {
		_ = c.Close()
	}
	e.clients = nil
}

// takeRetried returns the rounds retried since the last call.
func (e *Env) takeRetried() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := e.retried
	e.retried = 0
	return n
}

// Group measures related figures together. Figures lists every name it can
// produce, so -run can select groups without running them.
type Group struct {
	Name    string
	Figures []string
	// Faults lists the figures that need a cluster the bench started (to
	// kill or cut members, or to start clusters of its own). On -endpoints
	// they are reported as skipped; Run must not measure them when
	// Env.Cluster is nil.
	Faults []string
	// Disruptive groups kill members: they run after all others, so that
	// no other figure is measured on a member that has just restarted.
	Disruptive bool
	Run        func(ctx context.Context, env *Env) ([]Result, error)
}

var groups []Group

// Register adds a group; call it from an init function.
func Register(g Group) { groups = append(groups, g) }

// Median returns the median of xs (0 for none).
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// PercentileMs returns the p-th percentile (0 < p ≤ 100) of ds in
// milliseconds, by the nearest-rank method.
func PercentileMs(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	rank = min(max(rank, 1), len(s))
	return float64(s[rank-1]) / float64(time.Millisecond)
}

// Round is one attempt at one round of a figure.
type Round struct {
	N       int // the round, from 0; the same when it is retried
	Attempt int // 0, then 1, 2, … when the round is retried
}

// ID names the attempt, for keys and names a round writes: a retried round
// must not meet what its failed attempt left behind (a lock key of a
// request that timed out, say).
func (r Round) ID() string {
	if r.Attempt == 0 {
		return fmt.Sprint(r.N)
	}
	return fmt.Sprintf("%d.%d", r.N, r.Attempt)
}

// Rounds runs fn env.Rounds times, each with a context bounded by
// env.RoundTimeout, and returns the first error that is not transient. So
// that a figure can take the median of the rounds, fn must record a round's
// values only once the round succeeded; when two sides are compared, call
// both inside fn so they alternate on the same cluster.
//
// A round that fails with a transient error of the cluster (a request timed
// out, no leader: retry.Retriable) or runs out of its own time is run again,
// up to env.Retries times: one fault on a shared machine must not end a
// run that takes many minutes. Each retry is told on stderr and counted in
// the figures' Retried.
func Rounds(ctx context.Context, env *Env, label string, fn func(ctx context.Context, r Round) error) error {
	for i := range env.Rounds {
		for attempt := 0; ; attempt++ {
			if err := ctx.Err(); err != nil {
				return err
			}
			env.log.round(label, i, env.Rounds, attempt)
			mark := env.raft.mark(ctx)
			rctx, cancel := context.WithTimeoutCause(ctx, env.RoundTimeout, errRoundTimeout)
			err := fn(rctx, Round{N: i, Attempt: attempt})
			timedOut := errors.Is(context.Cause(rctx), errRoundTimeout)
			cancel()
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if timedOut {
				err = fmt.Errorf("%w: %w", errRoundTimeout, err)
			}
			elections := env.raft.since(ctx, mark)
			if attempt >= env.Retries || !(timedOut || retry.Retriable(err)) {
				return fmt.Errorf("%s round %d/%d: %w (during the round: %s)", label, i+1, env.Rounds, err, elections)
			}
			env.mu.Lock()
			env.retried++
			env.mu.Unlock()
			env.log.printf("%s round %d/%d failed, retrying: %v (during the round: %s)", label, i+1, env.Rounds, err, elections)
			if err := env.settle(ctx); err != nil {
				return fmt.Errorf("%s round %d/%d: %w", label, i+1, env.Rounds, err)
			}
		}
	}
	return nil
}

var errRoundTimeout = errors.New("round took longer than -round-timeout")

// settle waits, after a failed round, until the cluster has a leader again.
func (e *Env) settle(ctx context.Context) error {
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := e.Leader(wctx); err != nil {
		return err
	}
	// Let the members' view of the new leader reach the clients' requests.
	t := time.NewTimer(200 * time.Millisecond)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
