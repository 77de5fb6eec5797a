package watch_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/retry"
	"github.com/concordkit/concord/internal/watch"
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

// next returns the watch's next response, failing the test after d.
func next(t *testing.T, w *watch.Watch, d time.Duration) clientv3.WatchResponse {
	t.Helper()
	select {
	case r, ok := <-w.C:
		require.True(t, ok, "watch ended: %v", w.Err())
		return r
	case <-time.After(d):
		t.Fatalf("no watch response within %v", d)
		return clientv3.WatchResponse{}
	}
}

// events returns the next n events, skipping creations and progress
// notifications.
func events(t *testing.T, w *watch.Watch, n int, d time.Duration) []*clientv3.Event {
	t.Helper()
	deadline := time.Now().Add(d)
	var evs []*clientv3.Event
	for len(evs) < n {
		evs = append(evs, next(t, w, time.Until(deadline)).Events...)
	}
	require.Len(t, evs, n)
	return evs
}

func nextEvent(t *testing.T, w *watch.Watch, d time.Duration) *clientv3.Event {
	t.Helper()
	return events(t, w, 1, d)[0]
}

func put(t *testing.T, ctx context.Context, cli *clientv3.Client, key, val string) int64 {
	t.Helper()
	var rev int64
	require.Eventually(t, func() bool {
		resp, err := cli.Put(ctx, key, val)
		if err != nil {
			require.True(t, retry.Retriable(err), "put: %v", err)
			return false
		}
		rev = resp.Header.Revision
		return true
	}, 20*time.Second, 10*time.Millisecond)
	t.Cleanup(func() { _, _ = cluster.Admin().Delete(context.Background(), key) })
	return rev
}

// A synced watch announces its creation with the revision it began at.
func TestSyncedCreation(t *testing.T) {
	ctx := ctxT(t, 10*time.Second)
	cli := cluster.Client()
	key := "/test/watch/" + t.Name()
	before := put(t, ctx, cli, key, "0")
	w := watch.Open(ctx, cli, key, watch.Config{})
	defer w.Stop()
	r := next(t, w, 5*time.Second)
	require.True(t, r.Created)
	// A member that lags may create the watch below the put's revision;
	// it then delivers the put as an event, which a user that read at
	// before skips.
	if r.Header.Revision < before {
		require.Equal(t, before, nextEvent(t, w, 5*time.Second).Kv.ModRevision)
	}
	assert.Equal(t, max(r.Header.Revision, before), w.Rev())
	rev := put(t, ctx, cli, key, "1")
	ev := nextEvent(t, w, 5*time.Second)
	assert.Equal(t, rev, ev.Kv.ModRevision)
	assert.Equal(t, rev, w.Rev())
	w.Stop()
	_, ok := <-w.C
	assert.False(t, ok, "C is closed after Stop")
	assert.NoError(t, w.Err())
}

// A watch served by a member that loses its leader is opened again: a synced
// one announces the new creation, one from a revision resumes with no event
// lost or repeated.
func TestSurvivesLeaderLoss(t *testing.T) {
	c := testcluster.New(t)
	ctx := ctxT(t, 60*time.Second)
	lead, err := c.WaitLeader(ctx)
	require.NoError(t, err)
	iso := (lead + 1) % c.Size()
	cli, err := c.NewClient(testcluster.To(iso))
	require.NoError(t, err)
	admin := c.Admin()
	key := "/test/watch/" + t.Name()
	from := put(t, ctx, admin, key, "0")

	synced := watch.Open(ctx, cli, key, watch.Config{})
	defer synced.Stop()
	require.True(t, next(t, synced, 5*time.Second).Created)
	resumed := watch.Open(ctx, cli, key, watch.Config{From: from})
	defer resumed.Stop()
	require.Equal(t, from, nextEvent(t, resumed, 5*time.Second).Kv.ModRevision)

	// Cut off from its peers, the member loses its leader and ends the
	// watches (they require one); the majority goes on writing.
	c.Partition(iso)
	var revs []int64
	for i := range 3 {
		revs = append(revs, put(t, ctx, admin, key, fmt.Sprint(i+1)))
	}
	require.Eventually(t, func() bool { return synced.Restarts() > 0 && resumed.Restarts() > 0 },
		30*time.Second, 10*time.Millisecond, "the watches were not opened again")
	c.Heal()
	revs = append(revs, put(t, ctx, admin, key, "4"))

	for i, ev := range events(t, resumed, len(revs), 20*time.Second) {
		assert.Equal(t, revs[i], ev.Kv.ModRevision, "resumed in order, each event once")
	}
	// The synced watch tells its user where it began again; events from
	// there on follow.
	for {
		r := next(t, synced, 20*time.Second)
		if r.Created {
			require.Greater(t, r.Header.Revision, from)
			break
		}
	}
	rev := put(t, ctx, admin, key, "5")
	require.Equal(t, rev, nextEvent(t, synced, 20*time.Second).Kv.ModRevision)
}

