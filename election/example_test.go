package election_test

import (
	"context"
	"fmt"
	"time"

	"github.com/concordkit/concord/election"
	"github.com/concordkit/concord/leasekeeper"
)

func ExampleElection_Campaign() {
	ctx := context.Background()
	k, err := leasekeeper.New(ctx, cluster.Client(), leasekeeper.WithTTL(2*time.Second))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer k.Close(ctx)

	e := election.New(k, "examples/billing")
	if _, err := e.Leader(ctx); err != nil {
		fmt.Println(err)
	}
	t, err := e.Campaign(ctx, "host-a")
	if err != nil {
		fmt.Println(err)
		return
	}
	l, _ := e.Leader(ctx)
	fmt.Println("leader:", l.Value, "token matches:", l.Token == t.Token())
	// Work under t.Context(); fence writes with t.Guard().
	if err := t.Resign(ctx); err != nil {
		fmt.Println(err)
	}
	fmt.Println(context.Cause(t.Context()))
	// Output:
	// election: no leader
	// leader: host-a token matches: true
	// election: term resigned
}
