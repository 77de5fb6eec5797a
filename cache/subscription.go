package cache

import (
	"slices"
	"strings"
)

// Subscription is a stream of batches from a cache, starting with a snapshot
// of its state. Close ends it.
//
// The cache never waits for a subscriber. Batches queue in a channel of
// WithBuffer places; when a batch finds it full, the subscriber has fallen
// behind by a whole buffer, and holding more for it would make its memory
// unbounded. The cache then drops every batch queued for it and queues one
// snapshot of its current state instead. The subscriber, applying batches in
// order, jumps from the last state it applied to the current one: it skips
// intermediate revisions but never sees a state etcd did not have.
type Subscription struct {
	c  *Cache
	ch chan Batch // sent to only under c.mu
}

// Subscribe starts a subscription. Its first batch is a snapshot of the
// current state; every later batch follows the previous one in revision
// order. On a closed cache the channel is closed at once.
func (c *Cache) Subscribe() *Subscription {
	s := &Subscription{c: c, ch: make(chan Batch, c.o.buffer)}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		close(s.ch)
		return s
	}
	s.ch <- c.snapshotLocked()
	c.subs[s] = struct{}{}
	return s
}

// C returns the channel of batches. It is closed by Close, or when the cache
// is closed.
func (s *Subscription) C() <-chan Batch { return s.ch }

// Close ends the subscription and closes its channel. It is idempotent.
func (s *Subscription) Close() {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	if _, ok := s.c.subs[s]; ok {
		delete(s.c.subs, s)
		close(s.ch)
	}
}

func (c *Cache) snapshotLocked() Batch {
	evs := make([]Event, 0, len(c.data))
	for _, kv := range c.data {
		evs = append(evs, Event{Type: Create, KV: *kv})
	}
	slices.SortFunc(evs, func(a, b Event) int { return strings.Compare(a.KV.Key, b.KV.Key) })
	return Batch{Revision: c.rev, Snapshot: true, Events: evs}
}

// publishLocked queues b for every subscriber without ever blocking.
func (c *Cache) publishLocked(b Batch) {
	c.lastPub = b.Revision
	var snap *Batch
	for s := range c.subs {
		select {
		case s.ch <- b:
			continue
		default:
		}
		// Full: drop what is queued (the subscriber may be taking some of
		// it right now; whatever it took precedes the snapshot) and queue
		// the current state. The cache is the only sender, under c.mu, so
		// the emptied channel has room.
	drain:
		for {
			select {
			case <-s.ch:
			default:
				break drain
			}
		}
		if snap == nil {
			sb := c.snapshotLocked()
			snap = &sb
		}
		s.ch <- *snap
	}
}
