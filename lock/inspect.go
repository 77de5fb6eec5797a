package lock

import (
	"context"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/guard"
	"github.com/concordkit/concord/internal/names"
)

// Entry is one request in a lock's queue.
type Entry struct {
	Key   string
	Value string           // the requester's WithValue
	Token int64            // create revision: place in the queue and fencing token
	Lease clientv3.LeaseID // the requester's lease
	// Since is when the request was made, by the requester's clock. For the
	// holder that is when it asked, not when it was granted.
	Since time.Time
	// Reader is true for a reader of an RWMutex.
	Reader bool
}

// Info is a snapshot of a lock's queue.
type Info struct {
	Holder *Entry // nil when the lock is free; the first of Holders
	// Holders are all who hold the lock: one for a Mutex; for an RWMutex
	// its writer, or the readers that asked before the first writer.
	Holders  []Entry
	Waiters  []Entry // in the order they asked
	Revision int64   // etcd revision of the snapshot
}

// Inspect reads the queue of the Mutex named name in one linearizable read:
// the holder and the waiters in order. It writes nothing.
func Inspect(ctx context.Context, cli *clientv3.Client, name string) (*Info, error) {
	if err := names.Validate("lock", name); err != nil {
		return nil, err
	}
	if err := guard.CheckClient("lock", cli); err != nil {
		return nil, err
	}
	kvs, rev, err := readQueue(ctx, cli, names.Prefix(name, "lock")+"q/")
	if err != nil {
		return nil, err
	}
	info := &Info{Revision: rev}
	for i, kv := range kvs {
		if !requestKeyOK(names.Prefix(name, "lock")+"q/", string(kv.Key), false) {
			return nil, fmt.Errorf("%w: key %s is no request of a Mutex", ErrCorrupt, kv.Key)
		}
		e, err := entryOf(kv)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			info.Holders = []Entry{e}
		} else {
			info.Waiters = append(info.Waiters, e)
		}
	}
	info.setHolder()
	return info, nil
}

// InspectRWMutex reads the queue of the RWMutex named name in one
// linearizable read: its holders (the writer, or the readers that asked
// before the first writer) and the waiters in the order they asked. It
// writes nothing.
func InspectRWMutex(ctx context.Context, cli *clientv3.Client, name string) (*Info, error) {
	if err := names.Validate("lock", name); err != nil {
		return nil, err
	}
	if err := guard.CheckClient("lock", cli); err != nil {
		return nil, err
	}
	queue := names.Prefix(name, "rwlock") + "q/"
	kvs, rev, err := readQueue(ctx, cli, queue)
	if err != nil {
		return nil, err
	}
	info := &Info{Revision: rev}
	writerAhead := false
	for i, kv := range kvs {
		e, err := entryOf(kv)
		if err != nil {
			return nil, err
		}
		if e.Reader, err = rwReader(queue, e.Key); err != nil {
			return nil, err
		}
		switch {
		case e.Reader && !writerAhead, i == 0:
			info.Holders = append(info.Holders, e)
		default:
			info.Waiters = append(info.Waiters, e)
		}
		writerAhead = writerAhead || !e.Reader
	}
	info.setHolder()
	return info, nil
}

func (info *Info) setHolder() {
	if len(info.Holders) > 0 {
		info.Holder = &info.Holders[0]
	}
}

func readQueue(ctx context.Context, cli *clientv3.Client, queue string) ([]*mvccpb.KeyValue, int64, error) {
	resp, err := cli.Get(ctx, queue, clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
	if err != nil {
		return nil, 0, fmt.Errorf("lock: read queue: %w", err)
	}
	return resp.Kvs, resp.Header.Revision, nil
}

func entryOf(kv *mvccpb.KeyValue) (Entry, error) {
	at, v, err := decodeValue(kv.Value)
	if err != nil {
		return Entry{}, fmt.Errorf("%w (key %s)", err, kv.Key)
	}
	return Entry{Key: string(kv.Key), Value: v, Token: kv.CreateRevision, Lease: clientv3.LeaseID(kv.Lease), Since: at}, nil
}
