package pubsub_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/names"
	"github.com/concordkit/concord/pubsub"
	"github.com/concordkit/concord/testcluster"
)

var cluster *testcluster.Cluster

func TestMain(m *testing.M) { testcluster.Main(m, &cluster) }

func ctxT(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// topicFor returns a topic unique to the test and, when the test ends,
// checks that nothing was written outside the topic's pubsub prefix, deletes
// the topic's keys and checks that none is left.
func topicFor(t *testing.T, c *testcluster.Cluster) string {
	t.Helper()
	return topicNamed(t, c, "pubsub-test/"+t.Name())
}

func topicNamed(t *testing.T, c *testcluster.Cluster, topic string) string {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		admin := c.Admin()
		resp, err := admin.Get(ctx, topic, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		require.NoError(t, err)
		own := names.Prefix(topic, "pubsub")
		for _, kv := range resp.Kvs {
			if !strings.HasPrefix(string(kv.Key), own) {
				t.Errorf("key written outside %q: %q", own, kv.Key)
			}
		}
		_, err = admin.Delete(ctx, topic, clientv3.WithPrefix())
		require.NoError(t, err)
		resp, err = admin.Get(ctx, topic, clientv3.WithPrefix(), clientv3.WithCountOnly())
		require.NoError(t, err)
		assert.Zero(t, resp.Count, "keys left under %q", topic)
	})
	return topic
}

func newClient(t *testing.T, c *testcluster.Cluster, opts ...testcluster.ClientOption) *clientv3.Client {
	t.Helper()
	cli, err := c.NewClient(opts...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

func newHub(t *testing.T, cli *clientv3.Client, opts ...pubsub.HubOption) *pubsub.Hub {
	t.Helper()
	h := pubsub.NewHub(cli, opts...)
	t.Cleanup(func() { _ = h.Close() })
	return h
}

func subscribe(t *testing.T, h *pubsub.Hub, topic string, from pubsub.From, opts ...pubsub.SubscribeOption) *pubsub.Subscription {
	t.Helper()
	// The subscription lives as long as the test: its context must not have
	// a deadline of its own, since a subscription ends with its context.
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s, err := h.Subscribe(ctx, topic, from, opts...)
	require.NoError(t, err)
	t.Cleanup(s.Close)
	return s
}

// next returns the subscription's next event, failing the test if none comes
// within d.
func next(t *testing.T, s *pubsub.Subscription, d time.Duration) pubsub.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	ev, err := s.Next(ctx)
	require.NoError(t, err, "no event within %v", d)
	return ev
}

func nextMsg(t *testing.T, s *pubsub.Subscription) *pubsub.Message {
	t.Helper()
	ev := next(t, s, 10*time.Second)
	require.Nil(t, ev.Gap, "unexpected %v", ev.Gap)
	require.NotNil(t, ev.Message)
	return ev.Message
}

func nextGap(t *testing.T, s *pubsub.Subscription) *pubsub.Gap {
	t.Helper()
	ev := next(t, s, 10*time.Second)
	require.NotNil(t, ev.Gap, "expected a gap, got message %+v", ev.Message)
	return ev.Gap
}

// noEvent checks that nothing is pending right now.
func noEvent(t *testing.T, s *pubsub.Subscription) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ev, err := s.Next(ctx)
	require.ErrorIs(t, err, context.Canceled, "unexpected event %+v %+v", ev.Message, ev.Gap)
}

func publishN(t *testing.T, h *pubsub.Hub, topic string, n int, opts ...pubsub.PublishOption) []int64 {
	t.Helper()
	revs := make([]int64, n)
	for i := range n {
		rev, err := h.Publish(ctxT(t, 10*time.Second), topic, fmt.Appendf(nil, "m%d", i), opts...)
		require.NoError(t, err)
		revs[i] = rev
	}
	return revs
}

