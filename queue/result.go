package queue

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

var (
	// ErrNotFinished is returned by Result for a task that has not been
	// acknowledged yet (queued, delayed or running).
	ErrNotFinished = errors.New("queue: task not finished")
	// ErrNoResult is returned by Result for a task that finished without
	// a result: acknowledged with Ack, canceled, or dead.
	ErrNoResult = errors.New("queue: task finished without a result")
)

// Result returns the result an acknowledged task stored with AckResult,
// while its finished record is kept (WithRetention): etcd deletes both with
// their lease. A task that finished without a result (Ack, canceled, dead)
// is ErrNoResult; one not finished yet ErrNotFinished; one unknown or past
// its retention ErrNotFound. Cost: one read transaction.
func (q *Queue) Result(ctx context.Context, id string) ([]byte, error) {
	if q.err != nil {
		return nil, q.err
	}
	if !validID(id) {
		return nil, fmt.Errorf("queue: result: invalid task ID %q", id)
	}
	resp, err := q.cli.Txn(ctx).Then(
		clientv3.OpGet(q.keys.result(id)),
		clientv3.OpGet(q.keys.finished(id), clientv3.WithCountOnly()),
		clientv3.OpGet(q.keys.dead(id), clientv3.WithCountOnly()),
		clientv3.OpGet(q.keys.task(id), clientv3.WithCountOnly()),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("queue: result: %w", err)
	}
	r := func(i int) *etcdserverpb.RangeResponse { return resp.Responses[i].GetResponseRange() }
	switch {
	case len(r(0).GetKvs()) > 0:
		return r(0).GetKvs()[0].Value, nil
	case r(1).GetCount() > 0 || r(2).GetCount() > 0:
		return nil, fmt.Errorf("%w: %s", ErrNoResult, id)
	case r(3).GetCount() > 0:
		return nil, fmt.Errorf("%w: %s", ErrNotFinished, id)
	}
	return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
}
