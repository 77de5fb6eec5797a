package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/testcluster"
)

// raftWatch follows the members' raft state through the Status RPC, on
// clients of its own that bypass the proxies (and so any -delay): the raft
// term, which grows by one with every election (pre-vote keeps a member that
// cannot win from raising it), and, polled, the leader. A leader change in
// the middle of a figure is a fault the figure did not ask for: it shows up
// as a request timed out, a round retried or a slow outlier, so the run says
// how many happened, per group and per failed round.
//
// It also measures how late a goroutine of the bench process wakes from a
// short sleep. Embedded members run their raft loops in this process: a
// follower whose loop does not run for an election timeout (100 to 200 ms,
// randomised, with the embedded default timing) calls an election. So the
// lateness says how close a run came to starving the members.
type raftWatch struct {
	clis []*clientv3.Client

	// Where the members' Prometheus metrics are read: one member's when
	// they are embedded (members in one process share the counters),
	// every member's otherwise.
	metricURLs []string
	http       *http.Client

	stop context.CancelFunc
	wg   sync.WaitGroup // poll and lateness

	mu      sync.Mutex // protects the fields below
	leader  uint64     // last leader seen by the poll (0: none yet)
	changes int        // times the poll saw a different leader than before
	lates   []lateWake // wake-ups at least lateMin late, in time order
	start   raftMark
}

// raftMark is the raft state at one time, to count what happened since.
type raftMark struct {
	at      time.Time
	term    uint64 // highest term any member reported (0: none answered)
	changes int
	metrics []map[string]float64 // per member read; nil where it did not answer
}

// Counters of etcd's that tell why requests failed or stalled, summed over
// the members. (Each member counts the leader changes it saw: three members
// count one change three times.)
var etcdCounters = []struct{ name, what string }{
	{"etcd_server_leader_changes_seen_total", "leader changes seen by members"},
	{"etcd_server_heartbeat_send_failures_total", "heartbeats sent over 2 ticks late"},
	{"etcd_server_slow_apply_total", "applies over 100 ms"},
	{"etcd_server_proposals_failed_total", "proposals failed or canceled"},
	{"etcd_server_slow_read_indexes_total", "slow read indexes"},
	{"etcd_server_read_indexes_failed_total", "read indexes failed"},
	{"etcd_network_peer_sent_failures_total", "raft messages not sent to a peer"},
}

type lateWake struct {
	at   time.Time
	late time.Duration
}

const (
	// pollEvery is how often the watch asks who leads. A leader that lost
	// and won back its leadership between two polls is not a change of
	// leader, but the term still counts the election.
	pollEvery = 100 * time.Millisecond
	// sleepFor is the sleep whose lateness is measured: one embedded raft
	// tick.
	sleepFor = 10 * time.Millisecond
	// lateMin is the lateness worth keeping: a tick missed.
	lateMin = 10 * time.Millisecond
)

func newRaftWatch(env *Env) (*raftWatch, error) {
	w := &raftWatch{}
	for i := range env.Members() {
		var cli *clientv3.Client
		var err error
		if env.Cluster != nil {
			cli, err = env.Cluster.NewClient(testcluster.Direct(), testcluster.To(i))
		} else {
			cfg := env.dialCfg
			cfg.Endpoints = env.endpoints[i : i+1]
			if cfg.TLS != nil {
				cfg.TLS = cfg.TLS.Clone()
			}
			cli, err = clientv3.New(cfg)
		}
		if err != nil {
			w.close()
			return nil, err
		}
		w.clis = append(w.clis, cli)
	}
	w.http = &http.Client{Timeout: 2 * time.Second}
	switch {
	case env.Cluster == nil:
		w.metricURLs = env.endpoints
		if env.dialCfg.TLS != nil {
			w.http.Transport = &http.Transport{TLSClientConfig: env.dialCfg.TLS.Clone()}
		}
	case env.Cluster.Binary() == "":
		w.metricURLs = env.Cluster.Endpoints()[:1]
	default:
		w.metricURLs = env.Cluster.Endpoints()
	}
	ctx, cancel := context.WithCancel(context.Background())
	w.stop = cancel
	w.start = w.mark(ctx)
	w.wg.Go(func() { w.poll(ctx) })
	w.wg.Go(func() { w.lateness(ctx) })
	return w, nil
}

func (w *raftWatch) poll(ctx context.Context) {
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var best *clientv3.StatusResponse
		for _, st := range w.status(ctx) {
			if st != nil && st.Leader != 0 && (best == nil || st.RaftTerm > best.RaftTerm) {
				best = st
			}
		}
		if best == nil {
			continue
		}
		w.mu.Lock()
		if w.leader != 0 && best.Leader != w.leader {
			w.changes++
		}
		w.leader = best.Leader
		w.mu.Unlock()
	}
}

func (w *raftWatch) lateness(ctx context.Context) {
	t := time.NewTimer(sleepFor)
	defer t.Stop()
	due := time.Now().Add(sleepFor)
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if late := now.Sub(due); late >= lateMin {
				w.mu.Lock()
				w.lates = append(w.lates, lateWake{now, late})
				w.mu.Unlock()
			}
		}
		due = time.Now().Add(sleepFor)
		t.Reset(sleepFor)
	}
}

