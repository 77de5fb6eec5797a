package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"

	"github.com/concordkit/concord/internal/compat"
	"github.com/concordkit/concord/internal/names"
	"github.com/concordkit/concord/internal/retry"
	"github.com/concordkit/concord/internal/watch"
)

// errWatchEnded reports that the cache has no watch at the moment.
var errWatchEnded = errors.New("cache: no watch")

// Cache holds an in-memory copy of every key under a prefix and keeps it equal
// to etcd at some revision by watching. Its methods are safe for concurrent
// use. Reads (Get, List, Len, Revision) never do I/O.
type Cache struct {
	cli         *clientv3.Client
	key         string // first key of the range
	end         string // range end; "" for a single key
	prefix      string // the prefix given to New (or the key, for a single key)
	o           options
	log         *slog.Logger
	stale       metric.Float64Histogram
	reloadCount metric.Int64Counter

	stream watch.Stream // the stream of the cache's watch: WaitRevision asks for progress on it
	stop   context.CancelFunc
	wg     sync.WaitGroup // joins run

	mu      sync.RWMutex // protects everything below
	data    map[string]*KV
	rev     int64
	revCh   chan struct{} // closed and replaced each time rev advances
	subs    map[*Subscription]struct{}
	closed  bool
	w       *watch.Watch // the current watch, nil between watches
	reloads int          // how many times a reload replaced the state (for tests and logs)
	lastPub int64        // revision of the last batch published to subscribers
}

// New loads every key under prefix at one revision R, in pages (about 4 MiB
// each; see WithPageSize) all read at R, and then keeps the copy current by
// watching from R+1. ctx bounds the initial load only; the watch runs until Close.
// An empty prefix caches the whole keyspace.
func New(ctx context.Context, cli *clientv3.Client, prefix string, opts ...Option) (*Cache, error) {
	end := clientv3.GetPrefixRangeEnd(prefix)
	key := prefix
	if prefix == "" {
		key, end = "\x00", "\x00"
	}
	return newCache(ctx, cli, prefix, key, end, opts)
}

// newKey is New for exactly one key (cache.Value).
func newKey(ctx context.Context, cli *clientv3.Client, key string, opts []Option) (*Cache, error) {
	if key == "" {
		return nil, errors.New("cache: empty key")
	}
	return newCache(ctx, cli, key, key, "", opts)
}

func newCache(ctx context.Context, cli *clientv3.Client, prefix, key, end string, opts []Option) (*Cache, error) {
	if cli == nil {
		return nil, errors.New("cache: nil client")
	}
	o := defaults()
	for _, opt := range opts {
		opt(&o)
	}
	if o.pageSize < 0 {
		return nil, errors.New("cache: page size: must be positive")
	}
	if o.buffer <= 0 {
		return nil, fmt.Errorf("cache: buffer %d: must be positive", o.buffer)
	}
	if o.meter == nil {
		o.meter = otel.GetMeterProvider()
	}
	if o.logger == nil {
		o.logger = slog.Default()
	}
	stale, _ := o.meter.Meter("github.com/concordkit/concord/cache").Float64Histogram(
		"concord.cache.staleness",
		metric.WithUnit("s"),
		metric.WithDescription("Time from the moment the cache learned that etcd changed (a watch response arrived, or the watch was found broken) until the change was visible to Get."))
	reloads, _ := o.meter.Meter("github.com/concordkit/concord/cache").Int64Counter(
		"concord.cache.reloads",
		metric.WithDescription("Reloads of a cache's whole range after its watch could not resume (its start revision was compacted)."))
	c := &Cache{cli: cli, key: key, end: end, prefix: prefix, o: o, log: o.logger, stale: stale, reloadCount: reloads,
		revCh: make(chan struct{}), subs: map[*Subscription]struct{}{}}
	if err := compat.Check(ctx, cli); err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	data, rev, err := c.load(ctx)
	if err != nil {
		return nil, err
	}
	c.data, c.rev = data, rev
	runCtx, stop := context.WithCancel(context.Background())
	c.stop = stop
	// A stream of the cache's own: etcd answers a progress request only
	// when every watch on the stream is caught up, and another watch on the
	// client's shared stream could be far behind.
	c.stream = watch.NewStream("cache-" + names.NewID())
	c.wg.Add(1)
	go c.run(runCtx)
	return c, nil
}

