// Command leasekeeper shows what a concord process sees when it is cut off
// from etcd: it keeps a lease, attaches a key to it, cuts its client off and
// prints each state change — Connected, Suspended, Lost, and Reconnected on
// a new lease once the client is restored — next to the moment another
// client sees the server delete the key attached to the lost lease. Lost
// comes first: that is the promise every concord holding is built on.
//
//	go run ./examples/leasekeeper             # on an embedded 3-member cluster
//	go run ./examples/leasekeeper -trace      # and print the spans
//	go run ./examples/leasekeeper -endpoints https://etcd:2379 -cacert ca.pem -cert me.pem -key me-key.pem -user me
//
// On a cluster given with -endpoints the cut is made in the keeper's own
// connections (see exampleenv), so the story is the same on any etcd.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/examples/internal/exampleenv"
	"github.com/concordkit/concord/internal/watch"
	"github.com/concordkit/concord/leasekeeper"
)

func main() {
	var o exampleenv.Options
	fs := flag.NewFlagSet("leasekeeper", flag.ExitOnError)
	o.Register(fs)
	_ = fs.Parse(os.Args[1:])
	if err := run(context.Background(), os.Stdout, o); err != nil {
		fmt.Fprintln(os.Stderr, "leasekeeper:", err)
		os.Exit(1)
	}
}

const holdingKey = "examples/leasekeeper/holding"

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func run(ctx context.Context, out io.Writer, o exampleenv.Options) error {
	ctx, cancel := context.WithTimeout(ctx, 50*time.Second)
	defer cancel()
	out = &lockedWriter{w: out}
	start := time.Now()
	say := func(format string, args ...any) {
		fmt.Fprintf(out, "%7.3fs  %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}
	e, err := exampleenv.Setup(ctx, out, o)
	if err != nil {
		return err
	}
	defer e.Close()
	if s := e.Started(); s != "" {
		say("%s", s)
	}

	cli, err := e.NewClient()
	if err != nil {
		return err
	}
	// A TTL that outlives an etcd leader failover (see
	// exampleenv.LeaseTTL): only the cut below loses the lease.
	ttl := e.LeaseTTL()
	k, err := leasekeeper.New(ctx, cli, leasekeeper.WithTTL(ttl))
	if err != nil {
		return err
	}
	defer func() {
		e.Restore(cli)
		kctx, kcancel := context.WithTimeout(context.WithoutCancel(ctx), ttl)
		defer kcancel()
		k.Close(kctx)
	}()
	events, stop := k.Subscribe()
	defer stop()

	lease := k.Current()
	// The put is safe to send again after a transient error
	// (exampleenv.Retry).
	var put *clientv3.PutResponse
	if err := e.Retry(ctx, func(ctx context.Context) error {
		var err error
		put, err = cli.Put(ctx, holdingKey, "held", clientv3.WithLease(lease.ID()))
		return err
	}); err != nil {
		return err
	}
	// Another process watches the key, as the next waiter for a lock would:
	// from the revision after the put, so that its deletion cannot slip by
	// even if the watch has to be opened again meanwhile.
	w := watch.Open(ctx, e.Admin, holdingKey, watch.Config{From: put.Header.Revision + 1})
	defer w.Stop()

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
	next := func() (leasekeeper.Event, error) {
		select {
		case ev, ok := <-events:
			if !ok {
				return ev, fmt.Errorf("the keeper closed")
			}
			return ev, nil
		case <-ctx.Done():
			return leasekeeper.Event{}, context.Cause(ctx)
		}
	}
	ev, err := next()
	if err != nil {
		return err
	}
	show(ev)
	say("attached key %s to lease %x (TTL %v); another client watches it", holdingKey, int64(lease.ID()), ttl)

	e.CutOff(cli)
	say("cut the keeper's client off from every member (its process keeps running)")

	// Follow both sides until the keeper has declared the lease lost and
	// the other client has seen the server delete the key.
	var lostAt, deletedAt time.Time
	for lostAt.IsZero() || deletedAt.IsZero() {
		select {
		case ev, ok := <-events:
			if !ok {
				return fmt.Errorf("the keeper closed")
			}
			show(ev)
			if ev.State == leasekeeper.Lost && lostAt.IsZero() {
				lostAt = ev.At
			}
		case resp, ok := <-w.C:
			if !ok {
				return fmt.Errorf("watching %s: %w", holdingKey, w.Err())
			}
			for _, wev := range resp.Events {
				if wev.Type != clientv3.EventTypeDelete || !deletedAt.IsZero() {
					continue
				}
				deletedAt = time.Now()
				if lostAt.IsZero() {
					// Only a process pause, or an etcd leader that revoked
					// leases on a stale view after one, can do this.
					return fmt.Errorf("the server deleted %s before the keeper declared its lease lost", holdingKey)
				}
				say("other client: the server deleted %s (lease expired) — %v after the keeper declared it lost",
					holdingKey, deletedAt.Sub(lostAt).Round(time.Millisecond))
			}
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}

	e.Restore(cli)
	say("restored the client")
	for {
		ev, err := next()
		if err != nil {
			return err
		}
		show(ev)
		if ev.State == leasekeeper.Reconnected {
			say("the old lease stays lost (%v); holdings start over on lease %x", lease.Err() != nil, int64(ev.Lease))
			return nil
		}
	}
}