// A watch whose resume point was compacted away ends, saying where history
// starts now; so does one etcd refuses for permission.
func TestEndsForGood(t *testing.T) {
	ctx := ctxT(t, 20*time.Second)
	cli := cluster.Client()
	key := "/test/watch/" + t.Name()
	first := put(t, ctx, cli, key, "0")
	put(t, ctx, cli, key, "1")
	compacted, err := cluster.Compact(ctx)
	require.NoError(t, err)
	w := watch.Open(ctx, cli, key, watch.Config{From: first})
	defer w.Stop()
	select {
	case _, ok := <-w.C:
		require.False(t, ok, "a compacted start delivers nothing")
	case <-time.After(10 * time.Second):
		t.Fatal("the compacted watch did not end")
	}
	require.ErrorIs(t, w.Err(), rpctypes.ErrCompacted)
	assert.Equal(t, compacted, w.CompactRevision())
	_, err = w.Next(ctx)
	require.ErrorIs(t, err, rpctypes.ErrCompacted)
}

func TestPermissionDeniedEnds(t *testing.T) {
	c := testcluster.New(t, testcluster.WithSize(1), testcluster.WithAuth())
	ctx := ctxT(t, 20*time.Second)
	u, err := c.AddUser(ctx, "alice", "a/")
	require.NoError(t, err)
	cli, err := c.NewClient(testcluster.AsUser(u))
	require.NoError(t, err)
	w := watch.Open(ctx, cli, "b/x", watch.Config{})
	defer w.Stop()
	_, err = w.Next(ctx)
	require.Error(t, err)
	require.True(t, retry.PermissionDenied(err), "%v", err)
	assert.Zero(t, w.Restarts(), "a refusal on its merits is not retried")
}

// The auth race, made deterministic: clientv3 authenticates for every new
// watch stream and sends the stream to the next member in turn. When that
// member has not applied the new token (here it is cut off from its peers,
// so it never does until Heal) it refuses the stream with "invalid auth
// token". clientv3 ends such a watch; a Watch opens it again until the
// member knows the token.
func TestSurvivesAuthRace(t *testing.T) {
	// etcd's default election timeout: the cut-off member keeps believing
	// in its leader, so it refuses the stream for its token rather than for
	// having no leader.
	c := testcluster.New(t, testcluster.WithAuth(), testcluster.WithTiming(100, 1000))
	ctx := ctxT(t, 60*time.Second)
	lead, err := c.WaitLeader(ctx)
	require.NoError(t, err)
	a, b := lead, (lead+1)%c.Size()
	bID := memberID(t, ctx, c, b)
	cli, err := c.NewClient(testcluster.To(a, b))
	require.NoError(t, err)
	key := "/test/watch/" + t.Name()

	// clientv3 balances round robin: line requests up so that the next
	// stream's authentication goes to a and the stream itself to b.
	for {
		resp, err := cli.Get(ctx, key, clientv3.WithSerializable())
		require.NoError(t, err)
		if resp.Header.MemberId == bID {
			break
		}
	}
	c.Partition(b)
	w := watch.Open(ctx, cli, key, watch.Config{})
	defer w.Stop()
	for w.Restarts() == 0 {
		select {
		case <-w.Done():
			t.Fatalf("the watch ended: %v", w.Err())
		case <-ctx.Done():
			t.Fatal("the stream was never refused")
		case <-time.After(time.Millisecond):
		}
	}
	c.Heal()
	// A synced watch sees what happens after its creation.
	for {
		r, err := w.Next(ctx)
		require.NoError(t, err, "the watch ended")
		if r.Created {
			break
		}
	}
	rev := put(t, ctx, c.Admin(), key, "after heal")
	r, err := w.Next(ctx)
	require.NoError(t, err, "the watch ended")
	require.Len(t, r.Events, 1)
	require.Equal(t, rev, r.Events[0].Kv.ModRevision)
}