func TestBadInput(t *testing.T) {
	topic := topicFor(t, cluster)
	h := newHub(t, cluster.Client())
	ctx := ctxT(t, 10*time.Second)
	for _, bad := range []string{"", "a/.pubsub", "x/", "a//b", "bad\xff"} {
		_, err := h.Publish(ctx, bad, []byte("x"))
		require.Error(t, err, "%q", bad)
		assert.True(t, strings.HasPrefix(err.Error(), "pubsub: invalid name"), err.Error())
		_, err = h.Subscribe(ctx, bad, pubsub.FromLatest())
		require.Error(t, err, "%q", bad)
		assert.True(t, strings.HasPrefix(err.Error(), "pubsub: invalid name"), err.Error())
	}
	_, err := h.Publish(ctx, topic, make([]byte, 1536*1024))
	require.Error(t, err)
	assert.True(t, strings.HasPrefix(err.Error(), "pubsub: payload"), err.Error())
	for _, o := range []pubsub.PublishOption{pubsub.WithMaxCount(0), pubsub.WithMaxCount(-1), pubsub.WithMaxCount(pubsub.MaxRetainCount + 1), pubsub.WithMaxAge(-time.Second), pubsub.WithMaxAge(time.Microsecond)} {
		_, err := h.Publish(ctx, topic, []byte("x"), o)
		require.ErrorIs(t, err, pubsub.ErrRetention)
	}
	_, err = h.Subscribe(ctx, topic, pubsub.FromRevision(0))
	require.Error(t, err)
	_, err = h.Subscribe(ctx, topic, pubsub.FromLatest(), pubsub.WithBuffer(0))
	require.Error(t, err)
	resp, err := cluster.Admin().Get(ctx, topic, clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)
	assert.Zero(t, resp.Count, "bad input wrote keys")

	// Retention is fixed by the first publish; disagreeing later fails, on
	// this Hub and on another one.
	_, err = h.Publish(ctx, topic, []byte("x"), pubsub.WithMaxCount(10))
	require.NoError(t, err)
	_, err = h.Publish(ctx, topic, []byte("x"), pubsub.WithMaxCount(11))
	require.ErrorIs(t, err, pubsub.ErrRetention)
	_, err = newHub(t, cluster.Client()).Publish(ctx, topic, []byte("x"), pubsub.WithMaxAge(time.Hour))
	require.ErrorIs(t, err, pubsub.ErrRetention)
	_, err = newHub(t, cluster.Client()).Publish(ctx, topic, []byte("y"))
	require.NoError(t, err, "no options adopts the topic's retention")
}

