package discovery_test

import (
	"context"
	"fmt"
	"time"

	"github.com/concordkit/concord/discovery"
	"github.com/concordkit/concord/leasekeeper"
)

func ExampleRegister() {
	ctx := context.Background()
	cli := cluster.Client()
	k, err := leasekeeper.New(ctx, cli, leasekeeper.WithTTL(5*time.Second))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer k.Close(context.WithoutCancel(ctx)) // revokes the lease: the record goes too

	reg, err := discovery.Register(ctx, k, "/example/payments", "p-1", "10.0.0.7:8443", map[string]string{"zone": "eu-1"})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer reg.Deregister(context.WithoutCancel(ctx))
	fmt.Println("key:", reg.Key())

	instances, err := discovery.Resolve(ctx, cli, "/example/payments")
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, in := range instances {
		fmt.Println(in.ID, in.Addr, in.Metadata["zone"])
	}
	// Output:
	// key: /example/payments/.discovery/p-1
	// p-1 10.0.0.7:8443 eu-1
}
