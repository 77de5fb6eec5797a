package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/testcluster"
)

type faultKind string

const (
	faultKill            faultKind = "kill"             // crash a member, restart it after the hold
	faultPartition       faultKind = "partition"        // cut a follower off from its peers, heal after the hold
	faultLeaderStop      faultKind = "leader-stop"      // stop the leader gracefully, restart it after the hold
	faultLeaderPartition faultKind = "leader-partition" // cut the leader off from its peers, heal after the hold
	faultCompact         faultKind = "compact"          // compact the history to the current revision
	faultClientCut       faultKind = "client-cut"       // stall one workload client, restore it after the hold
	faultLeaderPause     faultKind = "leader-pause"     // SIGSTOP the leader's process past an election, SIGCONT after the hold
)

// allMemberFaults are the cluster faults a nemesis chooses among by default.
// leader-pause needs member processes (CONCORD_ETCD); on embedded members
// the nemesis partitions the leader instead, the closest fault they have.
var allMemberFaults = []faultKind{faultKill, faultPartition, faultLeaderStop, faultLeaderPartition, faultLeaderPause, faultCompact}

type span [2]time.Duration

func (s span) draw(rng *rand.Rand) time.Duration {
	if s[1] <= s[0] {
		return s[0]
	}
	return s[0] + time.Duration(rng.Int64N(int64(s[1]-s[0])))
}

// nemesisConfig says which faults a nemesis injects and how it paces them.
type nemesisConfig struct {
	kinds   []faultKind        // member and cluster faults, one at a time
	gap     span               // pause before each member fault
	hold    span               // how long a member fault lasts
	clients []*clientv3.Client // clients that client-cut may stall, one at a time
	cutGap  span               // pause before each client cut
	cutHold span               // how long a client stays cut
	// holder, if set, returns the index of the client that holds what the
	// workload contends for (-1: none); client-cut then picks it half the
	// time, so that cuts hit holders, not only bystanders.
	holder       func() int
	holderAlways bool // cut the holder every time (the catches tests)
}

// workloadKeepers connects n workload clients, each with a keeper on a 1 s
// lease, and makes them the clients the nemesis may cut. The returned
// function closes the keepers.
func workloadKeepers(ctx context.Context, t *testing.T, c *testcluster.Cluster, cfg *nemesisConfig, n int) ([]*leasekeeper.Keeper, func()) {
	t.Helper()
	var keepers []*leasekeeper.Keeper
	cfg.clients = nil
	for range n {
		cli, err := c.NewClient()
		require.NoError(t, err)
		k, err := leasekeeper.New(ctx, cli, leasekeeper.WithTTL(c.LeaseTTL(time.Second)))
		require.NoError(t, err)
		keepers = append(keepers, k)
		cfg.clients = append(cfg.clients, cli)
	}
	return keepers, func() {
		for _, k := range keepers {
			_ = k.Close(context.Background())
		}
	}
}

func defaultNemesis() nemesisConfig {
	return nemesisConfig{
		kinds:   allMemberFaults,
		gap:     span{200 * time.Millisecond, 900 * time.Millisecond},
		hold:    span{200 * time.Millisecond, 1200 * time.Millisecond},
		cutGap:  span{300 * time.Millisecond, 1500 * time.Millisecond},
		cutHold: span{1600 * time.Millisecond, 2600 * time.Millisecond}, // past a 1 s lease's expiry on the server
	}
}

// nemesis injects faults into a cluster on a seeded random schedule. The
// seed fixes the sequence of choices (kind, victim, durations), not the
// cluster's timing.
type nemesis struct {
	t     testing.TB
	c     *testcluster.Cluster
	cfg   nemesisConfig
	seed  int64
	start time.Time

	mu     sync.Mutex // protects counts, trace
	counts map[faultKind]int
	trace  []string
}

func newNemesis(t testing.TB, c *testcluster.Cluster, seed int64, cfg nemesisConfig) *nemesis {
	// Client cuts last past a lease's expiry on the server: the spans are
	// set for a 1 s lease; members with longer elections grant no lease
	// that short, and the cuts are longer by the difference.
	if extra := c.LeaseTTL(time.Second) - time.Second; extra > 0 {
		cfg.cutHold = span{cfg.cutHold[0] + extra, cfg.cutHold[1] + extra}
	}
	n := &nemesis{t: t, c: c, cfg: cfg, seed: seed, counts: map[faultKind]int{}}
	t.Cleanup(func() {
		if t.Failed() {
			n.mu.Lock()
			defer n.mu.Unlock()
			t.Logf("fault trace (seed %d):\n  %s", n.seed, strings.Join(n.trace, "\n  "))
		}
	})
	return n
}

// run injects faults until ctx ends, then undoes the fault in progress and
// waits for the cluster to agree on a leader again.
func (n *nemesis) run(ctx context.Context) {
	n.start = time.Now()
	var wg sync.WaitGroup
	if len(n.cfg.kinds) > 0 {
		wg.Go(func() { n.memberLoop(ctx, rand.New(rand.NewPCG(uint64(n.seed), 1))) })
	}
	if len(n.cfg.clients) > 0 {
		wg.Go(func() { n.clientLoop(ctx, rand.New(rand.NewPCG(uint64(n.seed), 2))) })
	}
	wg.Wait()
	wctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := n.c.WaitLeader(wctx); err != nil {
		n.t.Errorf("nemesis: cluster has no leader after the faults: %v", err)
	}
}

// pause waits d or until ctx ends; it reports whether the full d passed.
// This paces faults; it synchronises nothing.
func pause(ctx context.Context, d time.Duration) bool {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (n *nemesis) record(kind faultKind, format string, args ...any) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.counts[kind]++
	n.trace = append(n.trace, fmt.Sprintf("+%6.2fs %-16s %s", time.Since(n.start).Seconds(), kind, fmt.Sprintf(format, args...)))
}

