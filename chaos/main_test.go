package chaos

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/concordkit/concord/testcluster"
)

var (
	seedFlag = flag.Int64("chaos.seed", 0, "seed for the nemesis schedule and the workloads (0: pick one from the clock)")
	longFlag = flag.Bool("chaos.long", false, "run the long form of each chaos test (minutes each; raise -timeout)")
	// marginFlag sets the leasekeeper margin of the leasekeeper workload; 0
	// keeps the keeper's default (TTL/10, at least 50 ms).
	marginFlag = flag.Duration("chaos.margin", 250*time.Millisecond, "leasekeeper margin in TestChaosLeasekeeper (0: the keeper's default)")
)

func TestMain(m *testing.M) {
	code := m.Run()
	printSummaries()
	if code == 0 {
		// Every test closes its own cluster; what is left after them is a leak.
		// Except one of etcd's own: a member killed while serving a peer's
		// version request leaves that handler blocked for good on its closed
		// backend's lock (seen in the long form, after tens of kills). It
		// belongs to the embedded server, not to code under test.
		opts := append(testcluster.LeakOptions(),
			goleak.IgnoreAnyFunction("go.etcd.io/etcd/server/v3/etcdserver/api/etcdhttp.newPeerHandler.versionHandler.func1"))
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := goleak.Find(opts...)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				fmt.Fprintf(os.Stderr, "chaos: goroutines left after the tests: %v\n", err)
				code = 1
				break
			}
		}
	}
	os.Exit(code)
}

// seed returns the seed for this run: the flag's, or one from the clock.
func seed(t testing.TB) int64 {
	t.Helper()
	s := *seedFlag
	if s == 0 {
		s = time.Now().UnixNano()
	}
	t.Logf("seed %d (replay: go test -race ./chaos/ -run '^%s$' -chaos.seed=%d)", s, t.Name(), s)
	return s
}

// chaosDuration is how long the nemesis runs in a chaos test.
func chaosDuration(short time.Duration) time.Duration {
	if *longFlag {
		return 20 * short
	}
	return short
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// report gathers what a chaos test measured: operations, violations found
// by its checkers, and the faults its nemesis injected.
type report struct {
	name  string
	seed  int64
	start time.Time
	ops   atomic.Int64

	mu         sync.Mutex // protects violations, notes
	violations []string
	notes      []string
}

func newReport(t testing.TB, seed int64) *report {
	return &report{name: t.Name(), seed: seed, start: time.Now()}
}

// violate records a violation of the property a checker checks.
func (r *report) violate(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.violations = append(r.violations, fmt.Sprintf(format, args...))
}

// note records a figure for the summary line.
func (r *report) note(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

// countPrefix counts the violations whose text starts with prefix.
func (r *report) countPrefix(prefix string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, v := range r.violations {
		if strings.HasPrefix(v, prefix) {
			n++
		}
	}
	return n
}

// line is the summary of the test.
func (r *report) line(n *nemesis) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	faults := "none"
	if n != nil {
		faults = n.countsString()
	}
	s := fmt.Sprintf("%s: %d operations; faults %s; %d violations; seed %d; %v",
		r.name, r.ops.Load(), faults, len(r.violations), r.seed, time.Since(r.start).Round(100*time.Millisecond))
	if len(r.notes) > 0 {
		s += "; " + strings.Join(r.notes, "; ")
	}
	return s
}

// expectNone fails t if any violation was recorded, and logs the summary.
func (r *report) expectNone(t testing.TB, n *nemesis) {
	t.Helper()
	r.finish(t, n)
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, v := range r.violations {
		if i == 20 {
			t.Errorf("... and %d more", len(r.violations)-i)
			break
		}
		t.Errorf("violation: %s", v)
	}
}

// expectSome fails t unless the checker reported violations: the test ran
// a workload with its protection switched off.
func (r *report) expectSome(t testing.TB, n *nemesis) {
	t.Helper()
	r.finish(t, n)
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.violations) == 0 {
		t.Errorf("the checker found no violation in an unprotected workload: it cannot fail")
		return
	}
	for i, v := range r.violations {
		if i == 5 {
			t.Logf("... and %d more", len(r.violations)-i)
			break
		}
		t.Logf("caught, as expected: %s", v)
	}
}

func (r *report) finish(t testing.TB, n *nemesis) {
	t.Helper()
	l := r.line(n)
	t.Log(l)
	summaries.Lock()
	summaries.lines = append(summaries.lines, l)
	summaries.Unlock()
}

var summaries struct {
	sync.Mutex
	lines []string
}

func printSummaries() {
	summaries.Lock()
	defer summaries.Unlock()
	if len(summaries.lines) == 0 {
		return
	}
	sort.Strings(summaries.lines)
	fmt.Println("chaos summary:")
	for _, l := range summaries.lines {
		fmt.Println("  " + l)
	}
}