func memberID(t *testing.T, ctx context.Context, c *testcluster.Cluster, i int) uint64 {
	t.Helper()
	resp, err := c.ClientTo(i).Get(ctx, "x", clientv3.WithSerializable())
	require.NoError(t, err)
	return resp.Header.MemberId
}

// A progress request on a stream of its own is answered on each of its
// watches after the events up to the answer's revision.
func TestStreamProgress(t *testing.T) {
	ctx := ctxT(t, 10*time.Second)
	cli := cluster.Client()
	st := watch.NewStream("test-progress")
	key := "/test/watch/progress"
	w := watch.Open(ctx, cli, key, watch.Config{Stream: st, Progress: true})
	t.Cleanup(w.Stop)
	require.True(t, next(t, w, 5*time.Second).Created)

	rev := put(t, ctx, cli, key, "v")
	// The member serving the watch may not have applied the put yet: ask
	// until an answer covers it, which must come after the put's event.
	sawPut := false
	for {
		require.NoError(t, w.RequestProgress(ctx))
		r := next(t, w, 5*time.Second)
		for !r.IsProgressNotify() {
			require.Len(t, r.Events, 1)
			require.Equal(t, rev, r.Events[0].Kv.ModRevision)
			sawPut = true
			r = next(t, w, 5*time.Second)
		}
		if r.Header.Revision >= rev {
			require.True(t, sawPut, "a progress answer at or past the put came before its event")
			return
		}
	}
}

// Open on a client cut off from etcd returns once ctx ends instead of
// waiting for etcd to confirm the watch; the watch goes on trying and is
// created once the client is restored.
func TestOpenBoundedByContext(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	cli, err := cluster.NewClient()
	require.NoError(t, err)
	st := watch.NewStream("test-cut")
	first := watch.Open(ctx, cli, "/test/watch/cut/first", watch.Config{Stream: st})
	t.Cleanup(first.Stop)
	require.True(t, next(t, first, 5*time.Second).Created)

	cluster.CutClient(cli)
	restored := false
	defer func() {
		if !restored {
			cluster.RestoreClient(cli)
		}
	}()
	sctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	opened := make(chan *watch.Watch, 1)
	go func() { opened <- watch.Open(sctx, cli, "/test/watch/cut/second", watch.Config{Stream: st}) }()
	var w *watch.Watch
	select {
	case w = <-opened:
	case <-time.After(5 * time.Second):
		t.Fatal("Open did not return when its context ended")
	}
	t.Cleanup(w.Stop)
	cluster.RestoreClient(cli)
	restored = true
	require.True(t, next(t, w, 20*time.Second).Created)
}

// A pool hands a watch given back to the next caller for the same key, and
// a new watch for another key; when full it stops the watch idle longest.
func TestPoolReuseByKey(t *testing.T) {
	ctx := ctxT(t, 20*time.Second)
	cli := cluster.Client()
	p := watch.NewPool(cli, "", watch.Config{Options: []clientv3.OpOption{clientv3.WithFilterPut()}})
	a := p.GetKey(ctx, "/test/watch/pool/a")
	require.True(t, next(t, a, 5*time.Second).Created)
	p.Put(a)
	require.Equal(t, 1, p.Idle())
	require.Same(t, a, p.GetKey(ctx, "/test/watch/pool/a"), "the idle watch on the key is reused")
	require.Equal(t, 0, p.Idle())
	b := p.GetKey(ctx, "/test/watch/pool/b")
	require.NotSame(t, a, b, "another key gets its own watch")
	b.Stop()

	// A watch that ended is dropped, not kept.
	p.Put(b)
	require.Equal(t, 0, p.Idle())
	b2 := p.GetKey(ctx, "/test/watch/pool/b")
	require.NotSame(t, b, b2)
	b2.Stop()

	// Fill the pool past its bound: the first watch given back is stopped.
	ws := []*watch.Watch{a}
	for _, k := range []string{"c", "d", "e", "f"} {
		w := p.GetKey(ctx, "/test/watch/pool/"+k)
		require.True(t, next(t, w, 5*time.Second).Created)
		ws = append(ws, w)
	}
	for _, w := range ws {
		p.Put(w)
	}
	select {
	case <-a.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the pool did not stop the watch idle longest")
	}
	a2 := p.GetKey(ctx, "/test/watch/pool/a")
	defer a2.Stop()
	require.NotSame(t, a, a2, "the evicted watch is not handed out")
}

