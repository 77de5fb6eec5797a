package pubsub

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/retry"
	"github.com/concordkit/concord/internal/watch"
)

// feed is a Hub's one watch on one topic's slots, fanned out to the topic's
// subscriptions. Its goroutine is started by startFeed and joined by stop.
type feed struct {
	hub    *Hub
	k      keys
	cancel context.CancelFunc
	done   chan struct{} // closed when run returns
	ready  chan struct{} // closed once the first watch is created
	refs   int           // users (subscriptions and joiners); protected by hub.mu
	err    error         // why run gave up; written before done is closed

	mu      sync.Mutex // protects subs, pos, lastSeq, stopped
	subs    map[*Subscription]struct{}
	pos     int64  // every event at or below pos has been pushed to subs
	lastSeq uint64 // seq of the last message pushed (0: none yet)
	stopped bool
}

func startFeed(h *Hub, k keys) *feed {
	ctx, cancel := context.WithCancel(context.Background())
	f := &feed{
		hub:    h,
		k:      k,
		cancel: cancel,
		done:   make(chan struct{}),
		ready:  make(chan struct{}),
		subs:   map[*Subscription]struct{}{},
	}
	go f.run(ctx)
	return f
}

// stop ends the feed and waits for its goroutine. Idempotent.
func (f *feed) stop() {
	f.mu.Lock()
	f.stopped = true
	f.mu.Unlock()
	f.cancel()
	<-f.done
}

func (f *feed) waitReady(ctx context.Context) error {
	select {
	case <-f.ready:
		return nil
	case <-f.done:
		if f.err != nil {
			return f.err
		}
		return ErrHubClosed
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// join registers s to receive every event after the feed's current
// position, which it returns.
func (f *feed) join(s *Subscription, from From) (int64, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return 0, false
	}
	switch from.kind {
	case fromLatest:
		s.minRev = f.pos + 1
	case fromRevision:
		s.minRev = from.rev
	}
	f.subs[s] = struct{}{}
	return f.pos, true
}

func (f *feed) leave(s *Subscription) {
	f.mu.Lock()
	delete(f.subs, s)
	f.mu.Unlock()
}

// run keeps one watch on the topic's slots until ctx ends.
//
// The first watch has no start revision, so etcd syncs it at once (a watch
// from an old revision waits for etcd's 100 ms unsynced loop); its creation
// revision becomes the position. internal/watch resumes a broken watch
// from the revision after the last it delivered (Exact), so etcd replays
// what was missed from its history. If that history was compacted, the
// ring is read instead: retained messages are delivered and those
// overwritten or trimmed meanwhile are reported as a gap, then watching
// resumes after the read.
func (f *feed) run(ctx context.Context) {
	defer close(f.done)
	bo := retry.WatchPolicy.New()
	started := false
	for ctx.Err() == nil {
		cfg := watch.Config{Exact: true, Options: []clientv3.OpOption{clientv3.WithPrefix()}}
		if started {
			f.mu.Lock()
			cfg = watch.Config{From: f.pos + 1, Options: cfg.Options}
			f.mu.Unlock()
		}
		f.hub.watches.Add(1)
		w := watch.Open(ctx, f.hub.cli, f.k.slots, cfg)
		err := f.consume(ctx, w, &started)
		w.Stop()
		f.hub.watches.Add(w.Restarts())
		if ctx.Err() != nil {
			return
		}
		if retry.PermissionDenied(err) {
			// Retrying cannot help: end the subscriptions with the reason.
			f.fail(fmt.Errorf("pubsub: watch %q: %w", f.k.topic, rpctypes.ErrPermissionDenied))
			return
		}
		if errors.Is(err, rpctypes.ErrCompacted) {
			if err := f.recover(ctx); err != nil && ctx.Err() == nil {
				_ = bo.Wait(ctx)
			}
			continue
		}
		_ = bo.Wait(ctx)
	}
}

// fail ends every subscription with err. They stay registered until they
// are closed (their Close then returns at once); the Hub forgets the feed so
// that a new subscription starts a new one.
func (f *feed) fail(err error) {
	f.err = err
	f.hub.mu.Lock()
	if f.hub.feeds[f.k.topic] == f {
		delete(f.hub.feeds, f.k.topic)
	}
	f.hub.mu.Unlock()
	f.mu.Lock()
	f.stopped = true
	for s := range f.subs {
		s.finish(err)
	}
	f.mu.Unlock()
}

// consume reads one watch until it ends for good, and returns why.
func (f *feed) consume(ctx context.Context, w *watch.Watch, started *bool) error {
	for {
		resp, err := w.Next(ctx)
		if err != nil {
			return err
		}
		if resp.Created {
			if !*started {
				f.mu.Lock()
				f.pos = resp.Header.Revision
				f.mu.Unlock()
				*started = true
				close(f.ready)
			}
			continue
		}
		f.deliver(resp.Events)
	}
}

// deliver pushes a watch response's events to every subscription.
func (f *feed) deliver(evs []*clientv3.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	// Events at or below the position were delivered already: the first
	// watch can report revisions up to its creation revision.
	floor := f.pos
	for _, e := range evs {
		rev := e.Kv.ModRevision
		if rev <= floor {
			continue
		}
		f.pos = max(f.pos, rev)
		if e.Type != mvccpb.PUT {
			continue // age trims and manual deletes: nothing to deliver
		}
		var ev Event
		env, err := decodeEnvelope(e.Kv.Value)
		if err != nil {
			ev = Event{Gap: &Gap{From: rev, To: rev, Reason: GapCorrupt}}
		} else {
			f.lastSeq = env.seq
			ev = Event{Message: toMessage(f.k.topic, rev, env)}
		}
		for s := range f.subs {
			s.push(ev)
		}
	}
}

// recover catches up from the ring after the watch's history was compacted.
func (f *feed) recover(ctx context.Context) error {
	snap, err := readRing(ctx, f.hub.cli, f.k)
	if err != nil {
		return fmt.Errorf("pubsub: recover %q after compaction: %w", f.k.topic, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if snap.rev <= f.pos {
		return nil
	}
	// Messages the ring shows at or below the position were delivered, even
	// if this feed never saw them (they came before its first watch).
	after := f.lastSeq
	for _, m := range snap.msgs {
		if m.rev <= f.pos {
			after = max(after, m.env.seq)
		}
	}
	for _, ev := range plan(f.k.topic, snap, after, f.pos, f.pos+1, snap.rev, GapCompacted) {
		for s := range f.subs {
			s.push(ev)
		}
	}
	if snap.hasHead {
		f.lastSeq = snap.head.seq
	}
	f.pos = snap.rev
	return nil
}
