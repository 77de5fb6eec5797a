package main

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

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

// Env is what a group of figures runs on: one 3-member cluster shared by the
// whole run.
type Env struct {
	Cluster *testcluster.Cluster
	Rounds  int // each figure is the median of this many rounds (at least 5)
	Quick   bool

	mu      sync.Mutex
	clients []*clientv3.Client
}

// NewClient returns a new client of its own (its own connection, like a
// separate process), connected to the members directly as in production,
// closed at the end of the run.
func (e *Env) NewClient() (*clientv3.Client, error) {
	return e.newClient(testcluster.Direct())
}

// NewCuttableClient is NewClient through the cluster's loopback proxies, for
// figures that cut a client off (Env.Cluster.CutClient). The proxy adds a
// little CPU per request; use it only where a cut is needed.
func (e *Env) NewCuttableClient() (*clientv3.Client, error) {
	return e.newClient()
}

func (e *Env) newClient(opts ...testcluster.ClientOption) (*clientv3.Client, error) {
	cli, err := e.Cluster.NewClient(opts...)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.clients = append(e.clients, cli)
	e.mu.Unlock()
	return cli, nil
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

// Group measures related figures together. Figures lists every name it can
// produce, so -run can select groups without running them.
type Group struct {
	Name    string
	Figures []string
	Run     func(ctx context.Context, env *Env) ([]Result, error)
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

// Rounds runs fn env.Rounds times and returns each round's value, so a figure
// can take their median. When two sides are compared, call both inside fn so
// they alternate on the same cluster.
func Rounds(ctx context.Context, env *Env, fn func(round int) error) error {
	for i := range env.Rounds {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(i); err != nil {
			return fmt.Errorf("round %d: %w", i, err)
		}
	}
	return nil
}
