// Package guard applies writes to etcd only while a holding stands.
package guard

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Do commits ops in one transaction if every comparison in cmps holds. If
// one does not, nothing is written and Do returns lost (the recipe's ErrLost
// or ErrRevoked, wrapped by the caller as it sees fit). An etcd error comes
// back wrapped as it is.
func Do(ctx context.Context, cli *clientv3.Client, cmps []clientv3.Cmp, lost error, ops ...clientv3.Op) (*clientv3.TxnResponse, error) {
	resp, err := cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return nil, fmt.Errorf("guarded write: %w", err)
	}
	if !resp.Succeeded {
		return resp, lost
	}
	return resp, nil
}

// Held returns the comparisons that hold while key exists with the given
// create revision: the key was not deleted, expired with its lease, or
// replaced by a newer incarnation.
func Held(key string, createRev int64) []clientv3.Cmp {
	return []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", createRev)}
}
