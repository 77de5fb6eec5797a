package lock

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/guard"
	"github.com/concordkit/concord/internal/names"
)

// RequestRelease asks the current holder of the Mutex named name to release
// it: the holder's Revoked channel is closed. It returns the holder's token,
// or ErrNotHeld. The request is a key attached to the holder's lease and
// written only while that holder still holds, so it can never reach a later
// holder; it is deleted by the holder's Unlock, or with its lease.
//
// Cost: one read and one transaction.
func RequestRelease(ctx context.Context, cli *clientv3.Client, name string) (int64, error) {
	return release(ctx, cli, name, false)
}

// ForceRelease takes the Mutex named name away from its current holder: it
// deletes the holder's key, so the next waiter is granted, and the holder's
// context is canceled with a cause that errors.Is ErrRevoked (and ErrLost).
// It returns the token it took away, or ErrNotHeld.
//
// The holder learns of it from its watch, so a holder cut off from etcd may
// go on believing it holds until its lease is lost; only fenced writes
// (Guard, tokens) are safe from it. Cost: one read and one transaction.
func ForceRelease(ctx context.Context, cli *clientv3.Client, name string) (int64, error) {
	return release(ctx, cli, name, true)
}

func release(ctx context.Context, cli *clientv3.Client, name string, force bool) (int64, error) {
	if err := names.Validate("lock", name); err != nil {
		return 0, err
	}
	prefix := names.Prefix(name, "lock")
	for {
		resp, err := cli.Get(ctx, prefix+"q/", clientv3.WithPrefix(),
			clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend), clientv3.WithLimit(1))
		if err != nil {
			return 0, fmt.Errorf("lock: read holder: %w", err)
		}
		if len(resp.Kvs) == 0 {
			return 0, ErrNotHeld
		}
		holder := resp.Kvs[0]
		key, token := string(holder.Key), holder.CreateRevision
		value := releaseRequest
		ops := []clientv3.Op{}
		if force {
			value = releaseForce
		}
		// The request lives on the holder's lease, so it never outlives
		// the holder; a forced release writes it in the same revision as
		// the delete, which tells the holder why its key went.
		ops = append(ops, clientv3.OpPut(releaseKey(prefix, token), value, clientv3.WithLease(clientv3.LeaseID(holder.Lease))))
		if force {
			ops = append(ops, clientv3.OpDelete(key))
		}
		tresp, err := cli.Txn(ctx).If(guard.Held(key, token)...).Then(ops...).Commit()
		switch {
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			continue // the holder's lease just went; look again
		case err != nil:
			return 0, fmt.Errorf("lock: release request: %w", err)
		case !tresp.Succeeded:
			continue // the holder changed between the read and the write
		}
		return token, nil
	}
}
