// Package prefixwatch keeps watches on a recipe's keys that etcd syncs at
// once and that outlive one acquisition: a lock or semaphore waiter learns of
// every change after its last read from one watch, with no request to etcd
// while it waits, and the next acquisition reuses the watch instead of
// opening a new one.
package prefixwatch

import (
	"context"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"
)

// Watch is one watch with no start revision, so that etcd syncs it at once
// instead of in its 100 ms unsynced-watcher loop. It carries
// WithRequireLeader (a watch on a member cut off from the leader fails
// instead of waiting for events that will not come) and WithCreatedNotify
// (the creation revision tells the caller whether a read must close the gap
// since its last one).
type Watch struct {
	cli    *clientv3.Client
	key    string
	opts   []clientv3.OpOption
	stream Stream

	cancel context.CancelFunc
	// Ch delivers the watch's responses.
	Ch clientv3.WatchChan
	// Created is for the caller to set once the watch reported its creation
	// and any gap before it was closed by a read: from then on the watch
	// delivers every change after the last read, in order. Start and
	// Restart clear it.
	Created bool
	// Rev is for the caller to raise to the revision of each event it takes
	// from Ch. A pooled watch may pass between callers that read at
	// different times: one whose last read is older than Rev has missed
	// events another took, and must read again before trusting the watch.
	Rev int64
}

// Key returns the key (or start of the range) the watch is on.
func (w *Watch) Key() string { return w.key }

// Start watches key with opts (WithPrefix for a prefix, WithFilterPut to
// receive deletions only, ...).
//
// The etcd client's Watch returns only once etcd has confirmed the watch,
// and a client that cannot reach any member (cut off, every member down)
// waits for that until it reconnects. ctx bounds this wait alone: if it
// ends first, the watch is canceled and Ch closes, as for any failed watch.
// Once started, the watch lives until Stop whatever becomes of ctx.
func Start(ctx context.Context, cli *clientv3.Client, key string, opts ...clientv3.OpOption) *Watch {
	return StartOn(ctx, Stream{}, cli, key, opts...)
}

// Stream names the gRPC watch stream a watch travels on. The etcd client
// multiplexes all watches whose contexts carry the same metadata onto one
// stream; Stream{} is the client's shared stream. A recipe that asks etcd
// for progress on its watches (RequestProgress) keeps them on a stream of
// their own: etcd answers such a request only when every watch on the
// stream is in step, and it answers on each watch of the stream after
// every event up to its revision.
type Stream struct{ name string }

// NewStream returns a stream of its own, named name.
func NewStream(name string) Stream { return Stream{name: name} }

// Context returns the context that puts a watch or a progress request on
// the stream. It carries WithRequireLeader.
func (s Stream) Context() context.Context {
	ctx := context.Background()
	if s.name != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "concord-watch-stream", s.name)
	}
	return clientv3.WithRequireLeader(ctx)
}

// StartOn is Start on the given stream.
func StartOn(ctx context.Context, st Stream, cli *clientv3.Client, key string, opts ...clientv3.OpOption) *Watch {
	w := &Watch{cli: cli, key: key, opts: opts, stream: st}
	w.start(ctx)
	return w
}

func (w *Watch) start(ctx context.Context) {
	wctx, cancel := context.WithCancel(w.stream.Context())
	w.cancel = cancel
	w.Created = false
	stop := context.AfterFunc(ctx, cancel)
	w.Ch = w.cli.Watch(wctx, w.key, append([]clientv3.OpOption{clientv3.WithCreatedNotify()}, w.opts...)...)
	stop()
}

// Restart replaces a failed watch with a new one on the same keys; ctx
// bounds the wait for etcd's confirmation, as for Start.
func (w *Watch) Restart(ctx context.Context) {
	w.cancel()
	w.start(ctx)
}

// Stop ends the watch.
func (w *Watch) Stop() { w.cancel() }

// IdleTimeout is how long a pooled watch that nothing uses stays open for the
// next user.
const IdleTimeout = 2 * time.Second

// maxIdle bounds the idle watches kept per pool.
const maxIdle = 4

// Pool keeps the watches of finished acquisitions of one recipe value for the
// next ones: a busy lock keeps its watches open instead of opening and
// canceling one per acquisition, which costs the server (and, under
// contention, a read to close the gap before each new watch). A watch stays
// continuous while idle, so a reused watch needs no read: its user skips
// events at or below its own read's revision, unless Rev shows that another
// user took events after that read. Idle watches are closed
// after IdleTimeout, so a dropped recipe value leaves nothing open; when the
// pool is full, the watch idle longest is closed. A Pool is safe for
// concurrent use.
//
// A pool serves one key (Get) or any key with the same options (GetKey), for
// recipes that watch a different key each time, such as the key just ahead
// of a waiter.
type Pool struct {
	cli    *clientv3.Client
	key    string
	opts   []clientv3.OpOption
	stream Stream

	mu   sync.Mutex // protects idle
	idle []*pooled  // longest idle first
}

type pooled struct {
	w     *Watch
	timer *time.Timer
}

// NewPool returns a pool of watches on key with opts, as Start makes them.
func NewPool(cli *clientv3.Client, key string, opts ...clientv3.OpOption) *Pool {
	return &Pool{cli: cli, key: key, opts: opts}
}

// NewPoolOn returns a pool whose watches travel on stream st.
func NewPoolOn(st Stream, cli *clientv3.Client, key string, opts ...clientv3.OpOption) *Pool {
	return &Pool{cli: cli, key: key, opts: opts, stream: st}
}

// Get returns an idle watch on the pool's key, or a new one (ctx bounds its
// start, as for Start).
func (p *Pool) Get(ctx context.Context) *Watch { return p.GetKey(ctx, p.key) }

// GetKey returns an idle watch on key, or a new one. The most recently
// returned idle watch is taken first. (A pool made for any key, with key
// "", must be used through GetKey.)
func (p *Pool) GetKey(ctx context.Context, key string) *Watch {
	if w := p.takeIdle(key); w != nil {
		return w
	}
	// Not under mu: the start waits for etcd.
	return StartOn(ctx, p.stream, p.cli, key, p.opts...)
}

func (p *Pool) takeIdle(key string) *Watch {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := len(p.idle) - 1; i >= 0; i-- {
		e := p.idle[i]
		if e.w.key != key {
			continue
		}
		p.idle = slices.Delete(p.idle, i, i+1)
		if e.timer.Stop() {
			return e.w
		}
		// The idle timer fired and is closing this one.
	}
	return nil
}

// Idle returns how many idle watches the pool keeps open.
func (p *Pool) Idle() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle)
}

// Put gives a watch back for reuse, or stops it if it is not known good
// (Created unset).
func (p *Pool) Put(w *Watch) {
	if !w.Created {
		w.Stop()
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.idle) >= maxIdle {
		// The newest watch is the likeliest to be wanted next.
		old := p.idle[0]
		if old.timer.Stop() {
			old.w.Stop()
		}
		p.idle = slices.Delete(p.idle, 0, 1)
	}
	e := &pooled{w: w}
	e.timer = time.AfterFunc(IdleTimeout, func() {
		p.mu.Lock()
		if i := slices.Index(p.idle, e); i >= 0 {
			p.idle = slices.Delete(p.idle, i, i+1)
		}
		p.mu.Unlock()
		w.Stop()
	})
	p.idle = append(p.idle, e)
}
