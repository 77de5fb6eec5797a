package cache_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/testcluster"
)

// A cache whose member is cut off from its peers does not freeze: its watch
// requires a leader, fails on the isolated member, and resumes on another
// member of its client, catching up with writes made meanwhile — before the
// partition heals. Each of the client's two members is isolated in turn, so
// one of the two rounds isolates the member its watch was on.
func TestPartitionedMemberFailsOver(t *testing.T) {
	tc := testcluster.New(t)
	p := prefixFor(t, tc)
	ctx := ctxT(t, 60*time.Second)
	defer cleanup(t, tc, p)
	cli, err := tc.NewClient(testcluster.To(0, 1))
	require.NoError(t, err)
	writer, err := tc.NewClient(testcluster.To(2))
	require.NoError(t, err)
	c := newCache(t, cli, p)

	for round, isolated := range []int{0, 1} {
		tc.Partition(isolated)
		_, err := tc.WaitLeader(ctx)
		require.NoError(t, err)
		var rev int64
		for i := range 5 {
			resp, err := writer.Put(ctx, fmt.Sprintf("%sr%d-%d", p, round, i), "v")
			require.NoError(t, err)
			rev = resp.Header.Revision
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = c.WaitRevision(wctx, rev)
		cancel()
		require.NoError(t, err, "cache stuck while member %d is isolated", isolated)
		kv, ok := c.Get(fmt.Sprintf("%sr%d-4", p, round))
		require.True(t, ok)
		require.Equal(t, rev, kv.ModRevision)
		tc.Heal()
	}
	_, err = writer.Delete(ctx, p, clientv3.WithPrefix())
	require.NoError(t, err)
}
