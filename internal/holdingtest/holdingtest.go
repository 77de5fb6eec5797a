// Package holdingtest is the conformance suite of concord's one holding
// model: every holding type (a lock's Hold, a semaphore's Permit, an
// election's Term, a double barrier's Seat, a queue's Task, and any added
// later) runs through the same checks on a real cluster, in both
// testcluster modes:
//
//   - tokens strictly increase across successive holders;
//   - a holder cut off from etcd is told (its context ends with a cause
//     that errors.Is its package's ErrLost and leasekeeper.ErrLeaseLost)
//     before the server deletes its key and before the next holder is
//     granted;
//   - a holding whose key someone else deletes ends, as lost;
//   - the guard refuses once the holding is lost or released;
//   - the release is idempotent and detached from its caller's context;
//   - nothing is left under the resource's name.
//
// A package's tests call Run with a Kind that says how to take and give
// back its holding.
package holdingtest

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/testcluster"
)

// Holding is what every concord holding offers.
type Holding interface {
	Token() int64
	Key() string
	Lease() clientv3.LeaseID
	Context() context.Context
	Guard() []clientv3.Cmp
}

// Kind tells the suite how to take and give back one kind of holding.
type Kind struct {
	// ErrLost is the package's loss sentinel.
	ErrLost error
	// Exclusive says that a second holder of the same name is granted only
	// once the first holding has ended.
	Exclusive bool
	// Acquire takes a holding of the resource named name, with keeper k,
	// blocking until it is held.
	Acquire func(ctx context.Context, k *leasekeeper.Keeper, name string) (Holding, error)
	// Release gives h back (Unlock, Release, Resign, Leave, Nack).
	Release func(ctx context.Context, h Holding) error
	// Leftover, if set, reports keys that may stay under the name once
	// every holding is given back (a semaphore's stored limit).
	Leftover func(key string) bool
}

// Run runs the suite for kind on cluster c; name is a prefix no other test
// uses.
func Run(t *testing.T, c *testcluster.Cluster, name string, kind Kind) {
	t.Run("TokensIncrease", func(t *testing.T) { tokensIncrease(t, c, name+"/tokens", kind) })
	t.Run("ReleaseIdempotentAndDetached", func(t *testing.T) { releaseDetached(t, c, name+"/release", kind) })
	t.Run("GuardRefusesAfterRelease", func(t *testing.T) { guardAfterRelease(t, c, name+"/guard", kind) })
	t.Run("DeletedByAnother", func(t *testing.T) { deletedByAnother(t, c, name+"/deleted", kind) })
	t.Run("LostBeforeHandover", func(t *testing.T) { lostBeforeHandover(t, c, name+"/cut", kind) })
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// keeper returns a keeper on a client of its own, closed at the end of the
// test. Its margin is a quarter of the TTL: under the race detector on a
// loaded machine timers fire late, and the suite asserts that a holder is
// told before the server can expire its lease.
func keeper(t *testing.T, c *testcluster.Cluster, ttl time.Duration) (*leasekeeper.Keeper, *clientv3.Client) {
	t.Helper()
	cli, err := c.NewClient()
	require.NoError(t, err)
	k, err := leasekeeper.New(ctxT(t, 20*time.Second), cli, leasekeeper.WithTTL(ttl), leasekeeper.WithMargin(ttl/4))
	require.NoError(t, err)
	t.Cleanup(func() {
		c.RestoreClient(cli)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = k.Close(ctx)
		_ = cli.Close()
	})
	return k, cli
}

// nothingLeft checks, when the test ends, that no key is left under name.
func nothingLeft(t *testing.T, c *testcluster.Cluster, name string, kind Kind) {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := c.Admin().Get(ctx, name, clientv3.WithPrefix())
		if !assert.NoError(t, err) {
			return
		}
		for _, kv := range resp.Kvs {
			if kind.Leftover == nil || !kind.Leftover(string(kv.Key)) {
				t.Errorf("key left behind: %s (lease %x)", kv.Key, kv.Lease)
			}
		}
	})
}

