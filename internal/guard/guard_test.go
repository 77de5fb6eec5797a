package guard_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/guard"
	"github.com/concordkit/concord/testcluster"
)

var cluster *testcluster.Cluster

func TestMain(m *testing.M) { testcluster.Main(m, &cluster, testcluster.Size(1)) }

var errLost = errors.New("x: lost")

func TestDo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cli := cluster.Client()
	p := t.Name() + "/"
	defer cli.Delete(context.Background(), p, clientv3.WithPrefix())

	held, err := cli.Put(ctx, p+"holder", "")
	require.NoError(t, err)
	g := guard.Held(p+"holder", held.Header.Revision)

	_, err = guard.Do(ctx, cli, g, errLost, clientv3.OpPut(p+"data", "1"))
	require.NoError(t, err, "written while held")

	// A new incarnation of the holder key is a different holding.
	_, err = cli.Delete(ctx, p+"holder")
	require.NoError(t, err)
	_, err = cli.Put(ctx, p+"holder", "")
	require.NoError(t, err)
	_, err = guard.Do(ctx, cli, g, errLost, clientv3.OpPut(p+"data", "2"))
	require.ErrorIs(t, err, errLost)
	resp, err := cli.Get(ctx, p+"data")
	require.NoError(t, err)
	require.Equal(t, "1", string(resp.Kvs[0].Value), "nothing written after the holding ended")

	// An etcd error is not reported as a loss.
	ops := make([]clientv3.Op, guard.MaxTxnOps+1)
	for i := range ops {
		ops[i] = clientv3.OpGet(p + "data")
	}
	_, err = guard.Do(ctx, cli, nil, errLost, ops...)
	require.Error(t, err)
	require.NotErrorIs(t, err, errLost)
}

func TestCheckValueSize(t *testing.T) {
	require.NoError(t, guard.CheckValueSize("queue", "payload", 1024))
	err := guard.CheckValueSize("queue", "payload", guard.MaxRequestBytes)
	require.ErrorContains(t, err, "queue: payload of")
}
