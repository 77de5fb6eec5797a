package pubsub_test

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/pubsub"
)

func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cli := cluster.Client()
	const topic = "examples/orders"
	defer cluster.Admin().Delete(context.WithoutCancel(ctx), topic+"/", clientv3.WithPrefix())

	// Keep the newest two messages.
	for _, p := range []string{"a", "b", "c"} {
		if _, err := pubsub.Publish(ctx, cli, topic, []byte(p), pubsub.WithMaxCount(2)); err != nil {
			fmt.Println(err)
			return
		}
	}

	sub, err := pubsub.Subscribe(ctx, cli, topic, pubsub.FromRevision(1))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer sub.Close()
	for range 3 {
		ev, err := sub.Next(ctx)
		if err != nil {
			fmt.Println(err)
			return
		}
		if ev.Gap != nil {
			fmt.Printf("gap: %d message(s) %s\n", ev.Gap.Lost, ev.Gap.Reason)
			continue
		}
		fmt.Printf("message %d: %s\n", ev.Message.Seq, ev.Message.Payload)
	}
	// Output:
	// gap: 1 message(s) trimmed
	// message 2: b
	// message 3: c
}
