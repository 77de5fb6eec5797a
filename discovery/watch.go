package discovery

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/cache"
	"github.com/concordkit/concord/internal/guard"
	"github.com/concordkit/concord/internal/names"
)

// WatchOption configures Watch and WatchGroup.
type WatchOption func(*watchOptions)

type watchOptions struct {
	onErr     func(key string, err error)
	cacheOpts []cache.Option
}

// WithErrorHandler is called, from the watcher's goroutine, for each record
// that cannot be decoded (ErrCorrupt); the record is skipped. It must
// not block for long: the watcher waits for it.
func WithErrorHandler(f func(key string, err error)) WatchOption {
	return func(o *watchOptions) { o.onErr = f }
}

// WithCacheOptions passes options to the underlying cache.
func WithCacheOptions(opts ...cache.Option) WatchOption {
	return func(o *watchOptions) { o.cacheOpts = append(o.cacheOpts, opts...) }
}

// view keeps the decoded records under a prefix, fed by a cache
// subscription, and hands out the latest full list on a one-place channel.
type view[T any] struct {
	c      *cache.Cache
	sub    *cache.Subscription
	decode func(cache.KV) (T, error)
	onErr  func(key string, err error)
	less   func(a, b T) int
	out    chan []T // one place; the newest list replaces an unread one
	wg     sync.WaitGroup

	mu    sync.Mutex // protects items, errs, rev
	items map[string]T
	errs  map[string]error
	rev   int64
}

func newView[T any](ctx context.Context, cli *clientv3.Client, prefix string, decode func(cache.KV) (T, error), less func(a, b T) int, opts []WatchOption) (*view[T], error) {
	var o watchOptions
	for _, opt := range opts {
		opt(&o)
	}
	c, err := cache.New(ctx, cli, prefix, o.cacheOpts...)
	if err != nil {
		return nil, fmt.Errorf("discovery: %w", err)
	}
	v := &view[T]{c: c, sub: c.Subscribe(), decode: decode, onErr: o.onErr, less: less,
		out: make(chan []T, 1), items: map[string]T{}, errs: map[string]error{}}
	// The subscription's first batch is the loaded snapshot: apply it now so
	// the watcher is complete when returned.
	if b, ok := <-v.sub.C(); ok {
		v.apply(b)
	}
	v.wg.Add(1)
	go v.run()
	return v, nil
}

func (v *view[T]) run() {
	defer v.wg.Done()
	defer close(v.out)
	for b := range v.sub.C() {
		list := v.apply(b)
		select {
		case v.out <- list:
		default:
			select { // replace the unread list
			case <-v.out:
			default:
			}
			v.out <- list
		}
	}
}

// apply applies a batch and returns the new list.
func (v *view[T]) apply(b cache.Batch) []T {
	type bad struct {
		key string
		err error
	}
	var bads []bad
	v.mu.Lock()
	if b.Snapshot {
		clear(v.items)
		clear(v.errs)
	}
	for _, ev := range b.Events {
		key := ev.KV.Key
		delete(v.items, key)
		delete(v.errs, key)
		if ev.Type == cache.Delete {
			continue
		}
		item, err := v.decode(ev.KV)
		if err != nil {
			v.errs[key] = err
			bads = append(bads, bad{key, err})
			continue
		}
		v.items[key] = item
	}
	v.rev = b.Revision
	list := v.listLocked()
	v.mu.Unlock()
	if v.onErr != nil {
		for _, x := range bads {
			v.onErr(x.key, x.err)
		}
	}
	return list
}

func (v *view[T]) listLocked() []T {
	list := slices.Collect(maps.Values(v.items))
	slices.SortFunc(list, v.less)
	return list
}

func (v *view[T]) list() ([]T, int64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.listLocked(), v.rev
}

func (v *view[T]) errors() map[string]error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return maps.Clone(v.errs)
}

func (v *view[T]) close() {
	_ = v.c.Close() // closes the subscription: run drains it and ends
	v.wg.Wait()
}

// Watcher follows the live instances of a service. Its methods are safe for
// concurrent use.
type Watcher struct{ v *view[Instance] }

