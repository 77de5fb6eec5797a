package barrier

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/names"
	"github.com/concordkit/concord/internal/retry"
)

// Latch is a count-down latch shared through etcd: it opens once CountDown
// has been called count times, by any processes; Wait blocks until then. The
// count lives in etcd, not in a lease: it outlives its processes, and Delete
// removes it. Every process must construct the latch with the same count.
// Its methods are safe for concurrent use.
type Latch struct {
	cli   *clientv3.Client
	name  string
	key   string
	count int
	err   error
	tm    telemetry
}

// NewLatch returns a latch named name that opens after count CountDowns. It
// does no I/O; an invalid name or count ≤ 0 is reported by every call. The
// latch is created in etcd by the first CountDown.
func NewLatch(cli *clientv3.Client, name string, count int, opts ...Option) *Latch {
	l := &Latch{cli: cli, name: name, key: names.Prefix(name, "latch") + "count", count: count, tm: newTelemetry(opts)}
	switch {
	case names.Validate("barrier", name) != nil:
		l.err = names.Validate("barrier", name)
	case count <= 0:
		l.err = fmt.Errorf("barrier: latch %q: count %d: must be at least 1", name, count)
	case cli == nil:
		l.err = errors.New("barrier: nil client")
	}
	return l
}

// encodeCount and decodeCount give the latch's value: "remaining/initial".
func encodeCount(remaining, initial int) string {
	return strconv.Itoa(remaining) + "/" + strconv.Itoa(initial)
}

func decodeCount(b []byte) (remaining, initial int, err error) {
	r, i, ok := strings.Cut(string(b), "/")
	if ok {
		remaining, err = strconv.Atoi(r)
		if err == nil {
			initial, err = strconv.Atoi(i)
		}
	}
	if !ok || err != nil || initial < 1 || remaining < 0 || remaining > initial {
		return 0, 0, fmt.Errorf("%w: latch value %q", ErrCorrupt, b)
	}
	return remaining, initial, nil
}

// read returns the remaining count (count if the latch was never counted
// down), the value's mod revision (0 if absent) and the read's revision.
func (l *Latch) read(ctx context.Context) (remaining int, mod, rev int64, err error) {
	resp, err := l.cli.Get(ctx, l.key)
	if err != nil {
		return 0, 0, 0, err
	}
	if len(resp.Kvs) == 0 {
		return l.count, 0, resp.Header.Revision, nil
	}
	remaining, initial, err := decodeCount(resp.Kvs[0].Value)
	if err != nil {
		return 0, 0, 0, err
	}
	if initial != l.count {
		return 0, 0, 0, fmt.Errorf("%w: %q counts %d in etcd, %d here", ErrCountMismatch, l.name, initial, l.count)
	}
	return remaining, resp.Kvs[0].ModRevision, resp.Header.Revision, nil
}

// CountDown decrements the count; at zero the latch opens and every waiter
// returns. Counting down an open latch does nothing. Cost: usually one
// transaction (create-or-read), plus one compare-and-swap when the latch
// exists; a lost race is retried.
func (l *Latch) CountDown(ctx context.Context) error {
	if l.err != nil {
		return l.err
	}
	// First try to create the latch already counted down once.
	resp, err := l.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(l.key), "=", 0)).
		Then(clientv3.OpPut(l.key, encodeCount(l.count-1, l.count))).
		Else(clientv3.OpGet(l.key)).Commit()
	if err != nil {
		return fmt.Errorf("barrier: count down %q: %w", l.name, err)
	}
	if resp.Succeeded {
		return nil
	}
	bo := retry.Backoff{Min: time.Millisecond, Max: 100 * time.Millisecond}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	for {
		var remaining int
		var mod int64
		if len(kvs) == 1 {
			var initial int
			remaining, initial, err = decodeCount(kvs[0].Value)
			if err == nil && initial != l.count {
				err = fmt.Errorf("%w: %q counts %d in etcd, %d here", ErrCountMismatch, l.name, initial, l.count)
			}
			if err != nil {
				return fmt.Errorf("barrier: count down %q: %w", l.name, err)
			}
			mod = kvs[0].ModRevision
		} else {
			remaining, mod = l.count, 0 // deleted meanwhile: start over
		}
		if remaining == 0 {
			return nil
		}
		r, err := l.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(l.key), "=", mod)).
			Then(clientv3.OpPut(l.key, encodeCount(remaining-1, l.count))).
			Else(clientv3.OpGet(l.key)).Commit()
		if err != nil {
			return fmt.Errorf("barrier: count down %q: %w", l.name, err)
		}
		if r.Succeeded {
			return nil
		}
		kvs = r.Responses[0].GetResponseRange().Kvs
		if werr := bo.Wait(ctx); werr != nil {
			return werr
		}
	}
}

// Count returns how many CountDowns remain before the latch opens. Cost: one
// read.
func (l *Latch) Count(ctx context.Context) (int, error) {
	if l.err != nil {
		return 0, l.err
	}
	n, _, _, err := l.read(ctx)
	if err != nil {
		return 0, fmt.Errorf("barrier: count of %q: %w", l.name, err)
	}
	return n, nil
}

// Wait blocks until the latch is open or ctx ends. It returns ErrDeleted if
// the latch is deleted after Wait saw it exist. Cost: one read, then one
// watch; a read again only when the watch had to be opened again.
func (l *Latch) Wait(ctx context.Context) (err error) {
	if l.err != nil {
		return l.err
	}
	ctx, end := l.tm.span(ctx, "latch", l.name)
	defer func() { end(0, err) }()
	existed := false
	err = until(ctx, l.cli, l.key, func(ctx context.Context) (bool, int64, error) {
		n, mod, rev, err := l.read(ctx)
		if err != nil {
			return false, 0, err
		}
		if mod == 0 && existed {
			return false, 0, ErrDeleted
		}
		existed = existed || mod != 0
		return n == 0, rev, nil
	}, func(ev *clientv3.Event) (bool, error) {
		// Each change is judged as it was, not by a read after it: a latch
		// opened and deleted at once has still opened.
		if ev.Type == clientv3.EventTypeDelete {
			if existed {
				return false, ErrDeleted
			}
			return false, nil
		}
		remaining, initial, err := decodeCount(ev.Kv.Value)
		if err != nil {
			return false, err
		}
		if initial != l.count {
			return false, fmt.Errorf("%w: %q counts %d in etcd, %d here", ErrCountMismatch, l.name, initial, l.count)
		}
		existed = true
		return remaining == 0, nil
	})
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("barrier: wait on latch %q: %w", l.name, err)
	}
	return err
}

// Delete removes the latch from etcd, so the name can count again; waiters
// get ErrDeleted. Cost: one delete.
func (l *Latch) Delete(ctx context.Context) error {
	if l.err != nil {
		return l.err
	}
	if _, err := l.cli.Delete(ctx, l.key); err != nil {
		return fmt.Errorf("barrier: delete latch %q: %w", l.name, err)
	}
	return nil
}
