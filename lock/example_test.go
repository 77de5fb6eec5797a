package lock_test

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/lock"
)

// A lock held while writing into etcd through the hold's guard: the write
// lands only while the lock is held.
func ExampleMutex() {
	ctx := context.Background()
	cli := cluster.Client()
	k, err := leasekeeper.New(ctx, cli, leasekeeper.WithTTL(5*time.Second))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer k.Close(context.WithoutCancel(ctx))

	m := lock.New(k, "/examples/reindex", lock.WithValue("worker-1"))
	h, err := m.Lock(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	info, err := lock.Inspect(ctx, cli, "/examples/reindex")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("holder:", info.Holder.Value, info.Holder.Token == h.Token())

	write := func() bool {
		resp, err := cli.Txn(ctx).If(h.Guard()...).Then(clientv3.OpPut("/examples/reindex-state", "done")).Commit()
		return err == nil && resp.Succeeded
	}
	fmt.Println("fenced write while held:", write())
	if err := h.Unlock(ctx); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("fenced write after unlock:", write())
	fmt.Println("context:", context.Cause(h.Context()))
	_, _ = cli.Delete(ctx, "/examples/reindex-state")
	// Output:
	// holder: worker-1 true
	// fenced write while held: true
	// fenced write after unlock: false
	// context: lock: unlocked
}