// Watch loads the instances of service and follows them (a cache of the
// service's instance keys: one paged read, then one watch). Records that are
// not valid instance records are skipped and reported (Errors,
// WithErrorHandler). Close ends it.
func Watch(ctx context.Context, cli *clientv3.Client, service string, opts ...WatchOption) (*Watcher, error) {
	if err := names.Validate("discovery", service); err != nil {
		return nil, err
	}
	prefix := instancesPrefix(service)
	decode := func(kv cache.KV) (Instance, error) {
		inst, err := decodeInstance(service, prefix, kv.Key, kv.Value)
		inst.Lease, inst.Revision = kv.Lease, kv.CreateRevision
		return inst, err
	}
	v, err := newView(ctx, cli, prefix, decode, func(a, b Instance) int { return strings.Compare(a.ID, b.ID) }, opts)
	if err != nil {
		return nil, err
	}
	return &Watcher{v: v}, nil
}

// Instances returns the live instances ordered by ID, and the revision at
// which etcd held exactly these records.
func (w *Watcher) Instances() ([]Instance, int64) { return w.v.list() }

// Changes returns a channel that receives the full list of instances after
// each change. It holds one list: a reader that falls behind gets the newest
// list, never a stale one. It is closed by Close. There is one such channel
// per Watcher.
func (w *Watcher) Changes() <-chan []Instance { return w.v.out }

// Errors returns the records currently skipped as corrupt, by key.
func (w *Watcher) Errors() map[string]error { return w.v.errors() }

// Close stops following and joins the watcher's goroutines.
func (w *Watcher) Close() { w.v.close() }

// Resolve reads the instances of service once (one linearizable range read),
// ordered by ID. Records that cannot be decoded are left out and reported in
// the error, which then errors.Is ErrCorrupt and comes with the valid
// instances.
func Resolve(ctx context.Context, cli *clientv3.Client, service string) ([]Instance, error) {
	if err := names.Validate("discovery", service); err != nil {
		return nil, err
	}
	if err := guard.CheckClient("discovery", cli); err != nil {
		return nil, err
	}
	prefix := instancesPrefix(service)
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("discovery: resolve %s: %w", service, err)
	}
	var out []Instance
	var errs []error
	for _, kv := range resp.Kvs { // etcd returns them ordered by key, hence by ID
		inst, err := decodeInstance(service, prefix, string(kv.Key), kv.Value)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		inst.Lease, inst.Revision = clientv3.LeaseID(kv.Lease), kv.CreateRevision
		out = append(out, inst)
	}
	return out, errors.Join(errs...)
}

// GroupWatcher follows the members of a group.
type GroupWatcher struct{ v *view[Member] }

// WatchGroup loads the members of group and follows them. Close ends it.
func WatchGroup(ctx context.Context, cli *clientv3.Client, group string, opts ...WatchOption) (*GroupWatcher, error) {
	if err := names.Validate("discovery", group); err != nil {
		return nil, err
	}
	prefix := membersPrefix(group)
	decode := func(kv cache.KV) (Member, error) {
		return decodeMember(prefix, kv.Key, kv.Value, kv.Lease, kv.CreateRevision)
	}
	v, err := newView(ctx, cli, prefix, decode, func(a, b Member) int { return strings.Compare(a.ID, b.ID) }, opts)
	if err != nil {
		return nil, err
	}
	return &GroupWatcher{v: v}, nil
}

// Members returns the members ordered by ID and the revision at which etcd
// held exactly these.
func (g *GroupWatcher) Members() ([]Member, int64) { return g.v.list() }

// Changes is like Watcher.Changes, for members.
func (g *GroupWatcher) Changes() <-chan []Member { return g.v.out }

// Close stops following and joins the watcher's goroutines.
func (g *GroupWatcher) Close() { g.v.close() }

// Members reads the members of group once (one range read), ordered by ID.
func Members(ctx context.Context, cli *clientv3.Client, group string) ([]Member, error) {
	if err := names.Validate("discovery", group); err != nil {
		return nil, err
	}
	if err := guard.CheckClient("discovery", cli); err != nil {
		return nil, err
	}
	prefix := membersPrefix(group)
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("discovery: members of %s: %w", group, err)
	}
	var out []Member
	var errs []error
	for _, kv := range resp.Kvs {
		m, err := decodeMember(prefix, string(kv.Key), kv.Value, clientv3.LeaseID(kv.Lease), kv.CreateRevision)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, m)
	}
	return out, errors.Join(errs...)
}

// decodeMember accepts any payload; only the key must be a member key.
func decodeMember(prefix, key string, value []byte, lease clientv3.LeaseID, rev int64) (Member, error) {
	id, ok := strings.CutPrefix(key, prefix)
	if !ok || checkID("member ID", id) != nil {
		return Member{}, fmt.Errorf("%w: key %q is not a member key", ErrCorrupt, key)
	}
	return Member{ID: id, Payload: value, Lease: lease, Revision: rev}, nil
}