func (n *nemesis) logf(format string, args ...any) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.trace = append(n.trace, fmt.Sprintf("+%6.2fs %s", time.Since(n.start).Seconds(), fmt.Sprintf(format, args...)))
}

func (n *nemesis) memberLoop(ctx context.Context, rng *rand.Rand) {
	for {
		// Draw everything first, so that the sequence of draws does not
		// depend on how the cluster behaved.
		gap, hold := n.cfg.gap.draw(rng), n.cfg.hold.draw(rng)
		kind := n.cfg.kinds[rng.IntN(len(n.cfg.kinds))]
		pick := rng.IntN(n.c.Size())
		if !pause(ctx, gap) {
			return
		}
		n.inject(ctx, kind, pick, hold)
	}
}

func (n *nemesis) inject(ctx context.Context, kind faultKind, pick int, hold time.Duration) {
	switch kind {
	case faultKill:
		if err := n.c.Kill(pick); err != nil {
			n.t.Errorf("nemesis: kill member %d: %v", pick, err)
			return
		}
		n.record(kind, "member %d for %v", pick, hold)
		pause(ctx, hold)
		n.restart(pick)
	case faultLeaderStop:
		l := n.leader(ctx)
		if l < 0 {
			return
		}
		if err := n.c.Stop(l); err != nil {
			n.t.Errorf("nemesis: stop leader %d: %v", l, err)
			return
		}
		n.record(kind, "member %d for %v", l, hold)
		pause(ctx, hold)
		n.restart(l)
	case faultLeaderPause:
		if n.c.Binary() == "" {
			n.inject(ctx, faultLeaderPartition, pick, hold)
			return
		}
		l := n.leader(ctx)
		if l < 0 {
			return
		}
		// Long enough for the others to elect a new leader: the paused
		// one then resumes believing it still leads, and may act on its
		// stale view (revoke leases whose TTL ran out by its clock) before
		// it learns otherwise.
		hold += 2 * n.c.ElectionTimeout()
		if err := n.c.Pause(l); err != nil {
			n.t.Errorf("nemesis: pause leader %d: %v", l, err)
			return
		}
		n.record(kind, "member %d for %v", l, hold)
		pause(ctx, hold)
		if err := n.c.Resume(l); err != nil {
			n.t.Errorf("nemesis: resume member %d: %v", l, err)
			return
		}
		n.logf("resumed member %d", l)
	case faultPartition, faultLeaderPartition:
		l := n.leader(ctx)
		if l < 0 {
			return
		}
		victim := l
		if kind == faultPartition {
			// The pick-th follower.
			victim = (l + 1 + pick%(n.c.Size()-1)) % n.c.Size()
		}
		n.c.Partition(victim)
		n.record(kind, "member %d for %v", victim, hold)
		pause(ctx, hold)
		n.c.Heal()
		n.logf("healed member %d", victim)
	case faultCompact:
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		rev, err := n.c.Compact(cctx)
		if err != nil {
			// A compaction can fail while the cluster elects a leader; that
			// is the cluster's business, not the test's.
			n.logf("compact failed: %v", err)
			return
		}
		n.record(kind, "to revision %d", rev)
	}
}

// leader waits for the cluster to agree on a leader, briefly.
func (n *nemesis) leader(ctx context.Context) int {
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	l, err := n.c.WaitLeader(lctx)
	if err != nil {
		if ctx.Err() == nil {
			n.logf("no leader to fault: %v", err)
		}
		return -1
	}
	return l
}

func (n *nemesis) restart(i int) {
	rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := n.c.Restart(rctx, i); err != nil {
		n.t.Errorf("nemesis: restart member %d: %v", i, err)
		return
	}
	n.logf("restarted member %d", i)
}

func (n *nemesis) clientLoop(ctx context.Context, rng *rand.Rand) {
	for {
		gap, hold := n.cfg.cutGap.draw(rng), n.cfg.cutHold.draw(rng)
		i := rng.IntN(len(n.cfg.clients))
		targeted := rng.IntN(2) == 0 || n.cfg.holderAlways
		if !pause(ctx, gap) {
			return
		}
		if h := -1; targeted && n.cfg.holder != nil {
			if h = n.cfg.holder(); h >= 0 {
				i = h
			}
		}
		cli := n.cfg.clients[i]
		n.c.CutClient(cli)
		n.record(faultClientCut, "client %d for %v", i, hold)
		pause(ctx, hold)
		n.c.RestoreClient(cli)
		n.logf("restored client %d", i)
	}
}

func (n *nemesis) countsString() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.counts) == 0 {
		return "none"
	}
	var parts []string
	for k, v := range n.counts {
		parts = append(parts, fmt.Sprintf("%s=%d", k, v))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

// nemesisTime is how long the nemesis of a run set for d runs on cluster c:
// longer by twice the cluster's extra minimum TTL over a 1 s lease, so that
// a cut holder's lease still expires on the server, and the next holder
// still acts, within the run.
func nemesisTime(c *testcluster.Cluster, d time.Duration) time.Duration {
	return d + 2*(c.LeaseTTL(time.Second)-time.Second)
}

// tenure is how long a holder set to work for d works on cluster c: a
// tenure that outlives a 1 s lease's expiry must outlive the cluster's
// minimum TTL by as much.
func tenure(c *testcluster.Cluster, d time.Duration) time.Duration {
	if d < time.Second {
		return d // a short tenure is meant to end before any expiry
	}
	return d + 2*(c.LeaseTTL(time.Second)-time.Second)
}
