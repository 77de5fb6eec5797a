package enqueue_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/enqueue"
	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/testcluster"
)

var cluster *testcluster.Cluster

func TestMain(m *testing.M) { testcluster.Main(m, &cluster) }

var errLost = errors.New("test: lost")

func lease(t *testing.T) (*leasekeeper.Keeper, *leasekeeper.Lease) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	k, err := leasekeeper.New(ctx, cluster.Client(), leasekeeper.WithTTL(cluster.LeaseTTL(5*time.Second)))
	require.NoError(t, err)
	t.Cleanup(func() { _ = k.Close(context.Background()) })
	l, err := k.Lease(ctx)
	require.NoError(t, err)
	return k, l
}

func put(key string) func(context.Context) (*clientv3.TxnResponse, error) {
	return func(ctx context.Context) (*clientv3.TxnResponse, error) {
		return cluster.Client().Txn(ctx).Then(clientv3.OpPut(key, "")).Commit()
	}
}

// An answer that arrives after the caller gave up is still taken: it tells
// the recipe whether its key was written.
func TestAnswerWithinGraceIsKept(t *testing.T) {
	k, l := lease(t)
	ctx, cancel := context.WithCancel(context.Background())
	key := t.Name()
	t.Cleanup(func() { _, _ = cluster.Admin().Delete(context.Background(), key) })
	resp, err := enqueue.New(l, k.TTL(), errLost, "test").Send(ctx, func(tctx context.Context) (*clientv3.TxnResponse, error) {
		cancel() // the caller gives up while the transaction is on its way
		return put(key)(tctx)
	})
	require.NoError(t, err)
	assert.True(t, resp.Succeeded)
}

func TestCanceledBeforeSending(t *testing.T) {
	k, l := lease(t)
	ctx, cancel := context.WithCancelCause(context.Background())
	cause := errors.New("given up")
	cancel(cause)
	_, err := enqueue.New(l, k.TTL(), errLost, "test").Send(ctx, func(context.Context) (*clientv3.TxnResponse, error) {
		t.Error("sent after ctx ended")
		return nil, nil
	})
	assert.ErrorIs(t, err, cause)
}

// An attempt whose outcome is unknown is sent again; anything else etcd
// refuses is reported as what failed.
func TestRetriesOnlyUnknownOutcomes(t *testing.T) {
	k, l := lease(t)
	key := t.Name()
	t.Cleanup(func() { _, _ = cluster.Admin().Delete(context.Background(), key) })
	tries := 0
	resp, err := enqueue.New(l, k.TTL(), errLost, "test").Send(context.Background(), func(ctx context.Context) (*clientv3.TxnResponse, error) {
		if tries++; tries == 1 {
			return nil, rpctypes.ErrTimeout
		}
		return put(key)(ctx)
	})
	require.NoError(t, err)
	assert.True(t, resp.Succeeded)
	assert.Equal(t, 2, tries)

	tries = 0
	_, err = enqueue.New(l, k.TTL(), errLost, "test: enqueue").Send(context.Background(), func(context.Context) (*clientv3.TxnResponse, error) {
		tries++
		return nil, rpctypes.ErrPermissionDenied
	})
	assert.ErrorIs(t, err, rpctypes.ErrPermissionDenied)
	assert.ErrorContains(t, err, "test: enqueue: ")
	assert.Equal(t, 1, tries)
}

// A lease etcd no longer knows is the recipe's ErrLost, whether etcd says
// so or the keeper noticed first.
func TestLeaseGoneIsLost(t *testing.T) {
	k, l := lease(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, cluster.RevokeLease(ctx, l.ID()))
	key := t.Name()
	_, err := enqueue.New(l, k.TTL(), errLost, "test").Send(ctx, func(ctx context.Context) (*clientv3.TxnResponse, error) {
		return cluster.Client().Txn(ctx).Then(clientv3.OpPut(key, "", clientv3.WithLease(l.ID()))).Commit()
	})
	assert.ErrorIs(t, err, errLost)
	<-l.Done()
	_, err = enqueue.New(l, k.TTL(), errLost, "test").Send(ctx, func(context.Context) (*clientv3.TxnResponse, error) {
		t.Error("sent on a lease known lost")
		return nil, nil
	})
	assert.ErrorIs(t, err, errLost)
}