// guarded reports whether a write guarded by g goes through.
func guarded(t *testing.T, ctx context.Context, c *testcluster.Cluster, g []clientv3.Cmp, name string) bool {
	t.Helper()
	// A guarded transaction with no write is served without a read barrier
	// (see lock's doc): the check writes, outside the resource's keys.
	resp, err := c.Admin().Txn(ctx).If(g...).Then(clientv3.OpPut("holdingtest-guard/"+name, "x")).Commit()
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = c.Admin().Delete(context.Background(), "holdingtest-guard/"+name) })
	return resp.Succeeded
}

func acquire(t *testing.T, ctx context.Context, kind Kind, k *leasekeeper.Keeper, name string) Holding {
	t.Helper()
	h, err := kind.Acquire(ctx, k, name)
	require.NoError(t, err)
	require.NotNil(t, h)
	require.NoError(t, h.Context().Err(), "a new holding is live")
	require.Positive(t, h.Token())
	require.NotEmpty(t, h.Key())
	require.NotZero(t, h.Lease())
	return h
}

func tokensIncrease(t *testing.T, c *testcluster.Cluster, name string, kind Kind) {
	nothingLeft(t, c, name, kind)
	ctx := ctxT(t, 60*time.Second)
	ka, _ := keeper(t, c, c.LeaseTTL(5*time.Second))
	kb, _ := keeper(t, c, c.LeaseTTL(5*time.Second))
	var last int64
	for i, k := range []*leasekeeper.Keeper{ka, kb, ka, kb} {
		h := acquire(t, ctx, kind, k, name)
		assert.Greater(t, h.Token(), last, "holding %d", i)
		assert.Equal(t, k.Current().ID(), h.Lease(), "the holding stands on its keeper's lease")
		last = h.Token()
		require.NoError(t, kind.Release(ctx, h))
	}
}

func releaseDetached(t *testing.T, c *testcluster.Cluster, name string, kind Kind) {
	nothingLeft(t, c, name, kind)
	ctx := ctxT(t, 60*time.Second)
	k, _ := keeper(t, c, c.LeaseTTL(5*time.Second))
	h := acquire(t, ctx, kind, k, name)
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	// A release that also waits (a double barrier's Leave waits for the
	// others) may report its canceled wait; the release itself is made.
	if err := kind.Release(canceled, h); err != nil {
		require.ErrorIs(t, err, context.Canceled, "a release under a canceled context still releases")
	}
	require.Error(t, h.Context().Err(), "the holding ended")
	assert.False(t, errors.Is(context.Cause(h.Context()), kind.ErrLost), "a release is not a loss: %v", context.Cause(h.Context()))
	resp, err := c.Admin().Get(ctx, h.Key())
	require.NoError(t, err)
	for _, kv := range resp.Kvs {
		assert.NotEqual(t, h.Token(), kv.CreateRevision, "the released key is gone")
	}
	require.NoError(t, kind.Release(ctx, h), "a release once released does nothing")
	require.NoError(t, kind.Release(ctx, h), "and again")
}

func guardAfterRelease(t *testing.T, c *testcluster.Cluster, name string, kind Kind) {
	nothingLeft(t, c, name, kind)
	ctx := ctxT(t, 60*time.Second)
	k, _ := keeper(t, c, c.LeaseTTL(5*time.Second))
	h := acquire(t, ctx, kind, k, name)
	require.True(t, guarded(t, ctx, c, h.Guard(), t.Name()), "the guard holds while the holding stands")
	require.NoError(t, kind.Release(ctx, h))
	require.False(t, guarded(t, ctx, c, h.Guard(), t.Name()), "the guard refuses after the release")
}

func deletedByAnother(t *testing.T, c *testcluster.Cluster, name string, kind Kind) {
	nothingLeft(t, c, name, kind)
	ctx := ctxT(t, 60*time.Second)
	k, _ := keeper(t, c, c.LeaseTTL(5*time.Second))
	h := acquire(t, ctx, kind, k, name)
	_, err := c.Admin().Delete(ctx, h.Key())
	require.NoError(t, err)
	select {
	case <-h.Context().Done():
	case <-ctx.Done():
		t.Fatal("the holding whose key was deleted did not end")
	}
	require.ErrorIs(t, context.Cause(h.Context()), kind.ErrLost)
	require.False(t, guarded(t, ctx, c, h.Guard(), t.Name()), "the guard refuses after the loss")
	releaseLost(t, ctx, kind, h)
}

