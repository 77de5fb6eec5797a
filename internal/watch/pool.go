package watch

import (
	"context"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// IdleTimeout is how long a pooled watch that nothing uses stays open for the
// next user.
const IdleTimeout = 2 * time.Second

// maxIdle bounds the idle watches kept per pool.
const maxIdle = 4

// Pool keeps the synced watches of finished acquisitions of one recipe value
// for the next ones: a busy lock keeps its watches open instead of opening
// and canceling one per acquisition, which costs the server (and, under
// contention, a read to close the gap before each new watch). A watch stays
// continuous while idle, so a reused watch needs no read: its user skips
// events at or below its own read's revision, unless Rev shows that another
// user took events (or saw a creation) after that read. Idle watches are
// stopped after IdleTimeout, so a dropped recipe value leaves nothing open;
// when the pool is full, the watch idle longest is stopped. A Pool is safe
// for concurrent use.
//
// A pool serves one key (Get) or any key with the same options (GetKey), for
// recipes that watch a different key each time, such as the key just ahead
// of a waiter.
type Pool struct {
	cli *clientv3.Client
	key string
	cfg Config

	mu   sync.Mutex // protects idle
	idle []*pooled  // longest idle first
}

type pooled struct {
	w     *Watch
	timer *time.Timer
}

// NewPool returns a pool of synced watches on key, opened with cfg (whose
// From must be 0).
func NewPool(cli *clientv3.Client, key string, cfg Config) *Pool {
	cfg.From, cfg.Exact = 0, false
	return &Pool{cli: cli, key: key, cfg: cfg}
}

// Get returns an idle watch on the pool's key, or a new one (ctx bounds its
// creation, as for Open).
func (p *Pool) Get(ctx context.Context) *Watch { return p.GetKey(ctx, p.key) }

// GetKey returns an idle watch on key, or a new one. The most recently
// returned idle watch is taken first.
func (p *Pool) GetKey(ctx context.Context, key string) *Watch {
	if w := p.takeIdle(key); w != nil {
		return w
	}
	// Not under mu: the creation waits for etcd.
	return Open(ctx, p.cli, key, p.cfg)
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
		// The idle timer fired and is stopping this one.
	}
	return nil
}

// Idle returns how many idle watches the pool keeps open.
func (p *Pool) Idle() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle)
}

// Put gives a watch back for reuse. A watch that has ended is dropped.
func (p *Pool) Put(w *Watch) {
	select {
	case <-w.done:
		return
	default:
	}
	var evicted *Watch
	defer func() {
		if evicted != nil {
			evicted.Stop() // not under mu: Stop joins the watch's goroutine
		}
	}()
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.idle) >= maxIdle {
		// The newest watch is the likeliest to be wanted next.
		old := p.idle[0]
		if old.timer.Stop() {
			evicted = old.w
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
