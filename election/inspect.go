package election

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/guard"
	"github.com/concordkit/concord/internal/names"
)

// LeaderOf returns the current leader of the election called name, or
// ErrNoLeader, with only a client: for tools that inspect an election
// without taking part (no lease is needed). Cost: one read.
func LeaderOf(ctx context.Context, cli *clientv3.Client, name string) (Leader, error) {
	if err := names.Validate("election", name); err != nil {
		return Leader{}, err
	}
	if err := guard.CheckClient("election", cli); err != nil {
		return Leader{}, err
	}
	resp, err := cli.Get(ctx, names.Prefix(name, kind), clientv3.WithFirstCreate()...)
	if err != nil {
		return Leader{}, fmt.Errorf("election: leader of %q: %w", name, err)
	}
	if len(resp.Kvs) == 0 {
		return Leader{Rev: resp.Header.Revision}, ErrNoLeader
	}
	if err := checkCandidate(names.Prefix(name, kind), resp.Kvs[0]); err != nil {
		return Leader{}, err
	}
	return leaderOf(resp.Kvs[0], resp.Header.Revision), nil
}

// Candidates returns every candidate of the election called name in the
// order they will lead: the first is the leader. Each has Rev set to the
// read's revision. Cost: one read of all candidates.
func Candidates(ctx context.Context, cli *clientv3.Client, name string) ([]Leader, error) {
	if err := names.Validate("election", name); err != nil {
		return nil, err
	}
	if err := guard.CheckClient("election", cli); err != nil {
		return nil, err
	}
	resp, err := cli.Get(ctx, names.Prefix(name, kind), clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
	if err != nil {
		return nil, fmt.Errorf("election: candidates of %q: %w", name, err)
	}
	out := make([]Leader, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		if err := checkCandidate(names.Prefix(name, kind), kv); err != nil {
			return nil, err
		}
		out = append(out, leaderOf(kv, resp.Header.Revision))
	}
	return out, nil
}

// ObserveOf is Observe for tools that watch an election without taking part:
// it needs only a client (no lease). The same guarantees and cost apply.
func ObserveOf(ctx context.Context, cli *clientv3.Client, name string) (<-chan Leader, func() error) {
	e := &Election{cli: cli, name: name, prefix: names.Prefix(name, kind)}
	e.err = names.Validate("election", name)
	if cli == nil && e.err == nil {
		e.err = fmt.Errorf("election: nil client")
	}
	return e.Observe(ctx)
}