// releaseLost checks that releasing a lost holding changes nothing: it
// returns nil, or reports the loss (a queue's Ack must tell that the task
// may run again elsewhere), every time.
func releaseLost(t *testing.T, ctx context.Context, kind Kind, h Holding) {
	t.Helper()
	for range 2 {
		if err := kind.Release(ctx, h); err != nil {
			require.ErrorIs(t, err, kind.ErrLost, "a release after a loss does nothing but report it")
		}
	}
}

// observeDeletion watches h's key on an untouched client and calls
// deleted when the server deletes it; the channel closes then. The watch is
// synced (no start revision); a read after its creation makes sure the key
// was still there.
func observeDeletion(t *testing.T, ctx context.Context, c *testcluster.Cluster, h Holding, deleted func()) <-chan struct{} {
	t.Helper()
	obs := c.Admin().Watch(clientv3.WithRequireLeader(ctx), h.Key(), clientv3.WithCreatedNotify())
	created := <-obs
	require.True(t, created.Created)
	g, err := c.Admin().Get(ctx, h.Key())
	require.NoError(t, err)
	require.Len(t, g.Kvs, 1)
	require.Equal(t, h.Token(), g.Kvs[0].CreateRevision)
	observed := make(chan struct{})
	go func() {
		defer close(observed)
		for resp := range obs {
			for _, ev := range resp.Events {
				if ev.Type == clientv3.EventTypeDelete {
					deleted()
					return
				}
			}
		}
	}()
	return observed
}

// lostBeforeHandover cuts a holder's client off: its lease then expires on
// the server while its process lives. Its context must end before an
// observer on an untouched client sees its key deleted and, for an
// exclusive holding, before the next holder is granted.
func lostBeforeHandover(t *testing.T, c *testcluster.Cluster, name string, kind Kind) {
	nothingLeft(t, c, name, kind)
	ctx := ctxT(t, 90*time.Second)
	ttl := c.LeaseTTL(time.Second)
	ka, cliA := keeper(t, c, ttl)
	kb, _ := keeper(t, c, c.LeaseTTL(5*time.Second))
	h := acquire(t, ctx, kind, ka, name)

	var mu sync.Mutex // protects told, deleted, granted
	var told, deleted, granted time.Time
	stop := context.AfterFunc(h.Context(), func() {
		mu.Lock()
		told = time.Now()
		mu.Unlock()
	})
	defer stop()

	observed := observeDeletion(t, ctx, c, h, func() {
		mu.Lock()
		deleted = time.Now()
		mu.Unlock()
	})

	next := make(chan Holding, 1)
	if kind.Exclusive {
		go func() {
			hb, err := kind.Acquire(ctx, kb, name)
			if err != nil {
				t.Errorf("the next holder: %v", err)
				next <- nil
				return
			}
			mu.Lock()
			granted = time.Now()
			mu.Unlock()
			next <- hb
		}()
	}

	c.CutClient(cliA)
	select {
	case <-observed:
	case <-ctx.Done():
		t.Fatal("the cut-off holder's key was never deleted")
	}
	var hb Holding
	if kind.Exclusive {
		select {
		case hb = <-next:
		case <-ctx.Done():
			t.Fatal("the next holder was never granted")
		}
	}
	mu.Lock()
	defer mu.Unlock()
	require.False(t, told.IsZero(), "the cut-off holder was never told")
	cause := context.Cause(h.Context())
	assert.ErrorIs(t, cause, kind.ErrLost)
	assert.ErrorIs(t, cause, leasekeeper.ErrLeaseLost)
	assert.True(t, told.Before(deleted), "told %v after the server deleted its key", told.Sub(deleted))
	if kind.Exclusive {
		assert.True(t, told.Before(granted), "told %v after the next holder was granted", told.Sub(granted))
	}
	t.Logf("told %v before the server deleted the key", deleted.Sub(told))
	require.False(t, guarded(t, ctx, c, h.Guard(), t.Name()), "the guard refuses after the loss")
	c.RestoreClient(cliA)
	releaseLost(t, ctx, kind, h)
	if hb != nil {
		require.NoError(t, kind.Release(ctx, hb))
	}
}
