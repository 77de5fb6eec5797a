package lock_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/lock"
)

// A holder that lives and renews its lease loses the lock after its
// WithMaxHold bound: its context ends (ErrExpired, ErrLost) before the next
// waiter is granted, its guard fails after, and no key is left.
func TestMaxHoldEndsLiveHolder(t *testing.T) {
	name := lockName(t)
	ctx := ctxT(t, 20*time.Second)
	k1 := newKeeper(t, newClient(t), 2*time.Second)
	k2 := newKeeper(t, newClient(t), 2*time.Second)
	const bound = 300 * time.Millisecond

	start := time.Now()
	h, err := lock.New(k1, name, lock.WithMaxHold(bound)).Lock(ctx)
	require.NoError(t, err)
	ch := lockAsync(ctx, lock.New(k2, name))
	r := recv(t, ch, 10*time.Second)
	require.NoError(t, r.err)
	holderErr := h.Context().Err() // read first: the order is the test
	require.Error(t, holderErr, "the next waiter was granted while the bounded holder still held")
	require.GreaterOrEqual(t, time.Since(start), bound)
	cause := context.Cause(h.Context())
	require.ErrorIs(t, cause, lock.ErrExpired)
	require.ErrorIs(t, cause, lock.ErrLost)
	require.Greater(t, r.h.Token(), h.Token())
	require.NoError(t, k1.Current().Err(), "the bounded holder's lease should live on")

	resp, err := cluster.Client().Txn(ctx).If(h.Guard()...).Then(clientv3.OpPut(name+"/data", "late")).Commit()
	require.NoError(t, err)
	require.False(t, resp.Succeeded, "a guarded write of an expired hold succeeded")
	require.NoError(t, h.Unlock(ctx), "Unlock after expiry")
	require.NoError(t, r.h.Unlock(ctx))
	requireNoKeys(t, name)
}

// Unlocked before its bound, a hold ends as unlocked, and the Mutex value
// takes the lock again as usual: the old bound does not touch the new hold.
func TestMaxHoldUnlockedBefore(t *testing.T) {
	name := lockName(t)
	ctx := ctxT(t, 20*time.Second)
	m := lock.New(newKeeper(t, newClient(t), 2*time.Second), name, lock.WithMaxHold(time.Second))
	h, err := m.Lock(ctx)
	require.NoError(t, err)
	require.NoError(t, h.Unlock(ctx))
	require.ErrorIs(t, context.Cause(h.Context()), lock.ErrUnlocked)

	h2, err := m.Lock(ctx)
	require.NoError(t, err)
	select {
	case <-h2.Context().Done():
		require.ErrorIs(t, context.Cause(h2.Context()), lock.ErrExpired)
	case <-ctx.Done():
		t.Fatal("the second hold never expired")
	}
	require.NoError(t, h2.Unlock(ctx))
	require.ErrorIs(t, context.Cause(h.Context()), lock.ErrUnlocked, "the first hold's cause changed")
	requireNoKeys(t, name)
}

// A reader of an RWMutex is bounded too: the writer waiting behind it is
// granted.
func TestMaxHoldRWMutex(t *testing.T) {
	name := lockName(t)
	ctx := ctxT(t, 20*time.Second)
	rh, err := lock.NewRWMutex(newKeeper(t, newClient(t), 2*time.Second), name, lock.WithMaxHold(200*time.Millisecond)).RLock(ctx)
	require.NoError(t, err)
	wh, err := lock.NewRWMutex(newKeeper(t, newClient(t), 2*time.Second), name).Lock(ctx)
	require.NoError(t, err)
	require.ErrorIs(t, context.Cause(rh.Context()), lock.ErrExpired)
	require.Greater(t, wh.Token(), rh.Token())
	require.NoError(t, wh.Unlock(ctx))
	require.NoError(t, rh.Unlock(ctx))
	requireNoKeys(t, name)
}
