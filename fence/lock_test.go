package fence_test

import (
	"context"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/stretchr/testify/require"

	"github.com/concordkit/concord/fence"
	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/lock"
	"github.com/concordkit/concord/testcluster"
)

var cluster *testcluster.Cluster

func TestMain(m *testing.M) { testcluster.Main(m, &cluster) }

// A lock holder reads the account, is cut off from etcd in the middle of its
// update, and finishes the write after its lease expired and the next holder
// made its own deposit. Through the fence column, the stale write is refused
// and the history's tokens never go down; with the fence off, the same run
// commits the stale write, and the checker reports it.
func TestStaleHolderRefusedAfterCutOff(t *testing.T) {
	for _, fenced := range []bool{true, false} {
		name := map[bool]string{true: "fenced", false: "unfenced"}[fenced]
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			db := openDB(t)
			lockName := "/test/fence/" + strings.ReplaceAll(t.Name(), "/", "_")

			cutCli, err := cluster.NewClient()
			require.NoError(t, err)
			t.Cleanup(func() { _ = cutCli.Close() })
			cli, err := cluster.NewClient()
			require.NoError(t, err)
			t.Cleanup(func() { _ = cli.Close() })
			keeper := func(c *clientv3.Client) *leasekeeper.Keeper {
				k, err := leasekeeper.New(ctx, c, leasekeeper.WithTTL(cluster.LeaseTTL(2*time.Second)))
				require.NoError(t, err)
				t.Cleanup(func() { _ = k.Close(context.Background()) })
				return k
			}
			k1, k2 := keeper(cutCli), keeper(cli)

			h1, err := lock.New(k1, lockName).Lock(ctx)
			require.NoError(t, err)
			require.NoError(t, deposit(ctx, db, fenced, "a", h1.Token(), 10))

			// The second worker queues; the first is cut off before it
			// writes its next deposit.
			type result struct {
				h   *lock.Hold
				err error
			}
			ch := make(chan result, 1)
			go func() {
				h, err := lock.New(k2, lockName).Lock(ctx)
				ch <- result{h, err}
			}()
			cluster.CutClient(cutCli)
			var r result
			select {
			case r = <-ch:
			case <-ctx.Done():
				t.Fatal("the next holder was never granted the lock")
			}
			require.NoError(t, r.err)
			require.Error(t, h1.Context().Err(), "the next holder was granted while the first still held")
			require.Greater(t, r.h.Token(), h1.Token())
			require.NoError(t, deposit(ctx, db, fenced, "a", r.h.Token(), 20))

			// The first holder, unaware, writes with its old token.
			err = deposit(ctx, db, fenced, "a", h1.Token(), 10)
			violation := tokenOrder(t, db, "a")
			var bal int64
			require.NoError(t, db.QueryRow("SELECT balance FROM accounts WHERE id = 'a'").Scan(&bal))
			if fenced {
				require.ErrorIs(t, err, fence.ErrStale)
				require.NoError(t, violation)
				require.Equal(t, int64(30), bal)
			} else {
				require.NoError(t, err)
				require.Error(t, violation, "the checker did not see the stale write")
			}
			cluster.RestoreClient(cutCli)
			require.NoError(t, r.h.Unlock(ctx))
			require.NoError(t, h1.Unlock(ctx))
		})
	}
}
