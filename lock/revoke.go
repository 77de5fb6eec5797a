package lock

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"go.etcd.io/etcd/api/v3/mvccpb"
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
	toks, err := release(ctx, cli, name, "lock", mutexHolder, false)
	if err != nil {
		return 0, err
	}
	return toks[0], nil
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
	toks, err := release(ctx, cli, name, "lock", mutexHolder, true)
	if err != nil {
		return 0, err
	}
	return toks[0], nil
}

// RequestReleaseRWMutex asks every current holder of the RWMutex named name
// (its writer, or the readers that asked before the first writer) to
// release it, as RequestRelease does for a Mutex. It returns the holders'
// tokens in queue order, or ErrNotHeld; on an error part-way through, the
// tokens already asked are returned with it.
//
// Cost: one read of the queue, and one transaction per 32 holders; one
// more read each time a holder leaves between the read and the write.
func RequestReleaseRWMutex(ctx context.Context, cli *clientv3.Client, name string) ([]int64, error) {
	return release(ctx, cli, name, "rwlock", rwHolders, false)
}

// ForceReleaseRWMutex takes the RWMutex named name away from every current
// holder, as ForceRelease does for a Mutex: their keys are deleted, their
// contexts canceled with ErrRevoked, and the requests behind them are
// granted in turn. Only those that held at the read are taken: a writer that
// was waiting behind forced readers is granted, not forced too. (If every
// one of them leaves by itself before it is reached, the queue is read
// afresh and whoever holds then is taken, as ForceRelease does when the
// holder of a Mutex changes under it.) It returns the tokens taken, in
// queue order, or ErrNotHeld. On an error part-way through, the tokens
// already taken are returned with it.
//
// Cost: one read of the queue, and one transaction per 32 holders; one
// more read each time a holder leaves between the read and the write.
func ForceReleaseRWMutex(ctx context.Context, cli *clientv3.Client, name string) ([]int64, error) {
	return release(ctx, cli, name, "rwlock", rwHolders, true)
}

// releaseBatch bounds the holders released in one transaction: each costs
// one comparison and up to two operations, within etcd's default limit of
// 128 operations per transaction.
const releaseBatch = 32

// mutexHolder reads a Mutex's holder: the oldest key of its queue.
func mutexHolder(ctx context.Context, cli *clientv3.Client, queue string) ([]*mvccpb.KeyValue, error) {
	resp, err := cli.Get(ctx, queue, clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend), clientv3.WithLimit(1))
	if err != nil {
		return nil, fmt.Errorf("lock: read holder: %w", err)
	}
	for _, kv := range resp.Kvs {
		if !requestKeyOK(queue, string(kv.Key), false) {
			return nil, fmt.Errorf("%w: key %s is no request of a Mutex", ErrCorrupt, kv.Key)
		}
		if _, err := entryOf(kv); err != nil {
			return nil, err
		}
	}
	return resp.Kvs, nil
}

// rwHolders reads an RWMutex's holders: its oldest request if that is a
// writer's, else the readers before the first writer. A key of another
// shape anywhere in the queue is reported, as by InspectRWMutex.
func rwHolders(ctx context.Context, cli *clientv3.Client, queue string) ([]*mvccpb.KeyValue, error) {
	kvs, _, err := readQueue(ctx, cli, queue)
	if err != nil {
		return nil, err
	}
	n := len(kvs)
	for i, kv := range kvs {
		reader, err := rwReader(queue, string(kv.Key))
		if err != nil {
			return nil, err
		}
		if _, err := entryOf(kv); err != nil {
			return nil, err
		}
		if !reader && n == len(kvs) {
			n = max(i, 1)
		}
	}
	return kvs[:n], nil
}

// rwReader tells a reader's request from a writer's by its key.
func rwReader(queue, key string) (bool, error) {
	if !requestKeyOK(queue, key, true) {
		return false, fmt.Errorf("%w: key %s is no request of an RWMutex", ErrCorrupt, key)
	}
	return key[len(queue)] == 'r', nil
}

// release writes a release request for each holder that holders reads, and
// with force deletes their keys in the same transaction. The holders are
// fixed by the first read that finds any: a transaction that fails because
// one of them went is retried for those still there, and only if none of
// them is left and none was released does it look for new holders.
func release(ctx context.Context, cli *clientv3.Client, name, kind string,
	holders func(context.Context, *clientv3.Client, string) ([]*mvccpb.KeyValue, error), force bool) ([]int64, error) {
	if err := names.Validate("lock", name); err != nil {
		return nil, err
	}
	if err := guard.CheckClient("lock", cli); err != nil {
		return nil, err
	}
	prefix := names.Prefix(name, kind)
	var targets map[int64]bool // tokens of the holders at the first read
	done := map[int64]bool{}
	var toks []int64
	finish := func(err error) ([]int64, error) {
		slices.Sort(toks)
		return toks, err
	}
	for {
		kvs, err := holders(ctx, cli, prefix+"q/")
		if err != nil {
			return finish(err)
		}
		if targets != nil {
			kvs = slices.DeleteFunc(kvs, func(kv *mvccpb.KeyValue) bool {
				return !targets[kv.CreateRevision] || done[kv.CreateRevision]
			})
			if len(kvs) == 0 && len(toks) > 0 {
				return finish(nil)
			}
		}
		if len(kvs) == 0 {
			if targets != nil {
				targets = nil // every holder went on its own: look afresh
				continue
			}
			return nil, ErrNotHeld
		}
		if targets == nil {
			targets = make(map[int64]bool, len(kvs))
			for _, kv := range kvs {
				targets[kv.CreateRevision] = true
			}
		}
		for len(kvs) > 0 {
			batch := kvs[:min(len(kvs), releaseBatch)]
			ok, err := releaseHolders(ctx, cli, prefix, batch, force)
			if err != nil {
				return finish(err)
			}
			if !ok {
				break // one of the batch went: read again
			}
			for _, kv := range batch {
				done[kv.CreateRevision] = true
				toks = append(toks, kv.CreateRevision)
			}
			kvs = kvs[len(batch):]
		}
		if len(kvs) == 0 {
			return finish(nil)
		}
	}
}

// releaseHolders writes the release requests of one batch of holders, and
// deletes their keys with force, only if all of them still hold. A holder's
// lease that just went reports as a failed comparison: its keys went with it.
func releaseHolders(ctx context.Context, cli *clientv3.Client, prefix string, batch []*mvccpb.KeyValue, force bool) (bool, error) {
	value := releaseRequest
	if force {
		value = releaseForce
	}
	var cmps []clientv3.Cmp
	var ops []clientv3.Op
	for _, kv := range batch {
		cmps = append(cmps, guard.Held(string(kv.Key), kv.CreateRevision)...)
		// The request lives on the holder's lease, so it never outlives
		// the holder; a forced release writes it in the same revision as
		// the delete, which tells the holder why its key went.
		ops = append(ops, clientv3.OpPut(releaseKey(prefix, kv.CreateRevision), value, clientv3.WithLease(clientv3.LeaseID(kv.Lease))))
		if force {
			ops = append(ops, clientv3.OpDelete(string(kv.Key)))
		}
	}
	resp, err := cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
	switch {
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("lock: release request: %w", err)
	}
	return resp.Succeeded, nil
}