func TestOrdering(t *testing.T) {
	topic := topicFor(t, cluster)
	const pubs, each = 3, 40
	subs := []*pubsub.Subscription{
		subscribe(t, newHub(t, newClient(t, cluster)), topic, pubsub.FromLatest()),
		subscribe(t, newHub(t, newClient(t, cluster, testcluster.To(2))), topic, pubsub.FromLatest()),
	}
	errs := make(chan error, pubs)
	for p := range pubs {
		h := newHub(t, newClient(t, cluster))
		go func() {
			for i := range each {
				if _, err := h.Publish(context.Background(), topic, fmt.Appendf(nil, "%d-%d", p, i)); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range pubs {
		require.NoError(t, <-errs)
	}
	for _, s := range subs {
		var last int64
		perPub := map[string]int{}
		for i := range pubs * each {
			m := nextMsg(t, s)
			assert.Greater(t, m.Rev, last)
			assert.Equal(t, uint64(i+1), m.Seq, "sequence numbers are dense")
			last = m.Rev
			var p, n int
			_, err := fmt.Sscanf(string(m.Payload), "%d-%d", &p, &n)
			require.NoError(t, err)
			key := fmt.Sprint(p)
			assert.Equal(t, perPub[key], n, "publisher %d's messages in order", p)
			perPub[key] = n + 1
		}
		noEvent(t, s)
	}
}

func TestResumeAfterRestart(t *testing.T) {
	topic := topicFor(t, cluster)
	pub := newHub(t, cluster.Client())

	// A "process" subscribes, reads five messages and goes away.
	cli := newClient(t, cluster)
	ctx, cancel := context.WithCancel(context.Background())
	s, err := pubsub.Subscribe(ctx, cli, topic, pubsub.FromLatest())
	require.NoError(t, err)
	revs := publishN(t, pub, topic, 5)
	var cursor int64
	for i := range 5 {
		m := nextMsg(t, s)
		require.Equal(t, revs[i], m.Rev)
		cursor = m.Rev + 1
	}
	cancel()
	_, err = s.Next(context.Background())
	require.ErrorIs(t, err, context.Canceled)
	require.NoError(t, cli.Close())

	more := publishN(t, pub, topic, 7)

	// The restarted process resumes from its cursor: exactly the rest, no gap.
	s2 := subscribe(t, newHub(t, newClient(t, cluster)), topic, pubsub.FromRevision(cursor))
	for i := range 7 {
		m := nextMsg(t, s2)
		assert.Equal(t, more[i], m.Rev)
		assert.Equal(t, fmt.Sprintf("m%d", i), string(m.Payload))
	}
	noEvent(t, s2)
	// And it goes on live.
	rev := publishN(t, pub, topic, 1)[0]
	assert.Equal(t, rev, nextMsg(t, s2).Rev)
}

func TestFromOldestAndFutureRevision(t *testing.T) {
	topic := topicFor(t, cluster)
	pub := newHub(t, cluster.Client())
	revs := publishN(t, pub, topic, 8, pubsub.WithMaxCount(5))
	sub := newHub(t, newClient(t, cluster))
	s := subscribe(t, sub, topic, pubsub.FromOldest())
	for i := 3; i < 8; i++ {
		m := nextMsg(t, s)
		assert.Equal(t, revs[i], m.Rev)
		assert.Equal(t, uint64(i+1), m.Seq)
	}
	noEvent(t, s)

	// A revision in the future: nothing until a message at or after it.
	future := subscribe(t, sub, topic, pubsub.FromRevision(revs[7]+3))
	more := publishN(t, pub, topic, 4)
	for _, r := range more {
		if r >= revs[7]+3 {
			assert.Equal(t, r, nextMsg(t, future).Rev)
		}
	}
	noEvent(t, future)
	for _, r := range more {
		assert.Equal(t, r, nextMsg(t, s).Rev)
	}
}

func TestGapAfterTrimming(t *testing.T) {
	topic := topicFor(t, cluster)
	pub := newHub(t, cluster.Client())
	revs := publishN(t, pub, topic, 20, pubsub.WithMaxCount(5))

	s := subscribe(t, newHub(t, newClient(t, cluster)), topic, pubsub.FromRevision(revs[0]))
	g := nextGap(t, s)
	assert.Equal(t, pubsub.Gap{From: revs[0], To: revs[15] - 1, Lost: 15, Reason: pubsub.GapTrimmed}, *g)
	for i := 15; i < 20; i++ {
		assert.Equal(t, revs[i], nextMsg(t, s).Rev)
	}
	noEvent(t, s)

	// Resuming just after a retained message reports no gap.
	s2 := subscribe(t, newHub(t, newClient(t, cluster)), topic, pubsub.FromRevision(revs[17]+1))
	assert.Equal(t, revs[18], nextMsg(t, s2).Rev)
	assert.Equal(t, revs[19], nextMsg(t, s2).Rev)
	noEvent(t, s2)
}

func TestGapAfterAgeTrim(t *testing.T) {
	topic := topicFor(t, cluster)
	pub := newHub(t, cluster.Client())
	slots := names.Prefix(topic, "pubsub") + "s/"
	wctx := ctxT(t, 20*time.Second)
	deletes := cluster.Admin().Watch(wctx, slots, clientv3.WithPrefix())
	revs := publishN(t, pub, topic, 3, pubsub.WithMaxAge(40*time.Millisecond))

	// Wait for the trimmer to delete all three.
	deleted := 0
	for deleted < 3 {
		select {
		case resp := <-deletes:
			for _, ev := range resp.Events {
				if ev.Type == clientv3.EventTypeDelete {
					deleted++
				}
			}
		case <-wctx.Done():
			t.Fatalf("only %d of 3 messages trimmed by age", deleted)
		}
	}
	s := subscribe(t, newHub(t, newClient(t, cluster)), topic, pubsub.FromRevision(revs[0]))
	g := nextGap(t, s)
	assert.Equal(t, pubsub.Gap{From: revs[0], To: revs[2], Lost: 3, Reason: pubsub.GapTrimmed}, *g)
	noEvent(t, s)
}

func TestSlowSubscriberDoesNotStallOthers(t *testing.T) {
	topic := topicFor(t, cluster)
	h := newHub(t, newClient(t, cluster))
	slow := subscribe(t, h, topic, pubsub.FromLatest(), pubsub.WithBuffer(4))
	fast := subscribe(t, h, topic, pubsub.FromLatest(), pubsub.WithBuffer(4))
	pub := newHub(t, cluster.Client())

	// The fast reader reads each message before the next is published; the
	// slow one reads nothing meanwhile.
	var revs []int64
	for i := range 30 {
		rev, err := pub.Publish(ctxT(t, 5*time.Second), topic, fmt.Appendf(nil, "%d", i))
		require.NoError(t, err)
		revs = append(revs, rev)
		assert.Equal(t, rev, nextMsg(t, fast).Rev)
	}
	for i := range 4 {
		assert.Equal(t, revs[i], nextMsg(t, slow).Rev)
	}
	g := nextGap(t, slow)
	assert.Equal(t, pubsub.Gap{From: revs[4], To: revs[29], Lost: 26, Reason: pubsub.GapOverflow}, *g)
	noEvent(t, slow)
	rev := publishN(t, pub, topic, 1)[0]
	assert.Equal(t, rev, nextMsg(t, slow).Rev)
	assert.Equal(t, rev, nextMsg(t, fast).Rev)
}

func TestOneWatchPerTopic(t *testing.T) {
	a, b := topicNamed(t, cluster, "pubsub-test/"+t.Name()+"-a"), topicNamed(t, cluster, "pubsub-test/"+t.Name()+"-b")
	h := newHub(t, newClient(t, cluster))
	var subs []*pubsub.Subscription
	for range 10 {
		subs = append(subs, subscribe(t, h, a, pubsub.FromLatest()))
	}
	for range 5 {
		subs = append(subs, subscribe(t, h, b, pubsub.FromLatest()))
	}
	st := h.Stats()
	assert.Equal(t, pubsub.Stats{Topics: 2, Subscriptions: 15, WatchesOpened: 2}, st)

	rev := publishN(t, newHub(t, cluster.Client()), a, 1)[0]
	for _, s := range subs[:10] {
		assert.Equal(t, rev, nextMsg(t, s).Rev)
	}
	for _, s := range subs[10:] {
		noEvent(t, s)
	}
	for _, s := range subs {
		s.Close()
	}
	assert.Equal(t, pubsub.Stats{WatchesOpened: 2}, h.Stats(), "watches stop with their last subscription")
}

func TestSubscriptionEnds(t *testing.T) {
	topic := topicFor(t, cluster)
	h := newHub(t, newClient(t, cluster))
	ctx, cancel := context.WithCancelCause(context.Background())
	s, err := h.Subscribe(ctx, topic, pubsub.FromLatest())
	require.NoError(t, err)
	s2 := subscribe(t, h, topic, pubsub.FromLatest())
	why := fmt.Errorf("shutting down")
	cancel(why)
	_, err = s.Next(context.Background())
	require.ErrorIs(t, err, why)

	require.NoError(t, h.Close())
	_, err = s2.Next(context.Background())
	require.ErrorIs(t, err, pubsub.ErrHubClosed)
	_, err = h.Subscribe(ctxT(t, time.Second), topic, pubsub.FromLatest())
	require.ErrorIs(t, err, pubsub.ErrHubClosed)
	_, err = h.Publish(ctxT(t, time.Second), topic, nil)
	require.ErrorIs(t, err, pubsub.ErrHubClosed)
	assert.Equal(t, 0, h.Stats().Topics)
}

func TestCorruptValues(t *testing.T) {
	topic := topicFor(t, cluster)
	pub := newHub(t, cluster.Client())
	s := subscribe(t, newHub(t, newClient(t, cluster)), topic, pubsub.FromLatest())
	revs := publishN(t, pub, topic, 2, pubsub.WithMaxCount(4))
	prefix := names.Prefix(topic, "pubsub")
	ctx := ctxT(t, 10*time.Second)
	bad, err := cluster.Admin().Put(ctx, prefix+"s/3", "garbage")
	require.NoError(t, err)
	assert.Equal(t, revs[0], nextMsg(t, s).Rev)
	assert.Equal(t, revs[1], nextMsg(t, s).Rev)
	g := nextGap(t, s)
	assert.Equal(t, pubsub.Gap{From: bad.Header.Revision, To: bad.Header.Revision, Reason: pubsub.GapCorrupt}, *g)

	old := subscribe(t, newHub(t, newClient(t, cluster)), topic, pubsub.FromOldest())
	assert.Equal(t, revs[0], nextMsg(t, old).Rev)
	assert.Equal(t, revs[1], nextMsg(t, old).Rev)
	assert.Equal(t, *g, *nextGap(t, old))

	// A corrupt head fails publishing with ErrCorrupt, never a panic.
	_, err = cluster.Admin().Put(ctx, prefix+"head", "\x02\xff")
	require.NoError(t, err)
	_, err = newHub(t, cluster.Client()).Publish(ctx, topic, []byte("x"))
	require.ErrorIs(t, err, pubsub.ErrCorrupt)
	_, err = newHub(t, newClient(t, cluster)).Subscribe(ctx, topic, pubsub.FromOldest())
	require.ErrorIs(t, err, pubsub.ErrCorrupt)
}

func TestClientCloseEndsSharedHub(t *testing.T) {
	topic := topicFor(t, cluster)
	cli := newClient(t, cluster)
	s, err := pubsub.Subscribe(ctxT(t, 10*time.Second), cli, topic, pubsub.FromLatest())
	require.NoError(t, err)
	assert.Same(t, pubsub.For(cli), pubsub.For(cli))
	require.NoError(t, cli.Close())
	ctx := ctxT(t, 10*time.Second)
	_, err = s.Next(ctx)
	require.ErrorIs(t, err, pubsub.ErrHubClosed)
}

func TestConcurrentSubscribeAndClose(t *testing.T) {
	topic := topicFor(t, cluster)
	h := newHub(t, newClient(t, cluster))
	pub := newHub(t, cluster.Client())
	done := make(chan struct{})
	pubErr := make(chan error, 1)
	go func() {
		defer close(pubErr)
		for {
			select {
			case <-done:
				return
			default:
			}
			if _, err := pub.Publish(context.Background(), topic, []byte("x")); err != nil {
				pubErr <- err
				return
			}
		}
	}()
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			for i := range 10 {
				ctx, cancel := context.WithCancel(context.Background())
				s, err := h.Subscribe(ctx, topic, pubsub.FromLatest(), pubsub.WithBuffer(2))
				if err != nil {
					cancel()
					errs <- err
					return
				}
				if i%2 == 0 {
					cancel() // ends by context
					s.Close()
				} else {
					s.Close()
					cancel()
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		require.NoError(t, <-errs)
	}
	close(done)
	require.NoError(t, <-pubErr)
	assert.Equal(t, 0, h.Stats().Topics, "every watch stopped with its last subscription")
}

// A nil client is reported as an error, not a panic.
func TestNilClient(t *testing.T) {
	ctx := ctxT(t, 5*time.Second)
	_, err := pubsub.Publish(ctx, nil, "t", []byte("x"))
	require.ErrorContains(t, err, "pubsub: nil client")
	_, err = pubsub.NewHub(nil).Publish(ctx, "t", []byte("x"))
	require.ErrorContains(t, err, "pubsub: nil client")
	_, err = pubsub.Subscribe(ctx, nil, "t", pubsub.FromLatest())
	require.ErrorContains(t, err, "pubsub: nil client")
}
