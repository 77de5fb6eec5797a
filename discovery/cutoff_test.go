package discovery_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/discovery"
	"github.com/concordkit/concord/leasekeeper"
)

// cuttableKeeper returns a client of the test's own, which the test may cut
// off from etcd (cluster.CutClient), and a keeper with a 5 s TTL on it. When
// the test ends the client is restored, then the keeper and the client are
// closed.
func cuttableKeeper(t *testing.T) (*clientv3.Client, *leasekeeper.Keeper) {
	t.Helper()
	cli, err := cluster.NewClient()
	require.NoError(t, err)
	t.Cleanup(func() { _ = cli.Close() })
	k, err := leasekeeper.New(ctxT(t, 10*time.Second), cli, leasekeeper.WithTTL(5*time.Second))
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = k.Close(ctx)
	})
	t.Cleanup(func() { cluster.RestoreClient(cli) })
	return cli, k
}

// revokeAtEnd revokes lease id through the cluster's own client when the
// test ends, so that a record left on a lease the keeper gave up goes now
// rather than when etcd expires it.
func revokeAtEnd(t *testing.T, id clientv3.LeaseID) {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		assert.NoError(t, cluster.RevokeLease(ctx, id))
	})
}

// cutOffRegistration registers an instance on a keeper of its own and cuts
// that keeper's client off from etcd until the test ends. It returns the
// registration, its keeper and the lease it stands on, which is revoked at
// the end.
func cutOffRegistration(t *testing.T) (*discovery.Registration, *leasekeeper.Keeper, *leasekeeper.Lease) {
	t.Helper()
	cli, k := cuttableKeeper(t)
	r, err := discovery.Register(ctxT(t, 10*time.Second), k, serviceFor(t), "a", "127.0.0.1:1", nil)
	require.NoError(t, err)
	l := k.Current()
	revokeAtEnd(t, l.ID())
	cluster.CutClient(cli)
	t.Cleanup(func() { cluster.RestoreClient(cli) })
	return r, k, l
}

// An Update that etcd never answers (the client is cut off) holds the
// record's write lock for as long as its context allows, here forever. Update
// and Deregister with deadlines of their own must still return when their
// deadlines pass instead of queueing behind it.
func TestUpdateAndDeregisterEndWithCtxWhileAWriteIsStuck(t *testing.T) {
	svc := serviceFor(t)
	ctx := ctxT(t, 30*time.Second)
	cli, k := cuttableKeeper(t)
	r, err := discovery.Register(ctx, k, svc, "a", "127.0.0.1:1", map[string]string{"v": "1"})
	require.NoError(t, err)

	cluster.CutClient(cli)
	defer cluster.RestoreClient(cli)
	stuck := make(chan error, 1)
	go func() { stuck <- r.Update(context.Background(), map[string]string{"v": "2"}) }()
	require.Eventually(t, func() bool { return discovery.WriteInProgress(r) }, 5*time.Second, time.Millisecond,
		"the background Update never took the write lock")

	uctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	update := make(chan error, 1)
	go func() { update <- r.Update(uctx, map[string]string{"v": "3"}) }()
	dctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	deregister := make(chan error, 1)
	go func() { deregister <- r.Deregister(dctx) }()

	var updateErr, deregisterErr error
	deadline := time.After(3 * time.Second)
	for update != nil || deregister != nil {
		select {
		case updateErr = <-update:
			update = nil
		case deregisterErr = <-deregister:
			deregister = nil
		case <-deadline:
			t.Fatalf("3 s after their 500 ms deadlines started: Update returned: %t, Deregister returned: %t",
				update == nil, deregister == nil)
		}
	}
	assert.ErrorIs(t, updateErr, context.DeadlineExceeded)
	assert.ErrorContains(t, updateErr, "discovery: update ")
	assert.ErrorIs(t, deregisterErr, context.DeadlineExceeded)
	assert.ErrorContains(t, deregisterErr, "discovery: delete ")

	// Back in touch, the stuck Update completes, and a Deregister that gave
	// up is done by the next call.
	cluster.RestoreClient(cli)
	select {
	case <-stuck:
	case <-time.After(10 * time.Second):
		t.Fatal("the stuck Update did not return after the client was restored")
	}
	require.NoError(t, r.Deregister(ctx))
	res, err := discovery.Resolve(ctx, cluster.Client(), svc)
	require.NoError(t, err)
	assert.Empty(t, res)
}

// Once the keeper has given its lease up, the record goes with the lease:
// Deregister on a client cut off from etcd has nothing to wait for.
func TestDeregisterAfterLeaseLostReturnsAtOnce(t *testing.T) {
	r, _, l := cutOffRegistration(t)
	select {
	case <-l.Done(): // its safe deadline passed without a renewal
	case <-time.After(10 * time.Second):
		t.Fatal("the keeper never gave up the lease of a cut-off client")
	}

	dctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Deregister(dctx) }()
	select {
	case err := <-done:
		require.NoError(t, err)
		// At once: before its own deadline, let alone the TTL.
		assert.NoError(t, dctx.Err(), "Deregister returned only after its deadline")
	case <-time.After(3 * time.Second):
		t.Fatal("Deregister of a record whose lease is lost still waiting after 3 s")
	}
	assert.NoError(t, r.Deregister(dctx), "not idempotent")
}

// While the lease is live, a Deregister on a cut-off client outlives its ctx
// to retry the delete, but stops as soon as the lease is lost rather than
// after the whole TTL.
func TestDeregisterStopsWhenLeaseLost(t *testing.T) {
	r, k, l := cutOffRegistration(t)
	dctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Deregister(dctx) }()
	<-dctx.Done()
	select {
	case err := <-done:
		t.Fatalf("Deregister returned %v with the lease live and etcd unreachable", err)
	default:
	}

	// The lease is lost the way a renewal answered "lease not found" loses
	// it: at once, well before the TTL.
	k.Invalidate(l, errors.New("test: lease gone"))
	require.Error(t, l.Err())
	select {
	case err := <-done:
		assert.NoError(t, err)
	case <-time.After(1 * time.Second):
		t.Fatal("Deregister still waiting 1 s after the lease was lost")
	}
}

// A Deregister whose ctx has already ended still deletes the record when no
// write is in its way: shutting down with a canceled context is the common
// case. Repeated, since a lock taken by select among ready cases would fail
// it at random.
func TestDeregisterWithEndedCtxDeletes(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	svc := serviceFor(t)
	k := newKeeper(t, cluster.Client())
	ended, cancel := context.WithCancel(ctx)
	cancel()
	for i := range 20 {
		r, err := discovery.Register(ctx, k, svc, "a", "127.0.0.1:1", nil)
		require.NoError(t, err, "register %d", i)
		require.NoError(t, r.Deregister(ended), "deregister %d", i)
		res, err := discovery.Resolve(ctx, cluster.Client(), svc)
		require.NoError(t, err)
		require.Empty(t, res, "deregister %d left the record", i)
	}
}