// load reads the range at one revision: the first page decides the revision
// R (a linearizable read), every further page is read at R, so the pages
// together are etcd's range at R even while others write.
func (c *Cache) load(ctx context.Context) (map[string]*KV, int64, error) {
	if c.end == "" {
		resp, err := c.cli.Get(ctx, c.key)
		if err != nil {
			return nil, 0, fmt.Errorf("cache: load %q: %w", c.key, err)
		}
		data := make(map[string]*KV, len(resp.Kvs))
		for _, kv := range resp.Kvs {
			data[string(kv.Key)] = fromPB(kv)
		}
		return data, resp.Header.Revision, nil
	}
	var data map[string]*KV
	var rev, bytes int64
	from := c.key
	limit := c.o.pageSize
	if limit == 0 {
		limit = firstPageKeys
	}
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(c.end), clientv3.WithLimit(limit)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := c.cli.Get(ctx, from, opts...)
		if err != nil {
			return nil, 0, fmt.Errorf("cache: load %q: %w", c.prefix, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
			data = make(map[string]*KV, resp.Count)
		}
		for _, kv := range resp.Kvs {
			data[string(kv.Key)] = fromPB(kv)
			bytes += int64(len(kv.Key) + len(kv.Value))
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return data, rev, nil
		}
		if c.o.pageSize == 0 {
			// Size the next page from what an average key weighed so far.
			avg := max(bytes/int64(len(data)), 1)
			limit = min(max(c.o.pageBytes/avg, minPageKeys), maxPageKeys)
		}
		// The next page starts just after the last key of this one.
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

func fromPB(kv *mvccpb.KeyValue) *KV {
	return &KV{Key: string(kv.Key), Value: kv.Value, CreateRevision: kv.CreateRevision,
		ModRevision: kv.ModRevision, Version: kv.Version, Lease: clientv3.LeaseID(kv.Lease)}
}

// Get returns the key's cached state and whether it exists.
func (c *Cache) Get(key string) (KV, bool) {
	c.mu.RLock()
	kv, ok := c.data[key]
	c.mu.RUnlock()
	if !ok {
		return KV{}, false
	}
	return *kv, true
}

// List returns every cached key that starts with prefix, ordered by key, and
// the revision at which etcd held exactly these keys. It costs a scan of the
// whole cache plus a sort of the result.
func (c *Cache) List(prefix string) ([]KV, int64) {
	c.mu.RLock()
	out := make([]KV, 0, min(len(c.data), 64))
	for k, kv := range c.data {
		if strings.HasPrefix(k, prefix) {
			out = append(out, *kv)
		}
	}
	rev := c.rev
	c.mu.RUnlock()
	slices.SortFunc(out, func(a, b KV) int { return strings.Compare(a.Key, b.Key) })
	return out, rev
}

// Len returns the number of cached keys.
func (c *Cache) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.data)
}

// Revision returns the revision the cache equals: etcd held exactly the
// cached keys under the prefix at this revision.
func (c *Cache) Revision() int64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.rev
}

// progressEvery is how often WaitRevision asks etcd for a progress
// notification while it waits.
const progressEvery = 50 * time.Millisecond

// WaitRevision blocks until the cache has caught up with revision rev, so that
// after a write at rev a Get sees it (or something newer). A revision with no
// change under the prefix is reached through a progress notification, which
// WaitRevision requests from etcd (at most every 50 ms while it waits). It
// returns ctx's error if ctx ends first and ErrClosed if the cache is closed.
func (c *Cache) WaitRevision(ctx context.Context, rev int64) error {
	var lastAsk time.Time
	for {
		c.mu.RLock()
		cur, ch, closed := c.rev, c.revCh, c.closed
		c.mu.RUnlock()
		if cur >= rev {
			return nil
		}
		if closed {
			return ErrClosed
		}
		if time.Since(lastAsk) >= progressEvery {
			// On the cache's own stream. The request can wait while the
			// stream reconnects: bound it. An error (no stream yet) is
			// retried on the next round.
			pctx, cancel := context.WithTimeout(ctx, progressEvery)
			_ = c.requestProgress(pctx)
			cancel()
			lastAsk = time.Now()
		}
		t := time.NewTimer(progressEvery)
		select {
		case <-ch:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
		t.Stop()
	}
}

// published returns the revision of the last batch published: every
// subscriber has it queued (or a snapshot past it).
func (c *Cache) published() int64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.lastPub
}

// Close stops the watch, joins its goroutine and closes every subscription's
// channel. It is idempotent and always returns nil.
func (c *Cache) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	close(c.revCh) // wake WaitRevision callers; they see closed
	c.revCh = make(chan struct{})
	c.mu.Unlock()
	c.stop()
	c.wg.Wait()
	c.mu.Lock()
	for s := range c.subs {
		close(s.ch)
	}
	clear(c.subs)
	c.mu.Unlock()
	return nil
}

// requestProgress asks for a progress notification on the cache's watch.
func (c *Cache) requestProgress(ctx context.Context) error {
	c.mu.RLock()
	w := c.w
	c.mu.RUnlock()
	if w == nil {
		return errWatchEnded
	}
	return w.RequestProgress(ctx)
}

// run watches from the cache's revision + 1 until Close. internal/watch
// resumes a broken watch from where it stopped, so no event is lost or
// repeated; a watch whose start was compacted away leads to a reload. A
// watch etcd refuses for good (a permission taken away) is tried again
// with backoff: the cache stays as it was meanwhile.
func (c *Cache) run(ctx context.Context) {
	defer c.wg.Done()
	bo := retry.WatchPolicy.New()
	for {
		err := c.watch(ctx)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, rpctypes.ErrCompacted) {
			c.log.Debug("cache: watch start compacted; reloading", "prefix", c.prefix, "rev", c.Revision())
			if c.reload(ctx, bo) != nil {
				return // only ctx ends a reload
			}
			continue
		}
		c.log.Warn("cache: watch refused; trying again", "prefix", c.prefix, "rev", c.Revision(), "err", err)
		if bo.Wait(ctx) != nil {
			return
		}
	}
}

