package guard_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/guard"
	"github.com/concordkit/concord/testcluster"
)

var cluster *testcluster.Cluster

func TestMain(m *testing.M) { testcluster.Main(m, &cluster, testcluster.WithSize(1)) }

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

func TestCheckOps(t *testing.T) {
	own := []string{"N/.cron/", "N/.election/"}
	big := strings.Repeat("x", guard.MaxRequestBytes)
	for _, tc := range []struct {
		name string
		ops  []clientv3.Op
		ok   bool
	}{
		{"foreign put", []clientv3.Op{clientv3.OpPut("N/ledger/1", "x")}, true},
		{"foreign prefix", []clientv3.Op{clientv3.OpDelete("N/a", clientv3.WithPrefix())}, true},
		{"own key", []clientv3.Op{clientv3.OpPut("N/.cron/claim/j", "x")}, false},
		{"second reserved prefix", []clientv3.Op{clientv3.OpPut("N/.election/zz", "x")}, false},
		{"range holding the prefix", []clientv3.Op{clientv3.OpDelete("N/", clientv3.WithPrefix())}, false},
		{"range reaching into it", []clientv3.Op{clientv3.OpDelete("N/.cr", clientv3.WithRange("N/.cron/d"))}, false},
		{"from after it", []clientv3.Op{clientv3.OpDelete("N/.f", clientv3.WithFromKey())}, true},
		{"from before it", []clientv3.Op{clientv3.OpDelete("M", clientv3.WithFromKey())}, false},
		{"nested then", []clientv3.Op{clientv3.OpTxn(nil, []clientv3.Op{clientv3.OpPut("N/.cron/x", "")}, nil)}, false},
		{"nested else", []clientv3.Op{clientv3.OpTxn(nil, nil, []clientv3.Op{clientv3.OpPut("N/.election/x", "")})}, false},
		{"compare on own key", []clientv3.Op{clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.Version("N/.cron/x"), "=", 0)}, nil, nil)}, true},
		{"oversized value", []clientv3.Op{clientv3.OpPut("N/big", big)}, false},
		{"oversized together", []clientv3.Op{clientv3.OpPut("N/a", big[:guard.MaxRequestBytes/2]), clientv3.OpPut("N/b", big[:guard.MaxRequestBytes/2])}, false},
		{"oversized nested", []clientv3.Op{clientv3.OpTxn(nil, []clientv3.Op{clientv3.OpPut("N/a", big)}, nil)}, false},
	} {
		err := guard.CheckOps("x", tc.ops, guard.MaxRequestBytes, own...)
		if (err == nil) != tc.ok {
			t.Errorf("%s: error %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "x: ") {
			t.Errorf("%s: error %q lacks the package prefix", tc.name, err)
		}
	}
}
