package discovery

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/testcluster"
)

// The rules of write, one by one: a key held by this binding's earlier lease
// is taken over, a key held by a foreign lease is not.
func TestBindingTakeover(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// A one-member cluster of its own: this internal test cannot reach the
	// package's shared cluster, which lives in the external test package.
	cli := testcluster.New(t, testcluster.WithSize(1)).Client()
	key := "/discovery-test/TestBindingTakeover/.discovery/x"
	defer cli.Delete(context.Background(), key)
	k, err := leasekeeper.New(ctx, cli, leasekeeper.WithTTL(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close(context.Background())
	b, err := bind(ctx, k, key, []byte("v1"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.close(context.Background())

	// An earlier lease of ours still holds the key (the server has not
	// expired it yet when the next generation writes).
	old, err := cli.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Revoke(context.Background(), old.ID)
	if _, err := cli.Put(ctx, key, "stale", clientv3.WithLease(old.ID)); err != nil {
		t.Fatal(err)
	}
	b.wrote(old.ID, 1)
	l, err := k.Lease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.write(ctx, l); err != nil {
		t.Fatalf("take over from our earlier lease: %v", err)
	}
	resp, err := cli.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.Kvs[0]; clientv3.LeaseID(got.Lease) != l.ID() || string(got.Value) != "v1" {
		t.Fatalf("after takeover: lease %x value %q", got.Lease, got.Value)
	}

	// A foreign lease holds it: never overwritten.
	foreign, err := cli.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Revoke(context.Background(), foreign.ID)
	if _, err := cli.Put(ctx, key, "theirs", clientv3.WithLease(foreign.ID)); err != nil {
		t.Fatal(err)
	}
	if err := b.write(ctx, l); !errors.Is(err, ErrExists) {
		t.Fatalf("write over a foreign lease: %v, want ErrExists", err)
	}
	if err := b.set(ctx, []byte("v2")); !errors.Is(err, ErrLost) {
		t.Fatalf("update over a foreign lease: %v, want ErrLost", err)
	}
	// Deregistering must not delete the foreign record.
	if err := b.close(ctx); err != nil {
		t.Fatal(err)
	}
	resp, err = cli.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "theirs" {
		t.Fatalf("foreign record touched: %v", resp.Kvs)
	}
}