// An exact watch starts synced, then resumes from where it was after a
// failure: no creation is announced again, no event is missed.
func TestExactResumes(t *testing.T) {
	c := testcluster.New(t)
	ctx := ctxT(t, 60*time.Second)
	lead, err := c.WaitLeader(ctx)
	require.NoError(t, err)
	iso := (lead + 1) % c.Size()
	cli, err := c.NewClient(testcluster.To(iso))
	require.NoError(t, err)
	admin := c.Admin()
	key := "/test/watch/" + t.Name()
	w := watch.Open(ctx, cli, key, watch.Config{Exact: true})
	defer w.Stop()
	created := next(t, w, 5*time.Second)
	require.True(t, created.Created)

	c.Partition(iso)
	var revs []int64
	for i := range 3 {
		revs = append(revs, put(t, ctx, admin, key, fmt.Sprint(i)))
	}
	require.Eventually(t, func() bool { return w.Restarts() > 0 }, 30*time.Second, 10*time.Millisecond)
	c.Heal()
	for i, ev := range events(t, w, len(revs), 20*time.Second) {
		assert.Equal(t, revs[i], ev.Kv.ModRevision, "resumed in order, each event once")
	}
}

// A watch served by a member whose process hangs moves to another member:
// its probe goes unanswered, and it is opened again on a stream of its own.
// Process mode only (Pause).
func TestLeavesHungMember(t *testing.T) {
	c := testcluster.New(t)
	if c.Binary() == "" {
		t.Skip("Pause needs process mode (CONCORD_ETCD)")
	}
	ctx := ctxT(t, 60*time.Second)
	lead, err := c.WaitLeader(ctx)
	require.NoError(t, err)
	// The client reaches the member that will hang first, then the others.
	var order []int
	for i := range c.Size() {
		order = append(order, (lead+i)%c.Size())
	}
	cli, err := c.NewClient(testcluster.To(order...))
	require.NoError(t, err)
	key := "/test/watch/" + t.Name()
	// Watches until one is served by the member about to hang.
	leadID := memberID(t, ctx, c, lead)
	var w *watch.Watch
	for range 10 {
		cand := watch.Open(ctx, cli, key, watch.Config{Stream: watch.NewStream(t.Name() + fmt.Sprint(len(order)))})
		r := next(t, cand, 5*time.Second)
		require.True(t, r.Created)
		if r.Header.MemberId == leadID {
			w = cand
			break
		}
		cand.Stop()
		order = append(order, 0) // a new stream name next time
	}
	require.NotNil(t, w, "no watch landed on the leader")
	defer w.Stop()

	require.NoError(t, c.Pause(lead))
	defer func() { _ = c.Resume(lead) }()
	// The others elect a new leader; the watch must follow them.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("restarts %d, of which after a hang %d", w.Restarts(), w.Hangs())
		}
	})
	created := next(t, w, 30*time.Second)
	require.True(t, created.Created, "the watch was not opened again")
	require.NotEqual(t, leadID, created.Header.MemberId)
	require.Positive(t, w.Hangs())
	// Written through the members that run (a request to the hung one
	// would wait for it).
	others, err := c.NewClient(testcluster.To(order[1:c.Size()]...))
	require.NoError(t, err)
	rev := put(t, ctx, others, key, "after the hang")
	require.Equal(t, rev, nextEvent(t, w, 20*time.Second).Kv.ModRevision)
}
