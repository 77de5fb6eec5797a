package prefixwatch_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/prefixwatch"
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
func next(t *testing.T, w *prefixwatch.Watch, d time.Duration) clientv3.WatchResponse {
	t.Helper()
	select {
	case r, ok := <-w.Ch:
		require.True(t, ok, "watch closed")
		return r
	case <-time.After(d):
		t.Fatalf("no watch response within %v", d)
		return clientv3.WatchResponse{}
	}
}

// A pool hands a watch given back to the next caller for the same key, and
// a new watch for another key; when full it closes the watch idle longest.
func TestPoolReuseByKey(t *testing.T) {
	ctx := ctxT(t, 20*time.Second)
	cli := cluster.Client()
	p := prefixwatch.NewPool(cli, "", clientv3.WithFilterPut())
	a := p.GetKey(ctx, "/test/prefixwatch/a")
	require.True(t, next(t, a, 5*time.Second).Created)
	a.Created = true
	p.Put(a)
	require.Equal(t, 1, p.Idle())
	require.Same(t, a, p.GetKey(ctx, "/test/prefixwatch/a"), "the idle watch on the key is reused")
	require.Equal(t, 0, p.Idle())
	b := p.GetKey(ctx, "/test/prefixwatch/b")
	require.NotSame(t, a, b, "another key gets its own watch")
	b.Stop()

	// A watch not known good is stopped, not kept.
	p.Put(b)
	require.Equal(t, 0, p.Idle())
	require.NotSame(t, b, p.GetKey(ctx, "/test/prefixwatch/b"))

	// Fill the pool past its bound: the first watch given back is closed.
	ws := []*prefixwatch.Watch{a}
	for _, k := range []string{"c", "d", "e", "f"} {
		w := p.GetKey(ctx, "/test/prefixwatch/"+k)
		require.True(t, next(t, w, 5*time.Second).Created)
		ws = append(ws, w)
	}
	for _, w := range ws {
		w.Created = true
		p.Put(w)
	}
	deadline := time.After(5 * time.Second)
	for closed := false; !closed; {
		select {
		case r, ok := <-a.Ch:
			closed = !ok || r.Canceled || r.Err() != nil // closed by the pool
		case <-deadline:
			t.Fatal("the pool did not close the watch idle longest")
		}
	}
	require.NotSame(t, a, p.GetKey(ctx, "/test/prefixwatch/a"), "the evicted watch is not handed out")
}

// A progress request on a stream of its own is answered on each of its
// watches after the events up to the answer's revision.
func TestStreamProgress(t *testing.T) {
	ctx := ctxT(t, 10*time.Second)
	cli := cluster.Client()
	st := prefixwatch.NewStream("test-progress")
	key := "/test/prefixwatch/progress"
	w := prefixwatch.StartOn(ctx, st, cli, key)
	t.Cleanup(w.Stop)
	require.True(t, next(t, w, 5*time.Second).Created)

	resp, err := cli.Put(ctx, key, "v")
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = cli.Delete(context.Background(), key) })
	// The member serving the watch may not have applied the put yet: ask
	// until an answer covers it, which must come after the put's event.
	sawPut := false
	for {
		require.NoError(t, cli.RequestProgress(st.Context()))
		r := next(t, w, 5*time.Second)
		for !r.IsProgressNotify() {
			require.Len(t, r.Events, 1)
			require.Equal(t, resp.Header.Revision, r.Events[0].Kv.ModRevision)
			sawPut = true
			r = next(t, w, 5*time.Second)
		}
		if r.Header.Revision >= resp.Header.Revision {
			require.True(t, sawPut, "a progress answer at or past the put came before its event")
			return
		}
	}
}

// Starting a watch on a client cut off from etcd returns once ctx ends, with
// Ch closed, instead of waiting for etcd to confirm the watch; the next
// start after the client is restored works.
func TestStartBoundedByContext(t *testing.T) {
	ctx := ctxT(t, 20*time.Second)
	cli, err := cluster.NewClient()
	require.NoError(t, err)
	st := prefixwatch.NewStream("test-cut")
	first := prefixwatch.StartOn(ctx, st, cli, "/test/prefixwatch/cut/first")
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
	started := make(chan *prefixwatch.Watch, 1)
	go func() { started <- prefixwatch.StartOn(sctx, st, cli, "/test/prefixwatch/cut/second") }()
	var w *prefixwatch.Watch
	select {
	case w = <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("Start did not return when its context ended")
	}
	select {
	case r, ok := <-w.Ch:
		require.False(t, ok, "a watch canceled before creation delivers nothing: %+v", r)
	case <-time.After(5 * time.Second):
		t.Fatal("the watch canceled at start did not close")
	}

	cluster.RestoreClient(cli)
	restored = true
	w.Restart(ctx)
	t.Cleanup(w.Stop)
	require.True(t, next(t, w, 10*time.Second).Created)
}
