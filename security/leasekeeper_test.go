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
// idle, must stay Connected. clientv3 authenticates anew for every new stream
// (Client.getToken, its workaround for etcd issue 11954), so a keeper that
// opened a stream per renewal paid a password check on the server each time
// and lost short leases under load; the keeper renews on one long-lived
// stream.
func TestKeeperRenewsUnderAuth(t *testing.T) {
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
