package queue

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/codec"
)

// pauseRecord is the value of the pause marker.
type pauseRecord struct {
	At int64 `json:"at"` // when the queue was paused, Unix nanoseconds
}

// Pause stops the queue handing out tasks, from any process: once it
// returns, no claim lands (every claim transaction compares the pause
// marker), Dequeue waits and TryDequeue returns ErrPaused. Tasks claimed
// before run on and finish as usual; Enqueue goes on, so nothing is lost;
// tasks a worker's batch claimed and had not handed out are given back.
// Pausing a paused queue keeps the first pause. Cost: one transaction.
func (q *Queue) Pause(ctx context.Context) error {
	if q.err != nil {
		return q.err
	}
	val, err := json.Marshal(pauseRecord{At: time.Now().UnixNano()})
	if err != nil {
		return fmt.Errorf("queue: pause: %w", err)
	}
	k := q.keys.paused()
	if _, err := q.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, string(val))).Commit(); err != nil {
		return fmt.Errorf("queue: pause: %w", err)
	}
	return nil
}

// Resume undoes Pause: waiting Dequeue calls claim again as soon as their
// Queue's watch brings the change. Cost: one delete.
func (q *Queue) Resume(ctx context.Context) error {
	if q.err != nil {
		return q.err
	}
	if _, err := q.cli.Delete(ctx, q.keys.paused()); err != nil {
		return fmt.Errorf("queue: resume: %w", err)
	}
	return nil
}

// Paused reports since when the queue is paused (zero if it is not), read
// from etcd. Cost: one read.
func (q *Queue) Paused(ctx context.Context) (time.Time, error) {
	if q.err != nil {
		return time.Time{}, q.err
	}
	resp, err := q.cli.Get(ctx, q.keys.paused())
	if err != nil {
		return time.Time{}, fmt.Errorf("queue: paused: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return time.Time{}, nil
	}
	return decodePause(resp.Kvs[0].Value)
}

func decodePause(b []byte) (time.Time, error) {
	var r pauseRecord
	if err := codec.Strict(b, &r); err != nil || r.At <= 0 {
		return time.Time{}, fmt.Errorf("%w: pause marker %q", ErrCorrupt, b)
	}
	return time.Unix(0, r.At), nil
}