// watch runs one watch from the current revision + 1 and returns why it
// ended for good.
func (c *Cache) watch(ctx context.Context) error {
	opts := []clientv3.OpOption{clientv3.WithProgressNotify()}
	if c.end != "" {
		opts = append(opts, clientv3.WithRange(c.end))
	}
	w := watch.Open(ctx, c.cli, c.key, watch.Config{From: c.Revision() + 1, Stream: c.stream, Options: opts, Progress: true})
	c.mu.Lock()
	c.w = w
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.w = nil
		c.mu.Unlock()
		w.Stop()
	}()
	for {
		var resp clientv3.WatchResponse
		select {
		case r, ok := <-w.C:
			if !ok {
				return w.Err()
			}
			resp = r
		case <-ctx.Done():
			return ctx.Err()
		}
		received := time.Now()
		if resp.IsProgressNotify() {
			c.progress(resp.Header.Revision)
			continue
		}
		// Events come in revision order, and etcd never splits one
		// revision's events across responses: apply them one revision at a
		// time so that every state shown is a state etcd had.
		evs := resp.Events
		for len(evs) > 0 {
			n := 1
			for n < len(evs) && evs[n].Kv.ModRevision == evs[0].Kv.ModRevision {
				n++
			}
			c.apply(evs[:n], received)
			evs = evs[n:]
		}
	}
}

// progress records a bookmark: nothing changed under the prefix up to rev.
func (c *Cache) progress(rev int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if rev > c.rev {
		c.setRevLocked(rev)
	}
}

func (c *Cache) setRevLocked(rev int64) {
	c.rev = rev
	close(c.revCh)
	c.revCh = make(chan struct{})
}

// apply applies the events of one revision.
func (c *Cache) apply(evs []*clientv3.Event, received time.Time) {
	rev := evs[0].Kv.ModRevision
	c.mu.Lock()
	defer c.mu.Unlock()
	if rev <= c.rev {
		return // already reflected (cannot happen with a watch from rev+1; cheap to guard)
	}
	out := make([]Event, 0, len(evs))
	for _, ev := range evs {
		key := string(ev.Kv.Key)
		prev := c.data[key]
		switch ev.Type {
		case mvccpb.PUT:
			kv := fromPB(ev.Kv)
			c.data[key] = kv
			if prev == nil {
				out = append(out, Event{Type: Create, KV: *kv})
			} else {
				out = append(out, Event{Type: Update, KV: *kv, Prev: prev})
			}
		case mvccpb.DELETE:
			if prev == nil {
				continue // a deletion of a key the cache never held: nothing changed
			}
			delete(c.data, key)
			out = append(out, Event{Type: Delete, KV: KV{Key: key, ModRevision: rev}, Prev: prev})
		}
	}
	slices.SortFunc(out, func(a, b Event) int { return strings.Compare(a.KV.Key, b.KV.Key) })
	c.setRevLocked(rev)
	c.publishLocked(Batch{Revision: rev, Events: out})
	c.stale.Record(context.Background(), time.Since(received).Seconds())
}

// reload reads the range again at a new revision and turns the difference
// from the cached state into ordinary events, so subscribers move from one
// real revision to another. It retries until it succeeds or ctx ends.
func (c *Cache) reload(ctx context.Context, bo *retry.Backoff) error {
	broken := time.Now()
	for {
		data, rev, err := c.load(ctx)
		if err == nil {
			c.replace(data, rev, broken)
			return nil
		}
		c.log.Debug("cache: reload failed", "prefix", c.prefix, "err", err)
		if err := bo.Wait(ctx); err != nil {
			return err
		}
	}
}

func (c *Cache) replace(data map[string]*KV, rev int64, broken time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if rev <= c.rev {
		// Cannot happen (a compacted watch start means etcd is past it), but
		// a reload must never move the cache backwards.
		return
	}
	var out []Event
	for k, kv := range data {
		prev, ok := c.data[k]
		switch {
		case !ok:
			out = append(out, Event{Type: Create, KV: *kv})
		case prev.ModRevision != kv.ModRevision:
			out = append(out, Event{Type: Update, KV: *kv, Prev: prev})
		}
	}
	for k, prev := range c.data {
		if _, ok := data[k]; !ok {
			out = append(out, Event{Type: Delete, KV: KV{Key: k, ModRevision: rev}, Prev: prev})
		}
	}
	slices.SortFunc(out, func(a, b Event) int { return strings.Compare(a.KV.Key, b.KV.Key) })
	c.data = data
	c.reloads++
	c.reloadCount.Add(context.Background(), 1)
	c.setRevLocked(rev)
	if len(out) > 0 {
		c.publishLocked(Batch{Revision: rev, Events: out})
	}
	c.stale.Record(context.Background(), time.Since(broken).Seconds())
}
