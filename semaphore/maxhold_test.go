package semaphore_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/concordkit/concord/semaphore"
)

// A permit held past its WithMaxHold bound by a live holder ends (ErrExpired,
// ErrLost) before a waiter is granted its permits, and no key is left.
func TestMaxHoldEndsLivePermit(t *testing.T) {
	name := semName(t)
	ctx := ctxT(t, 20*time.Second)
	k1 := newKeeper(t, newClient(t), 2*time.Second)
	k2 := newKeeper(t, newClient(t), 2*time.Second)
	const bound = 300 * time.Millisecond

	start := time.Now()
	p, err := semaphore.New(k1, name, 2, semaphore.WithMaxHold(bound)).Acquire(ctx, 2)
	require.NoError(t, err)
	r := recv(t, acquireAsync(ctx, semaphore.New(k2, name, 2), 1), 10*time.Second)
	require.NoError(t, r.err)
	holderErr := p.Context().Err() // read first: the order is the test
	require.Error(t, holderErr, "a waiter was granted while the bounded permit still stood")
	require.GreaterOrEqual(t, time.Since(start), bound)
	require.ErrorIs(t, context.Cause(p.Context()), semaphore.ErrExpired)
	require.ErrorIs(t, context.Cause(p.Context()), semaphore.ErrLost)
	require.NoError(t, k1.Current().Err())
	require.NoError(t, p.Release(ctx))
	require.NoError(t, r.p.Release(ctx))
}
