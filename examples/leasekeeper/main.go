// Command leasekeeper shows what a concord process sees when it is cut off
// from etcd: it starts an embedded 3-member cluster, keeps a 2-second lease,
// cuts its client off and prints each state change — Connected, Suspended,
// Lost, and Reconnected on a new lease once the client is restored — next to
// the moment another client sees the server delete a key attached to the
// lost lease. Lost always comes first: that is the promise every concord
// holding is built on.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/testcluster"
)

func main() {
	if err := run(context.Background(), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "leasekeeper demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, 50*time.Second)
	defer cancel()
	start := time.Now()
	say := func(format string, args ...any) {
		fmt.Fprintf(out, "%7.3fs  %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}

	cluster, err := testcluster.Start(ctx)
	if err != nil {
		return err
	}
	defer cluster.Close()
	say("started an embedded 3-member etcd cluster")

	cli, err := cluster.NewClient()
	if err != nil {
		return err
	}
	k, err := leasekeeper.New(ctx, cli, leasekeeper.WithTTL(2*time.Second))
	if err != nil {
		return err
	}
	defer k.Close(context.WithoutCancel(ctx))
	events, stop := k.Subscribe()
	defer stop()

	lease := k.Current()
	put, err := cli.Put(ctx, "demo/holding", "held", clientv3.WithLease(lease.ID()))
	if err != nil {
		return err
	}
	// Another process watches the key, as the next waiter for a lock would.
	deleted := cluster.Admin().Watch(ctx, "demo/holding", clientv3.WithRev(put.Header.Revision+1))

	show := func(ev leasekeeper.Event) {
		line := fmt.Sprintf("keeper: %-11s lease %x (generation %d)", ev.State, int64(ev.Lease), ev.Generation)
		if ev.State.Live() {
			line += fmt.Sprintf(", safe for %v more", time.Until(ev.SafeUntil).Round(time.Millisecond))
		}
		if ev.Err != nil {
			line += fmt.Sprintf(" — %v", ev.Err)
		}
		say("%s", line)
	}
	show(<-events)
	say("attached key demo/holding to lease %x; another client watches it", int64(lease.ID()))

	cluster.CutClient(cli)
	say("cut the keeper's client off from every member (its process keeps running)")

	var lostAt time.Time
	for lostAt.IsZero() {
		select {
		case ev := <-events:
			show(ev)
			if ev.State == leasekeeper.Lost {
				lostAt = ev.At
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for resp := range deleted {
		if len(resp.Events) > 0 && resp.Events[0].Type == clientv3.EventTypeDelete {
			say("other client: the server deleted demo/holding (lease expired) — %v after the keeper declared it lost",
				time.Since(lostAt).Round(time.Millisecond))
			break
		}
	}

	cluster.RestoreClient(cli)
	say("restored the client")
	for {
		select {
		case ev := <-events:
			show(ev)
			if ev.State == leasekeeper.Reconnected {
				say("the old lease stays lost (%v); holdings start over on lease %x", lease.Err() != nil, int64(ev.Lease))
				return nil
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
