package pubsub_test

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/namespace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/concordkit/concord/internal/names"
	"github.com/concordkit/concord/pubsub"
	"github.com/concordkit/concord/testcluster"
)

// long runs the fault checker for five rounds of faults instead of one:
//
//	go test -race -run Faults ./pubsub/ -args -pubsub.long
var long = flag.Bool("pubsub.long", false, "run the fault tests for more rounds")

func TestGapAfterCompaction(t *testing.T) {
	c := testcluster.New(t)
	topic := topicFor(t, c)
	ctx := ctxT(t, 30*time.Second)
	h := newHub(t, directClient(t, c, 2))
	s := subscribe(t, h, topic, pubsub.FromLatest())
	pub := newHub(t, newClient(t, c, testcluster.To(0)))
	first := publishN(t, pub, topic, 3, pubsub.WithMaxCount(5))
	for _, r := range first {
		assert.Equal(t, r, nextMsg(t, s).Rev)
	}

	// The subscriber's member goes away; meanwhile the ring wraps several
	// times and the history is compacted.
	require.NoError(t, c.Stop(2))
	more := publishN(t, pub, topic, 20)
	_, err := c.Compact(ctx)
	require.NoError(t, err)
	require.NoError(t, c.Restart(ctx, 2))

	g := nextGap(t, s)
	assert.Equal(t, pubsub.GapCompacted, g.Reason)
	assert.Equal(t, uint64(15), g.Lost)
	assert.Greater(t, g.From, first[2])
	assert.LessOrEqual(t, g.From, more[0])
	assert.Equal(t, more[15]-1, g.To)
	for _, r := range more[15:] {
		assert.Equal(t, r, nextMsg(t, s).Rev)
	}
	noEvent(t, s)
	assert.GreaterOrEqual(t, h.Stats().WatchesOpened, int64(2), "the watch was re-established")
	r := publishN(t, pub, topic, 1)[0]
	assert.Equal(t, r, nextMsg(t, s).Rev)
}

// directClient returns a client of member i alone that reconnects quickly
// after the member restarts (gRPC's default backoff starts at 1 s and grows).
func directClient(t *testing.T, c *testcluster.Cluster, i int) *clientv3.Client {
	t.Helper()
	cfg := c.ClientConfig()
	cfg.Endpoints = c.Endpoints()[i : i+1]
	cfg.DialOptions = append(cfg.DialOptions, grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 200 * time.Millisecond},
		MinConnectTimeout: time.Second,
	}))
	cli, err := clientv3.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// TestResumeAfterCompaction resumes from a revision whose history is
// compacted: which message came last before it is unknown, so the lost run
// is reported whole, with Lost unknown, and nothing retained is withheld.
func TestResumeAfterCompaction(t *testing.T) {
	topic := topicFor(t, cluster)
	pub := newHub(t, cluster.Client())
	revs := publishN(t, pub, topic, 20, pubsub.WithMaxCount(5))
	_, err := cluster.Compact(ctxT(t, 10*time.Second))
	require.NoError(t, err)
	s := subscribe(t, newHub(t, newClient(t, cluster)), topic, pubsub.FromRevision(revs[3]))
	assert.Equal(t, pubsub.Gap{From: revs[3], To: revs[15] - 1, Reason: pubsub.GapTrimmed}, *nextGap(t, s))
	for _, r := range revs[15:] {
		assert.Equal(t, r, nextMsg(t, s).Rev)
	}
	noEvent(t, s)
}

// faultSub is a subscription under test and what it must account for.
type faultSub struct {
	name string
	s    *pubsub.Subscription
	from int64
}

