package pubsub

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel/metric"

	"github.com/concordkit/concord/internal/guard"
	"github.com/concordkit/concord/internal/names"
)

// Subscription delivers one topic's messages and gaps in revision order. Its
// methods are safe for concurrent use; events go to whichever Next call
// takes them. A subscription ends when the context given to Subscribe ends
// (Next then returns that context's cause), when Close is called, or when its
// Hub is closed.
type Subscription struct {
	hub      *Hub
	feed     *feed
	topic    string
	buffer   int
	attrs    metric.MeasurementOption // metric attributes of the topic
	stopCtx  func() bool              // cancels the AfterFunc that ends us with ctx
	released chan struct{}            // closed once we have left the feed
	leaving  sync.Once                // leaves the feed once

	mu       sync.Mutex // protects everything below
	minRev   int64      // live events below this are not ours
	backlog  []Event    // catch-up from the ring, served first
	queue    []Event    // live events, at most buffer
	overflow *Gap       // live events dropped while queue was full
	lostKnow bool       // overflow.Lost counts every dropped message
	notify   chan struct{}
	closed   bool
	err      error
}

// Subscribe starts a subscription to topic from the given point and returns
// once it is registered: a message published after Subscribe returns is
// delivered (or reported in a Gap). It costs no etcd request when the Hub
// already watches the topic and from is FromLatest; the first subscription
// to a topic opens its watch (one round trip), and FromRevision or
// FromOldest read the topic's retained messages once (one round trip per
// 512 retained messages); FromRevision also reads the topic's head as of
// the revision before it (one more round trip), to tell which message came
// last before it.
//
// A subscription from a revision or from the oldest message holds the
// retained messages it has still to deliver in memory, at most the topic's
// retention count.
func (h *Hub) Subscribe(ctx context.Context, topic string, from From, opts ...SubscribeOption) (*Subscription, error) {
	if err := names.Validate("pubsub", topic); err != nil {
		return nil, err
	}
	if err := guard.CheckClient("pubsub", h.cli); err != nil {
		return nil, err
	}
	cfg := subConfig{buffer: DefaultBuffer}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.buffer < 1 {
		return nil, fmt.Errorf("pubsub: buffer %d: must be at least 1", cfg.buffer)
	}
	if from.kind == fromRevision && from.rev < 1 {
		return nil, fmt.Errorf("pubsub: subscribe from revision %d: revisions start at 1", from.rev)
	}
	if err := ctx.Err(); err != nil {
		return nil, context.Cause(ctx)
	}
	k := keysFor(topic)
	f, err := h.acquire(k)
	if err != nil {
		return nil, err
	}
	s := &Subscription{
		hub:      h,
		feed:     f,
		topic:    topic,
		buffer:   cfg.buffer,
		attrs:    topicAttrs(topic),
		released: make(chan struct{}),
		notify:   make(chan struct{}, 1),
	}
	if err := f.waitReady(ctx); err != nil {
		close(s.released)
		h.release(f)
		return nil, err
	}
	pos, ok := f.join(s, from)
	if !ok {
		close(s.released)
		h.release(f)
		if f.err != nil {
			return nil, f.err
		}
		return nil, ErrHubClosed
	}
	s.stopCtx = context.AfterFunc(ctx, func() { s.end(context.Cause(ctx)) })

	if from.kind != fromLatest && (from.kind == fromOldest || from.rev <= pos) {
		if err := s.catchUp(ctx, k, from, pos); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// catchUp queues the retained messages from `from` up to pos, after which
// the feed delivers live.
func (s *Subscription) catchUp(ctx context.Context, k keys, from From, pos int64) error {
	h := s.hub
	// The read is linearizable, so it is at or past pos.
	snap, err := readRing(ctx, h.cli, k)
	if err != nil {
		return err
	}
	lo := from.rev
	if from.kind == fromOldest {
		lo = pos + 1
		if len(snap.msgs) > 0 {
			lo = snap.msgs[0].rev
		}
	}
	// Which message came last before lo? The head at lo-1 says, if etcd
	// still has that revision; then the gap (if any) is exact. Otherwise a
	// run of lost messages that straddles lo is reported whole.
	var afterSeq uint64
	var afterRev int64
	if from.kind == fromRevision && lo > 1 {
		afterSeq, afterRev, err = seqBefore(ctx, h, k, lo)
		if err != nil {
			return err
		}
	}
	backlog := plan(s.topic, snap, afterSeq, afterRev, lo, pos, GapTrimmed)
	s.mu.Lock()
	s.backlog = append(backlog, s.backlog...)
	s.mu.Unlock()
	s.signal()
	return nil
}

// seqBefore returns the sequence number of the last message published before
// revision rev, with rev-1, read from the head's history; 0, 0 when that
// history was compacted.
func seqBefore(ctx context.Context, h *Hub, k keys, rev int64) (uint64, int64, error) {
	resp, err := h.cli.Get(ctx, k.head, clientv3.WithRev(rev-1))
	switch {
	case errors.Is(err, rpctypes.ErrCompacted):
		return 0, 0, nil
	case err != nil:
		return 0, 0, fmt.Errorf("pubsub: read topic %q at revision %d: %w", k.topic, rev-1, err)
	case len(resp.Kvs) == 0:
		return 0, rev - 1, nil
	}
	hd, err := decodeHead(resp.Kvs[0].Value)
	if err != nil {
		// An old corrupt head tells nothing; be conservative.
		return 0, 0, nil
	}
	return hd.seq, rev - 1, nil
}

// Next returns the next event, waiting for one until ctx ends. After the
// subscription ended it returns ErrClosed, ErrHubClosed or the cause of the
// context given to Subscribe; events not yet taken are dropped then.
func (s *Subscription) Next(ctx context.Context) (Event, error) {
	for {
		s.mu.Lock()
		if s.closed {
			err := s.err
			s.mu.Unlock()
			return Event{}, err
		}
		var ev Event
		switch {
		case len(s.backlog) > 0:
			ev, s.backlog = s.backlog[0], s.backlog[1:]
		case len(s.queue) > 0:
			ev = s.queue[0]
			s.queue[0] = Event{}
			s.queue = s.queue[1:]
		case s.overflow != nil:
			ev = Event{Gap: s.overflow}
			s.overflow = nil
		}
		s.mu.Unlock()
		if ev.Message != nil || ev.Gap != nil {
			s.hub.metrics.delivered(ctx, s.attrs, s.topic, ev)
			return ev, nil
		}
		select {
		case <-s.notify:
		case <-ctx.Done():
			return Event{}, context.Cause(ctx)
		}
	}
}

// Close ends the subscription and returns once it has left its Hub (the
// topic's watch is stopped and joined if this was its last subscription).
// Close is idempotent.
func (s *Subscription) Close() {
	if s.stopCtx != nil {
		s.stopCtx()
	}
	s.end(ErrClosed)
	<-s.released
}

// end marks the subscription ended with err (unless it ended already) and
// leaves the feed.
func (s *Subscription) end(err error) {
	s.finish(err)
	s.leaving.Do(func() {
		s.feed.leave(s)
		s.hub.release(s.feed)
		close(s.released)
	})
}

// finish marks the subscription ended with err unless it ended already, and
// wakes its readers.
func (s *Subscription) finish(err error) {
	s.mu.Lock()
	if !s.closed {
		s.closed, s.err = true, err
		s.backlog, s.queue, s.overflow = nil, nil, nil
	}
	s.mu.Unlock()
	s.signal()
}

func (s *Subscription) signal() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// push queues a live event from the feed. It never blocks: a full queue
// turns the event into (part of) an overflow gap. Called with the feed's
// lock held, so events arrive in revision order.
func (s *Subscription) push(ev Event) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	if ev.Message != nil && ev.Message.Rev < s.minRev {
		s.mu.Unlock()
		return
	}
	if ev.Gap != nil {
		if ev.Gap.To < s.minRev {
			s.mu.Unlock()
			return
		}
		if ev.Gap.From < s.minRev {
			g := *ev.Gap
			g.From, g.Lost = s.minRev, 0
			ev.Gap = &g
		}
	}
	if s.overflow != nil && len(s.queue) < s.buffer {
		// Room again: the gap goes first, then what follows it.
		s.queue = append(s.queue, Event{Gap: s.overflow})
		s.overflow = nil
	}
	if s.overflow == nil && len(s.queue) < s.buffer {
		s.queue = append(s.queue, ev)
		s.mu.Unlock()
		s.signal()
		return
	}
	from, to, lost, known := ev.rev(), ev.rev(), uint64(1), true
	if ev.Gap != nil {
		from, lost, known = ev.Gap.From, ev.Gap.Lost, ev.Gap.Lost > 0
	}
	if s.overflow == nil {
		s.overflow = &Gap{From: from, To: to, Reason: GapOverflow}
		s.lostKnow = true
	}
	s.overflow.To = to
	s.lostKnow = s.lostKnow && known
	if s.lostKnow {
		s.overflow.Lost += lost
	} else {
		s.overflow.Lost = 0
	}
	s.mu.Unlock()
}
