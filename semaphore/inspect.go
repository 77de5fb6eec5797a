package semaphore

import (
	"context"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/guard"
	"github.com/concordkit/concord/internal/names"
)

// Entry is one request in a semaphore's queue.
type Entry struct {
	Key   string
	N     int              // permits asked for
	Value string           // the requester's WithValue
	Token int64            // create revision: place in the queue and fencing token
	Lease clientv3.LeaseID // the requester's lease
	Since time.Time        // when the request was made, by the requester's clock
}

// Info is a snapshot of a semaphore.
type Info struct {
	Limit int // the stored limit; 0 if none is stored
	// Holders are the requests the FIFO rule grants at this limit: each
	// fits with everything before it. Permits granted under a larger
	// earlier limit are listed as waiters if they no longer fit.
	Holders  []Entry
	Waiters  []Entry
	InUse    int   // permits held by Holders
	Revision int64 // etcd revision of the snapshot
}

// Inspect reads the semaphore named name in one linearizable read. It
// writes nothing. A value concord did not write is reported as ErrCorrupt.
func Inspect(ctx context.Context, cli *clientv3.Client, name string) (*Info, error) {
	if err := names.Validate("semaphore", name); err != nil {
		return nil, err
	}
	if err := guard.CheckClient("semaphore", cli); err != nil {
		return nil, err
	}
	prefix := names.Prefix(name, "semaphore")
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
	if err != nil {
		return nil, fmt.Errorf("semaphore: inspect: %w", err)
	}
	info := &Info{Revision: resp.Header.Revision}
	var queue []Entry
	for _, kv := range resp.Kvs {
		k := string(kv.Key)
		switch {
		case k == prefix+"limit":
			if info.Limit, err = decodeLimit(kv.Value); err != nil {
				return nil, err
			}
		case strings.HasPrefix(k, prefix+"q/"):
			n, at, v, err := decodePermit(kv.Value)
			if err != nil {
				return nil, fmt.Errorf("%w (key %s)", err, k)
			}
			queue = append(queue, Entry{Key: k, N: n, Value: v, Token: kv.CreateRevision, Lease: clientv3.LeaseID(kv.Lease), Since: at})
		default:
			return nil, fmt.Errorf("%w: unknown key %s", ErrCorrupt, k)
		}
	}
	granting := true
	for _, e := range queue {
		if granting && info.InUse+e.N <= info.Limit {
			info.Holders = append(info.Holders, e)
			info.InUse += e.N
			continue
		}
		granting = false
		info.Waiters = append(info.Waiters, e)
	}
	return info, nil
}