// TestNoSilentLossUnderFaults publishes continuously while members of the
// subscribers' cluster are killed, restarted, partitioned and the history is
// compacted, with a ring small enough to wrap during each fault. Afterwards,
// for every subscription, every acknowledged publish at or after its start is
// either delivered (with its payload) or inside a reported gap, and events
// come in strictly increasing revision order.
func TestNoSilentLossUnderFaults(t *testing.T) {
	c := testcluster.New(t)
	topic := topicFor(t, c)
	ctx := ctxT(t, 120*time.Second)
	pub := newHub(t, newClient(t, c, testcluster.To(0)))
	start, err := pub.Publish(ctx, topic, []byte("start"), pubsub.WithMaxCount(8))
	require.NoError(t, err)

	big := pubsub.WithBuffer(1 << 20)
	subs := []faultSub{
		{name: "member1", s: subscribe(t, newHub(t, newClient(t, c, testcluster.To(1))), topic, pubsub.FromRevision(start), big), from: start},
		{name: "member2", s: subscribe(t, newHub(t, newClient(t, c, testcluster.To(2))), topic, pubsub.FromRevision(start), big), from: start},
		{name: "all", s: subscribe(t, newHub(t, newClient(t, c)), topic, pubsub.FromLatest(), big), from: start + 1},
		{name: "slow", s: subscribe(t, newHub(t, newClient(t, c, testcluster.To(1))), topic, pubsub.FromRevision(start), pubsub.WithBuffer(4)), from: start},
	}

	// The publisher acknowledges each message it published on acks.
	type ack struct {
		rev     int64
		payload string
	}
	acks := make(chan ack, 1<<16)
	pctx, stopPub := context.WithCancel(ctx)
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		for i := 0; pctx.Err() == nil; i++ {
			p := fmt.Sprintf("p%d", i)
			cctx, cancel := context.WithTimeout(pctx, 2*time.Second)
			rev, err := pub.Publish(cctx, topic, []byte(p))
			cancel()
			if err == nil {
				acks <- ack{rev, p}
			}
		}
	}()
	acked := map[int64]string{start: "start"}
	// waitAcks waits for n publishes acknowledged from now on, so that each
	// fault lasts while the publisher makes progress.
	waitAcks := func(n int) {
		t.Helper()
		for len(acks) > 0 {
			a := <-acks
			acked[a.rev] = a.payload
		}
		for range n {
			select {
			case a := <-acks:
				acked[a.rev] = a.payload
			case <-ctx.Done():
				t.Fatalf("publisher stalled")
			}
		}
	}

	rounds := 1
	if *long {
		rounds = 5
	}
	for range rounds {
		waitAcks(5)
		require.NoError(t, c.Kill(1))
		waitAcks(20)
		require.NoError(t, c.Restart(ctx, 1))

		waitAcks(5)
		c.Partition(2)
		waitAcks(20)
		c.Heal()

		waitAcks(5)
		require.NoError(t, c.Stop(2))
		waitAcks(20)
		compact(t, ctx, c)
		require.NoError(t, c.Restart(ctx, 2))

		waitAcks(5)
		c.Partition(1)
		waitAcks(20)
		compact(t, ctx, c)
		c.Heal()
		_, err = c.WaitLeader(ctx)
		require.NoError(t, err)
	}
	waitAcks(10)
	stopPub()
	<-pubDone
	for len(acks) > 0 {
		a := <-acks
		acked[a.rev] = a.payload
	}
	last, err := pub.Publish(ctx, topic, []byte("last"))
	require.NoError(t, err)
	acked[last] = "last"

	gaps := 0
	for _, fs := range subs {
		t.Logf("reading %s", fs.name)
		evs := readUntil(t, fs.s, last)
		for _, ev := range evs {
			if ev.Gap != nil {
				gaps++
				t.Logf("%s: %v", fs.name, *ev.Gap)
			}
		}
		problems := checkCoverage(evs, acked, fs.from)
		for i, problem := range problems {
			if i == 10 {
				t.Errorf("%s: … %d problems in all", fs.name, len(problems))
				break
			}
			t.Errorf("%s: %s", fs.name, problem)
		}
	}
	t.Logf("%d acknowledged publishes, %d gaps reported over %d subscriptions", len(acked), gaps, len(subs))
	assert.Positive(t, gaps, "the faults should have forced gaps")
}

// compact compacts the cluster's history, trying again while a partitioned
// member it happened to ask cannot answer.
func compact(t *testing.T, ctx context.Context, c *testcluster.Cluster) {
	t.Helper()
	var err error
	for range 20 {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err = c.Compact(cctx)
		cancel()
		if err == nil {
			return
		}
	}
	t.Fatalf("compact: %v", err)
}

