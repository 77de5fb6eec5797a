package election_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/concordkit/concord/election"
	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/testcluster"
)

// TestPermissionDenied: a user allowed only under "tenant-a" campaigns in an
// election elsewhere. Every call fails at once with a clear error; nothing
// retries forever.
func TestPermissionDenied(t *testing.T) {
	c := testcluster.New(t, testcluster.WithAuth())
	ctx := ctxT(t, 30*time.Second)
	u, err := c.AddUser(ctx, "alice", "tenant-a")
	require.NoError(t, err)
	cli, err := c.NewClient(testcluster.AsUser(u))
	require.NoError(t, err)
	k, err := leasekeeper.New(ctx, cli, leasekeeper.WithTTL(2*time.Second))
	require.NoError(t, err)
	defer k.Close(context.Background())

	e := election.New(k, "tenant-b/leader")
	_, err = e.Campaign(ctx, "v")
	require.ErrorIs(t, err, rpctypes.ErrPermissionDenied)
	_, err = e.Leader(ctx)
	require.ErrorIs(t, err, rpctypes.ErrPermissionDenied)
	ch, errf := e.Observe(ctx)
	select {
	case _, ok := <-ch:
		assert.False(t, ok)
	case <-time.After(10 * time.Second):
		t.Fatal("observe did not give up on a permission error")
	}
	assert.ErrorIs(t, errf(), rpctypes.ErrPermissionDenied)
	err = e.Run(ctx, "v", func(context.Context, *election.Term) error { return errors.New("never") })
	require.ErrorIs(t, err, rpctypes.ErrPermissionDenied)

	// Under its own prefix it works.
	term, err := election.New(k, "tenant-a/leader").Campaign(ctx, "v")
	require.NoError(t, err)
	require.NoError(t, term.Resign(ctx))
}
