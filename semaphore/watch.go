package semaphore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// The watch handling mirrors package lock's (recipes do not share
// internals, and internal/wait watches one predecessor, where a semaphore
// needs the whole queue): one watch on the semaphore's whole prefix with no
// start revision, reused across acquisitions.

func randomID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go ≥ 1.24)
	return hex.EncodeToString(b[:])
}

// watcher is one watch on a semaphore's whole prefix, with no start revision, so
// that etcd syncs it at once instead of in its 100 ms unsynced-watcher loop.
type watcher struct {
	cli    *clientv3.Client
	prefix string
	cancel context.CancelFunc
	ch     clientv3.WatchChan
	// created is set once the watch reported its creation and any gap
	// before it was closed by a read: from then on it delivers every change
	// after the last read, in order.
	created bool
}

func startWatch(cli *clientv3.Client, prefix string) *watcher {
	w := &watcher{cli: cli, prefix: prefix}
	w.start()
	return w
}

func (w *watcher) start() {
	// WithRequireLeader: a watcher on a member cut off from the leader fails
	// instead of waiting forever for events that will never come.
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(context.Background()))
	w.cancel = cancel
	w.created = false
	w.ch = w.cli.Watch(ctx, w.prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
}

func (w *watcher) restart() {
	w.cancel()
	w.start()
}

func (w *watcher) stop() { w.cancel() }

// idleWatch is how long a watch no acquisition uses stays open for the next.
const idleWatch = 2 * time.Second

// watchPool keeps the watches of finished acquisitions of one Semaphore value for
// the next ones: a busy semaphore keeps its watches open instead of opening and
// canceling one per acquisition, which costs the server (and, under
// contention, a read to close the gap before each new watch). A watch stays
// continuous while idle, so a reused watch needs no read at all: events at or
// below the acquire transaction's revision are skipped. Idle watches are
// closed after idleWatch, so a dropped Semaphore leaves nothing open.
type watchPool struct {
	cli    *clientv3.Client
	prefix string

	mu   sync.Mutex // protects idle
	idle []*pooled
}

type pooled struct {
	w     *watcher
	timer *time.Timer
}

const maxIdleWatches = 4

func newWatchPool(cli *clientv3.Client, prefix string) *watchPool {
	return &watchPool{cli: cli, prefix: prefix}
}

// get returns an idle watch, or a new one.
func (p *watchPool) get() *watcher {
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
	return startWatch(p.cli, p.prefix)
}

// put gives a watch back for reuse, or closes it if it is not known good.
func (p *watchPool) put(w *watcher) {
	if !w.created {
		w.stop()
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.idle) >= maxIdleWatches {
		w.stop()
		return
	}
	e := &pooled{w: w}
	e.timer = time.AfterFunc(idleWatch, func() {
		p.mu.Lock()
		if i := slices.Index(p.idle, e); i >= 0 {
			p.idle = slices.Delete(p.idle, i, i+1)
		}
		p.mu.Unlock()
		w.stop()
	})
	p.idle = append(p.idle, e)
}