// readUntil reads events until one reaches revision last.
func readUntil(t *testing.T, s *pubsub.Subscription, last int64) []pubsub.Event {
	t.Helper()
	var evs []pubsub.Event
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		ev, err := s.Next(ctx)
		cancel()
		if err != nil {
			t.Fatalf("no event reaching %d after %d events: %v", last, len(evs), err)
		}
		evs = append(evs, ev)
		if (ev.Message != nil && ev.Message.Rev >= last) || (ev.Gap != nil && ev.Gap.To >= last) {
			return evs
		}
	}
}

// checkCoverage returns what is wrong with a subscription's events: order,
// payloads, and acknowledged publishes at or after from that were neither
// delivered nor inside a gap.
func checkCoverage(evs []pubsub.Event, acked map[int64]string, from int64) []string {
	var problems []string
	delivered := map[int64]bool{}
	var gaps []pubsub.Gap
	var prev int64
	for _, ev := range evs {
		switch {
		case ev.Message != nil:
			m := ev.Message
			if m.Rev <= prev {
				problems = append(problems, fmt.Sprintf("message %d after revision %d", m.Rev, prev))
			}
			if p, ok := acked[m.Rev]; ok && p != string(m.Payload) {
				problems = append(problems, fmt.Sprintf("message %d: payload %q, published %q", m.Rev, m.Payload, p))
			}
			delivered[m.Rev] = true
			prev = m.Rev
		case ev.Gap != nil:
			g := *ev.Gap
			if g.From <= prev || g.To < g.From {
				problems = append(problems, fmt.Sprintf("%v after revision %d", g, prev))
			}
			gaps = append(gaps, g)
			prev = g.To
		}
	}
	for rev := range acked {
		if rev < from || delivered[rev] {
			continue
		}
		inGap := false
		for _, g := range gaps {
			if g.From <= rev && rev <= g.To {
				inGap = true
				break
			}
		}
		if !inGap {
			problems = append(problems, fmt.Sprintf("publish at revision %d silently lost", rev))
		}
	}
	return problems
}

func TestPermissionDenied(t *testing.T) {
	c := testcluster.New(t, testcluster.WithAuth())
	ctx := ctxT(t, 30*time.Second)
	allowed := topicNamed(t, c, "allowed/"+t.Name())
	u, err := c.AddUser(ctx, "alice", "allowed/")
	require.NoError(t, err)
	h := newHub(t, newClient(t, c, testcluster.AsUser(u)))

	_, err = h.Publish(ctx, "forbidden/topic", []byte("x"))
	require.ErrorIs(t, err, rpctypes.ErrPermissionDenied)
	assert.True(t, strings.HasPrefix(err.Error(), "pubsub: "), err.Error())
	// A watch the server refuses ends Subscribe with the reason instead of
	// retrying forever.
	_, err = h.Subscribe(ctx, "forbidden/topic", pubsub.FromLatest())
	require.ErrorIs(t, err, rpctypes.ErrPermissionDenied)
	assert.Equal(t, 0, h.Stats().Topics)

	s := subscribe(t, h, allowed, pubsub.FromLatest())
	rev, err := h.Publish(ctx, allowed, []byte("ok"))
	require.NoError(t, err)
	assert.Equal(t, rev, nextMsg(t, s).Rev)
}

func TestUnderNamespace(t *testing.T) {
	topic := topicFor(t, cluster)
	cli := newClient(t, cluster)
	cli.KV = namespace.NewKV(cli.KV, "tenant-a/")
	cli.Watcher = namespace.NewWatcher(cli.Watcher, "tenant-a/")
	h := newHub(t, cli)
	s := subscribe(t, h, topic, pubsub.FromLatest())
	revs := publishN(t, h, topic, 3)
	for _, r := range revs {
		assert.Equal(t, r, nextMsg(t, s).Rev)
	}
	ctx := ctxT(t, 10*time.Second)
	resp, err := cluster.Admin().Get(ctx, "tenant-a/"+names.Prefix(topic, "pubsub"), clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)
	assert.Equal(t, int64(4), resp.Count, "head and three slots under the namespace")
	_, err = cluster.Admin().Delete(ctx, "tenant-a/"+topic, clientv3.WithPrefix())
	require.NoError(t, err)
}
