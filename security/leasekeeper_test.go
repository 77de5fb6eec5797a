package security_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/leasekeeper"
)

// TestKeeperRenewsUnderAuth: a restricted user's keeper with a short TTL,
// idle, must stay Connected. With authentication on it does not: the keeper
// renews with KeepAliveOnce, which opens a new LeaseKeepAlive stream each
// time, and clientv3's stream interceptor authenticates anew for every new
// stream (Client.getToken, the workaround for etcd issue 11954). Each renewal
// thus costs a bcrypt comparison on the server (60–150 ms measured without
// -race, about 1 s with it, against 2 ms without auth) and sometimes fails
// with "etcdserver: invalid auth token". Measured: a restricted user's idle
// keeper at TTL 10 s went Suspended after 16 s and Lost after 19 s under
// -race on a loaded machine.
func TestKeeperRenewsUnderAuth(t *testing.T) {
	t.Skip("leasekeeper: KeepAliveOnce per renewal re-authenticates under etcd auth (new stream → getToken) and loses short leases; reported, not fixed in this session")
	ctx := ctxT(t, 60*time.Second)
	u, err := cluster.AddUser(ctx, "keeper-ttl", "tenants/keeper-ttl/")
	require.NoError(t, err)
	cfg := cluster.ClientConfig()
	cfg.Username, cfg.Password = u.Name, u.Password
	cfg.DialTimeout = 60 * time.Second
	cli, err := clientv3.New(cfg)
	require.NoError(t, err)
	defer cli.Close()
	k, err := leasekeeper.New(ctx, cli, leasekeeper.WithTTL(2*time.Second))
	require.NoError(t, err)
	defer k.Close(context.Background())
	events, stop := k.Subscribe()
	defer stop()
	idle := time.After(10 * time.Second)
	for {
		select {
		case ev := <-events:
			if ev.State != leasekeeper.Connected {
				t.Fatalf("an idle keeper under auth went %v: %v", ev.State, ev.Err)
			}
		case <-idle:
			return
		}
	}
}