// status asks every member at once; a member that does not answer within
// a short deadline (stopped, killed, overloaded) has a nil entry.
func (w *raftWatch) status(ctx context.Context) []*clientv3.StatusResponse {
	out := make([]*clientv3.StatusResponse, len(w.clis))
	var wg sync.WaitGroup
	for i, cli := range w.clis {
		wg.Go(func() {
			sctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			defer cancel()
			if st, err := cli.Status(sctx, cli.Endpoints()[0]); err == nil {
				out[i] = st
			}
		})
	}
	wg.Wait()
	return out
}

// raftIndex returns the highest raft index any member reports: the number
// of entries the cluster committed, or is committing, so far.
func (w *raftWatch) raftIndex(ctx context.Context) uint64 {
	var idx uint64
	for _, st := range w.status(ctx) {
		if st != nil {
			idx = max(idx, st.RaftIndex)
		}
	}
	return idx
}

func (w *raftWatch) mark(ctx context.Context) raftMark {
	m := raftMark{at: time.Now()}
	for _, st := range w.status(ctx) {
		if st != nil {
			m.term = max(m.term, st.RaftTerm)
		}
	}
	w.mu.Lock()
	m.changes = w.changes
	w.mu.Unlock()
	m.metrics = w.metrics(ctx)
	return m
}

// metrics reads etcdCounters from the members' /metrics pages, one map per
// page, nil where a member did not answer (killed, stopped, or serving no
// metrics on its client URL).
func (w *raftWatch) metrics(ctx context.Context) []map[string]float64 {
	out := make([]map[string]float64, len(w.metricURLs))
	for i, u := range w.metricURLs {
		out[i] = w.page(ctx, u)
	}
	return out
}

func (w *raftWatch) page(ctx context.Context, u string) map[string]float64 {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(u, "/")+"/metrics", nil)
	if err != nil {
		return nil
	}
	resp, err := w.http.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		for _, c := range etcdCounters {
			// "name value" or "name{labels} value": sum every series.
			rest, ok := strings.CutPrefix(line, c.name)
			if !ok || !(strings.HasPrefix(rest, " ") || strings.HasPrefix(rest, "{")) {
				continue
			}
			f := strings.Fields(rest[strings.LastIndexByte(rest, '}')+1:])
			if len(f) > 0 {
				if v, err := strconv.ParseFloat(f[0], 64); err == nil {
					out[c.name] += v
				}
			}
		}
	}
	if sc.Err() != nil {
		return nil
	}
	return out
}

// counted returns what the members counted between two reads, and whether
// every member answered both times. A member whose counter went down was
// restarted in between: it counted its new value since.
func counted(then, now []map[string]float64) (map[string]float64, bool) {
	d := map[string]float64{}
	all := len(then) > 0
	for i := range min(len(then), len(now)) {
		if then[i] == nil || now[i] == nil {
			all = false
			continue
		}
		for _, c := range etcdCounters {
			v := now[i][c.name] - then[i][c.name]
			if v < 0 {
				v = now[i][c.name]
			}
			d[c.name] += v
		}
	}
	return d, all
}

// since says how many elections and leader changes happened since m, and
// how late the bench process woke from its 10 ms sleeps.
func (w *raftWatch) since(ctx context.Context, m raftMark) string {
	now := w.mark(ctx)
	elections := "?"
	if m.term != 0 && now.term != 0 {
		elections = fmt.Sprint(now.term - m.term)
	}
	var worst time.Duration
	over50 := 0
	w.mu.Lock()
	for _, l := range w.lates {
		if l.at.Before(m.at) {
			continue
		}
		worst = max(worst, l.late)
		if l.late >= 50*time.Millisecond {
			over50++
		}
	}
	w.mu.Unlock()
	late := fmt.Sprintf("up to %v late (%d times ≥ 50 ms)", worst.Round(time.Millisecond), over50)
	if worst == 0 {
		late = fmt.Sprintf("less than %v late", lateMin)
	}
	d, all := counted(m.metrics, now.metrics)
	var counts []string
	for _, c := range etcdCounters {
		if v := d[c.name]; v != 0 {
			counts = append(counts, fmt.Sprintf("%s %.0f", c.what, v))
		}
	}
	etcd := "etcd counters: nothing"
	if len(counts) > 0 {
		etcd = "etcd counters: " + strings.Join(counts, ", ")
	}
	if !all {
		etcd += " (not every member answered)"
	}
	return fmt.Sprintf("raft elections: %s (term %d → %d), leader changes seen: %d; %s; 10 ms sleeps woke %s",
		elections, m.term, now.term, now.changes-m.changes, etcd, late)
}

// total is since for the whole run.
func (w *raftWatch) total(ctx context.Context) string { return w.since(ctx, w.start) }

func (w *raftWatch) close() {
	if w.stop != nil {
		w.stop()
		w.wg.Wait()
	}
	for _, cli := range w.clis {
		_ = cli.Close()
	}
}
