package pubsub

import (
	"context"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// trimBatch is how many slots one trim transaction reads or deletes: well
// under etcd's default of 128 operations per transaction.
const trimBatch = 64

// trimmer deletes messages older than their topic's age limit, for the
// topics its Hub published to. One goroutine per Hub, started by the first
// publish to a topic with an age limit and joined by Hub.Close.
type trimmer struct {
	hub    *Hub
	cancel context.CancelFunc
	done   chan struct{}
	wake   chan struct{} // a topic was added

	mu     sync.Mutex // protects topics
	topics map[string]*trimState
}

type trimState struct {
	k      keys
	maxAge time.Duration
	// from is the lowest sequence number that may still be in the ring
	// untrimmed, so each pass starts where the last one stopped instead of
	// re-reading the whole ring. Owned by the trimmer goroutine.
	from uint64
}

// trimTopic makes sure the Hub's trimmer looks after k.
func (h *Hub) trimTopic(k keys, maxAge time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	if h.trim == nil {
		ctx, cancel := context.WithCancel(context.Background())
		h.trim = &trimmer{hub: h, cancel: cancel, done: make(chan struct{}), wake: make(chan struct{}, 1), topics: map[string]*trimState{}}
		go h.trim.run(ctx)
	}
	t := h.trim
	t.mu.Lock()
	if _, ok := t.topics[k.topic]; !ok {
		t.topics[k.topic] = &trimState{k: k, maxAge: maxAge}
		select {
		case t.wake <- struct{}{}:
		default:
		}
	}
	t.mu.Unlock()
}

func (t *trimmer) stop() {
	t.cancel()
	<-t.done
}

// period is how often the trimmer runs: a quarter of the shortest age limit
// (so a message outlives its limit by at most about a quarter of it), within
// 10 ms and one minute.
func (t *trimmer) period() time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := time.Minute
	for _, ts := range t.topics {
		p = min(p, ts.maxAge/4)
	}
	return max(p, 10*time.Millisecond)
}

func (t *trimmer) run(ctx context.Context) {
	defer close(t.done)
	for {
		timer := time.NewTimer(t.period())
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-t.wake:
			timer.Stop()
			continue
		case <-timer.C:
		}
		t.mu.Lock()
		states := make([]*trimState, 0, len(t.topics))
		for _, ts := range t.topics {
			states = append(states, ts)
		}
		t.mu.Unlock()
		for _, ts := range states {
			// A failed pass is retried on the next tick; trimming late only
			// keeps messages a little longer.
			_ = t.trimOnce(ctx, ts)
		}
	}
}

// trimOnce deletes, oldest first, the messages of one topic that are past
// its age limit. It reads the head, then the ring's slots in sequence order
// from where the last pass stopped, trimBatch at a time, and stops at the
// first message still young enough. Each delete is guarded by the slot's
// ModRevision, so a slot that a publisher has just overwritten is left alone.
func (t *trimmer) trimOnce(ctx context.Context, ts *trimState) error {
	cli := t.hub.cli
	resp, err := cli.Get(ctx, ts.k.head)
	if err != nil {
		return err
	}
	if len(resp.Kvs) == 0 {
		ts.from = 0
		return nil
	}
	hd, err := decodeHead(resp.Kvs[0].Value)
	if err != nil {
		return err
	}
	oldest := uint64(1)
	if hd.seq > hd.count {
		oldest = hd.seq - hd.count + 1
	}
	if ts.from < oldest || ts.from > hd.seq+1 {
		ts.from = oldest
	}
	cutoff := time.Now().Add(-ts.maxAge).UnixNano()
	for ts.from <= hd.seq {
		end := min(ts.from+trimBatch-1, hd.seq)
		var gets []clientv3.Op
		for seq := ts.from; seq <= end; seq++ {
			gets = append(gets, clientv3.OpGet(ts.k.slot(seq, hd.count)))
		}
		r, err := cli.Txn(ctx).Then(gets...).Commit()
		if err != nil {
			return err
		}
		var cmps []clientv3.Cmp
		var dels []clientv3.Op
		young := false
		for i, seq := 0, ts.from; seq <= end; i, seq = i+1, seq+1 {
			kvs := r.Responses[i].GetResponseRange().GetKvs()
			if len(kvs) == 0 {
				continue // trimmed already
			}
			env, err := decodeEnvelope(kvs[0].Value)
			if err != nil || env.seq != seq {
				continue // foreign, or already a newer message: not ours to trim
			}
			if env.unixNs > cutoff {
				young = true
				end = seq - 1
				break
			}
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(string(kvs[0].Key)), "=", kvs[0].ModRevision))
			dels = append(dels, clientv3.OpDelete(string(kvs[0].Key)))
		}
		if len(dels) > 0 {
			// If a publisher overwrote one of these slots meanwhile, the
			// whole batch is skipped; the next pass reads it again.
			d, err := cli.Txn(ctx).If(cmps...).Then(dels...).Commit()
			if err != nil {
				return err
			}
			if !d.Succeeded {
				return nil
			}
		}
		ts.from = end + 1
		if young {
			return nil
		}
	}
	return nil
}
