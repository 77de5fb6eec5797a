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
)

// Watch is one watch with no start revision, so that etcd syncs it at once
// instead of in its 100 ms unsynced-watcher loop. It carries
// WithRequireLeader (a watch on a member cut off from the leader fails
// instead of waiting for events that will not come) and WithCreatedNotify
// (the creation revision tells the caller whether a read must close the gap
// since its last one).
type Watch struct {
	cli  *clientv3.Client
	key  string
	opts []clientv3.OpOption

	cancel context.CancelFunc
	// Ch delivers the watch's responses.
	Ch clientv3.WatchChan
	// Created is for the caller to set once the watch reported its creation
	// and any gap before it was closed by a read: from then on the watch
	// delivers every change after the last read, in order. Start and
	// Restart clear it.
	Created bool
}

// Start watches key with opts (WithPrefix for a prefix, WithFilterPut to
// receive deletions only, ...).
func Start(cli *clientv3.Client, key string, opts ...clientv3.OpOption) *Watch {
	w := &Watch{cli: cli, key: key, opts: opts}
	w.start()
	return w
}

func (w *Watch) start() {
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(context.Background()))
	w.cancel = cancel
	w.Created = false
	w.Ch = w.cli.Watch(ctx, w.key, append([]clientv3.OpOption{clientv3.WithCreatedNotify()}, w.opts...)...)
}

// Restart replaces a failed watch with a new one on the same keys.
func (w *Watch) Restart() {
	w.cancel()
	w.start()
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
// continuous while idle, so a reused watch needs no read at all: its user
// skips events at or below its own read's revision. Idle watches are closed
// after IdleTimeout, so a dropped recipe value leaves nothing open. A Pool is
// safe for concurrent use.
type Pool struct {
	cli  *clientv3.Client
	key  string
	opts []clientv3.OpOption

	mu   sync.Mutex // protects idle
	idle []*pooled
}

type pooled struct {
	w     *Watch
	timer *time.Timer
}

// NewPool returns a pool of watches on key with opts, as Start makes them.
func NewPool(cli *clientv3.Client, key string, opts ...clientv3.OpOption) *Pool {
	return &Pool{cli: cli, key: key, opts: opts}
}

// Get returns an idle watch, or a new one.
func (p *Pool) Get() *Watch {
	p.mu.Lock()
	defer p.mu.Unlock()
	for n := len(p.idle); n > 0; n = len(p.idle) {
		e := p.idle[n-1]
		p.idle = p.idle[:n-1]
		if e.timer.Stop() {
			return e.w
		}
		// The idle timer fired and is closing this one.
	}
	return Start(p.cli, p.key, p.opts...)
}

// Put gives a watch back for reuse, or stops it if it is not known good
// (Created unset) or the pool is full.
func (p *Pool) Put(w *Watch) {
	if !w.Created {
		w.Stop()
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.idle) >= maxIdle {
		w.Stop()
		return
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
