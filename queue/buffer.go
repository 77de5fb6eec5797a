package queue

import (
	"context"
	"slices"
	"time"

	"github.com/concordkit/concord/leasekeeper"
)

// takeBufferedUnlessPaused hands out the first task a batch claimed for
// lease, dropping buffered tasks whose claim was lost meanwhile; while the
// queue is paused it hands out none.
func (ix *index) takeBufferedUnlessPaused(lease *leasekeeper.Lease) *Task {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if ix.paused {
		return nil
	}
	for i := 0; i < len(ix.buffered); i++ {
		t := ix.buffered[i]
		if t.Context().Err() != nil {
			ix.buffered = slices.Delete(ix.buffered, i, i+1)
			if ix.tasks[t.ID] == t {
				delete(ix.tasks, t.ID)
			}
			i--
			continue
		}
		if t.Lease() == lease.ID() {
			ix.buffered = slices.Delete(ix.buffered, i, i+1)
			return t
		}
	}
	return nil
}

func (ix *index) buffer(ts []*Task) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	now := time.Now()
	for _, t := range ts {
		t.buffered = now
	}
	ix.buffered = append(ix.buffered, ts...)
}

// bufferHold is how long a batch-claimed task waits in the buffer for a
// Dequeue of this Queue before it is given back for other workers: a
// process that stops dequeuing without closing its Queue must not sit on
// tasks.
const bufferHold = 500 * time.Millisecond

// releaseStale gives back buffered tasks older than bufferHold. It runs on
// the index goroutine, between watch events.
func (ix *index) releaseStale(ctx context.Context) {
	ix.mu.Lock()
	var stale []*Task
	now := time.Now()
	kept := ix.buffered[:0]
	for _, t := range ix.buffered {
		if now.Sub(t.buffered) > bufferHold {
			stale = append(stale, t)
		} else {
			kept = append(kept, t)
		}
	}
	clear(ix.buffered[len(kept):])
	ix.buffered = kept
	ix.mu.Unlock()
	for _, t := range stale {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if err := t.release(rctx); err != nil && outcomeUnknown(err) && t.Context().Err() == nil {
			ix.addGiveBack(giveBack{task: t})
		}
		cancel()
	}
}

// drainBuffered removes and returns every buffered task.
func (ix *index) drainBuffered() []*Task {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ts := ix.buffered
	ix.buffered = nil
	return ts
}
