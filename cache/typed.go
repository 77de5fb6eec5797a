package cache

import (
	"context"
	"errors"
	"fmt"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"
	"sigs.k8s.io/yaml"

	"github.com/concordkit/concord/internal/codec"
)

// Decoder turns a stored value into a T.
type Decoder[T any] func([]byte) (T, error)

// JSON decodes JSON strictly: unknown fields and trailing data are errors,
// so a misspelt setting is reported instead of silently ignored.
func JSON[T any]() Decoder[T] {
	return func(b []byte) (T, error) {
		var v T
		if err := codec.Strict(b, &v); err != nil {
			var zero T
			return zero, err
		}
		return v, nil
	}
}

// YAML decodes YAML (a superset of JSON) strictly, through
// sigs.k8s.io/yaml: field names follow the type's json tags, unknown and
// duplicate fields are errors.
func YAML[T any]() Decoder[T] {
	return func(b []byte) (T, error) {
		var v T
		err := yaml.UnmarshalStrict(b, &v)
		return v, err
	}
}

// TypedOption configures a Value or a Map.
type TypedOption[T any] func(*typedOptions[T])

type typedOptions[T any] struct {
	decode    Decoder[T]
	validate  func(T) error
	def       T
	hasDef    bool
	onErr     func(key string, err error)
	cacheOpts []Option
}

// WithDecoder sets the decoder (default: JSON).
func WithDecoder[T any](d Decoder[T]) TypedOption[T] {
	return func(o *typedOptions[T]) { o.decode = d }
}

// WithValidator sets a check every decoded value must pass before it
// replaces the last good one.
func WithValidator[T any](f func(T) error) TypedOption[T] {
	return func(o *typedOptions[T]) { o.validate = f }
}

// WithDefault sets the value a Value holds while its key does not exist
// (default: T's zero value). It must pass the validator.
func WithDefault[T any](v T) TypedOption[T] {
	return func(o *typedOptions[T]) { o.def, o.hasDef = v, true }
}

// WithErrorHandler is called, on the watcher's goroutine, with each value
// that fails to decode or validate (the error wraps ErrInvalid). It must not
// block for long.
func WithErrorHandler[T any](f func(key string, err error)) TypedOption[T] {
	return func(o *typedOptions[T]) { o.onErr = f }
}

// WithTypedCacheOptions passes options to the underlying cache.
func WithTypedCacheOptions[T any](opts ...Option) TypedOption[T] {
	return func(o *typedOptions[T]) { o.cacheOpts = append(o.cacheOpts, opts...) }
}

func (o *typedOptions[T]) check(key string, kv KV) (T, error) {
	v, err := o.decode(kv.Value)
	if err != nil {
		var zero T
		return zero, fmt.Errorf("%w: %s at revision %d: decode: %v", ErrInvalid, key, kv.ModRevision, err)
	}
	if o.validate != nil {
		if err := o.validate(v); err != nil {
			var zero T
			return zero, fmt.Errorf("%w: %s at revision %d: %w", ErrInvalid, key, kv.ModRevision, err)
		}
	}
	return v, nil
}

func typedSetup[T any](opts []TypedOption[T]) (*typedOptions[T], error) {
	o := &typedOptions[T]{decode: JSON[T]()}
	for _, opt := range opts {
		opt(o)
	}
	if o.decode == nil {
		return nil, errors.New("cache: nil decoder")
	}
	if o.hasDef && o.validate != nil {
		if err := o.validate(o.def); err != nil {
			return nil, fmt.Errorf("%w: the default: %w", ErrInvalid, err)
		}
	}
	return o, nil
}

// State is what a Value holds.
type State[T any] struct {
	// Value is the last good value: the newest stored value that decoded and
	// passed validation, or the default while the key does not exist (unless
	// Stale).
	Value T
	// Revision is the ModRevision of the stored value Value came from; 0
	// when Value is the default.
	Revision int64
	// Exists reports whether the key exists (at the cache's revision).
	Exists bool
	// Err is why the key's current stored value was rejected (it wraps
	// ErrInvalid); nil when Value is the current stored value or the key
	// does not exist. While Err is set, Value is the previous good value.
	Err error
	// CacheRevision is the revision of the last change of the key the Value
	// applied (or of its initial load): the state equals the key's state in
	// etcd from that revision on, until the next change.
	CacheRevision int64
	// Stale reports that Value may not be the newest good value: the key's
	// current stored value is rejected (Err is set), and writes before it
	// were never judged — they happened while the watch was broken and etcd
	// compacted them away (or while the Value's subscription fell behind),
	// as the key's etcd Version shows. One of them may have been valid and
	// newer than Value; etcd no longer has it. Stale clears with the next
	// good value or a deletion.
	Stale bool
}

// notifier hands the newest state to each Changes channel: one place per
// channel, the newest replacing an unread one, so a slow reader never stalls
// the watcher and never reads a stale state after a newer one.
type notifier[S any] struct {
	mu     sync.Mutex // protects chans, closed
	chans  map[chan S]func() bool
	closed bool
}

func (n *notifier[S]) add(ctx context.Context, first S) <-chan S {
	ch := make(chan S, 1)
	ch <- first
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		close(ch)
		return ch
	}
	if n.chans == nil {
		n.chans = map[chan S]func() bool{}
	}
	// The subscription ends with ctx; AfterFunc needs no goroutine of ours
	// while ctx lives, and its stop function is called on close.
	n.chans[ch] = context.AfterFunc(ctx, func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		if _, ok := n.chans[ch]; ok {
			delete(n.chans, ch)
			close(ch)
		}
	})
	return ch
}

func (n *notifier[S]) send(s S) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for ch := range n.chans {
		select {
		case ch <- s:
		default:
			select {
			case <-ch:
			default:
			}
			ch <- s // we are the only sender, under n.mu: there is room
		}
	}
}

func (n *notifier[S]) close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.closed = true
	for ch, stop := range n.chans {
		stop()
		close(ch)
	}
	clear(n.chans)
}

// Value is a typed, validated view of one etcd key, for configuration: it
// holds the newest stored value that decodes and passes validation, and
// keeps it when a newer stored value does not, reporting why. Its methods are
// safe for concurrent use.
type Value[T any] struct {
	key string
	o   *typedOptions[T]
	c   *Cache
	sub *Subscription
	n   notifier[State[T]]
	wg  sync.WaitGroup // joins run

	mu     sync.Mutex // protects state, stored
	state  State[T]
	stored version // the key's current stored value; zero if absent
	judged bool    // the initial state was applied: later gaps are misses
}

// version identifies a stored value of a key: where it is in the key's
// history, so that a gap in what a reader judged shows.
type version struct {
	mod, create, n int64 // ModRevision, CreateRevision, Version
}

func versionOf(kv KV) version { return version{kv.ModRevision, kv.CreateRevision, kv.Version} }

// missedBefore reports whether writes of the key came between the stored
// value last judged (prev, zero if the key was absent) and kv: etcd's Version
// counts a key's writes since its creation, one per revision.
func missedBefore(prev version, kv KV) bool {
	if kv.CreateRevision == prev.create {
		return kv.Version > prev.n+1
	}
	return kv.Version > 1
}

// NewValue loads key (one read) and follows it (one watch). A stored value
// that is invalid from the start does not fail NewValue: the Value holds the
// default with Err set, so a service can start on defaults and be told why.
func NewValue[T any](ctx context.Context, cli *clientv3.Client, key string, opts ...TypedOption[T]) (*Value[T], error) {
	o, err := typedSetup(opts)
	if err != nil {
		return nil, err
	}
	c, err := newKey(ctx, cli, key, o.cacheOpts)
	if err != nil {
		return nil, err
	}
	v := &Value[T]{key: key, o: o, c: c, sub: c.Subscribe(), state: State[T]{Value: o.def}}
	if b, ok := <-v.sub.C(); ok {
		v.apply(b) // the snapshot: complete before NewValue returns
	}
	v.wg.Add(1)
	go v.run()
	return v, nil
}

func (v *Value[T]) run() {
	defer v.wg.Done()
	for b := range v.sub.C() {
		v.n.send(v.apply(b))
	}
}

func (v *Value[T]) apply(b Batch) State[T] {
	var bad error
	v.mu.Lock()
	s := v.state
	s.CacheRevision = b.Revision
	absent := func() {
		s.Exists, s.Err, s.Value, s.Revision, s.Stale, v.stored = false, nil, v.o.def, 0, false, version{}
	}
	if b.Snapshot && len(b.Events) == 0 {
		absent()
	}
	for _, ev := range b.Events {
		if ev.Type == Delete {
			absent()
			continue
		}
		s.Exists = true
		if v.stored.mod == ev.KV.ModRevision {
			continue // a snapshot of the stored value already judged
		}
		missed := v.judged && missedBefore(v.stored, ev.KV)
		if v.stored.create != 0 && ev.KV.CreateRevision != v.stored.create {
			// Deleted and created again unseen: the deletion took the last
			// good value with it, as a Delete event would have.
			s.Value, s.Revision = v.o.def, 0
		}
		v.stored = versionOf(ev.KV)
		val, err := v.o.check(v.key, ev.KV)
		if err != nil {
			s.Err, s.Stale, bad = err, s.Stale || missed, err
			continue
		}
		s.Value, s.Revision, s.Err, s.Stale = val, ev.KV.ModRevision, nil, false
	}
	v.judged = true
	v.state = s
	v.mu.Unlock()
	if bad != nil && v.o.onErr != nil {
		v.o.onErr(v.key, bad)
	}
	return s
}

// Load returns the current state. It does no I/O.
func (v *Value[T]) Load() State[T] {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.state
}

// WaitRevision waits until the Value reflects etcd revision rev (see
// Cache.WaitRevision) and returns its state then: after a write of the key at
// rev, the state shows that write or a newer one.
func (v *Value[T]) WaitRevision(ctx context.Context, rev int64) (State[T], error) {
	if err := v.c.WaitRevision(ctx, rev); err != nil {
		return v.Load(), err
	}
	// Every change up to rev is now queued for our goroutine; wait until it
	// has applied the last of them.
	target := v.c.published()
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for s := range v.Changes(cctx) {
		if s.CacheRevision >= target {
			return s, nil
		}
	}
	if ctx.Err() != nil {
		return v.Load(), ctx.Err()
	}
	return v.Load(), ErrClosed
}

// Changes returns a channel that receives the current state, then every new
// state. It holds one state: a reader that falls behind gets the newest. It
// is closed when ctx ends or the Value is closed.
func (v *Value[T]) Changes(ctx context.Context) <-chan State[T] {
	v.mu.Lock()
	defer v.mu.Unlock() // held while adding, so no state is sent in between
	return v.n.add(ctx, v.state)
}

// Close stops following the key, joins the Value's goroutines and closes
// every Changes channel. It is idempotent.
func (v *Value[T]) Close() error {
	err := v.c.Close()
	v.wg.Wait()
	v.n.close()
	return err
}

// MapState is what a Map holds.
type MapState[T any] struct {
	// Values holds, for each key under the prefix that has one, its last
	// good value (see State).
	Values map[string]T
	// Errs holds, for each key whose current stored value was rejected, why
	// (wrapping ErrInvalid). Such a key keeps its previous good value in
	// Values, if it ever had one.
	Errs map[string]error
	// Stale holds the keys whose value may not be the newest good one (see
	// State.Stale).
	Stale map[string]bool
	// Revision is the revision of etcd this state reflects.
	Revision int64
}

type mapEntry[T any] struct {
	val    T
	rev    int64   // ModRevision of val; 0 when the key never had a good value
	stored version // the current stored value
	err    error
	stale  bool // see State.Stale
}

// Map is a typed, validated view of every key under a prefix (see Value).
// Its methods are safe for concurrent use.
type Map[T any] struct {
	prefix string
	o      *typedOptions[T]
	c      *Cache
	sub    *Subscription
	n      notifier[MapState[T]]
	wg     sync.WaitGroup // joins run

	mu      sync.Mutex // protects entries, rev, judged
	entries map[string]*mapEntry[T]
	rev     int64
	judged  bool // the initial state was applied (see Value)
}

// NewMap loads the keys under prefix (paged reads at one revision) and
// follows them (one watch). WithDefault does not apply to a Map.
func NewMap[T any](ctx context.Context, cli *clientv3.Client, prefix string, opts ...TypedOption[T]) (*Map[T], error) {
	o, err := typedSetup(opts)
	if err != nil {
		return nil, err
	}
	c, err := New(ctx, cli, prefix, o.cacheOpts...)
	if err != nil {
		return nil, err
	}
	m := &Map[T]{prefix: prefix, o: o, c: c, sub: c.Subscribe(), entries: map[string]*mapEntry[T]{}}
	if b, ok := <-m.sub.C(); ok {
		m.apply(b)
	}
	m.wg.Add(1)
	go m.run()
	return m, nil
}

func (m *Map[T]) run() {
	defer m.wg.Done()
	for b := range m.sub.C() {
		m.apply(b)
		m.n.send(m.Load())
	}
}

func (m *Map[T]) apply(b Batch) {
	type bad struct {
		key string
		err error
	}
	var bads []bad
	m.mu.Lock()
	if b.Snapshot {
		// Keep last good values of keys still present; drop the others.
		present := make(map[string]bool, len(b.Events))
		for _, ev := range b.Events {
			present[ev.KV.Key] = true
		}
		for k := range m.entries {
			if !present[k] {
				delete(m.entries, k)
			}
		}
	}
	for _, ev := range b.Events {
		k := ev.KV.Key
		if ev.Type == Delete {
			delete(m.entries, k)
			continue
		}
		e := m.entries[k]
		if e == nil {
			e = &mapEntry[T]{}
			m.entries[k] = e
		}
		if e.stored.mod == ev.KV.ModRevision {
			continue
		}
		missed := m.judged && missedBefore(e.stored, ev.KV)
		if e.stored.create != 0 && ev.KV.CreateRevision != e.stored.create {
			// Deleted and created again unseen (see Value.apply).
			var zero T
			e.val, e.rev = zero, 0
		}
		e.stored = versionOf(ev.KV)
		val, err := m.o.check(k, ev.KV)
		if err != nil {
			e.err, e.stale = err, e.stale || missed
			bads = append(bads, bad{k, err})
			continue
		}
		e.val, e.rev, e.err, e.stale = val, ev.KV.ModRevision, nil, false
	}
	m.judged = true
	m.rev = b.Revision
	m.mu.Unlock()
	if m.o.onErr != nil {
		for _, x := range bads {
			m.o.onErr(x.key, x.err)
		}
	}
}

// Get returns key's last good value and whether it has one.
func (m *Map[T]) Get(key string) (T, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.entries[key]
	if e == nil || e.rev == 0 {
		var zero T
		return zero, false
	}
	return e.val, true
}

// Load returns a copy of the current state (a copy of every entry: O(keys)).
func (m *Map[T]) Load() MapState[T] {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stateLocked()
}

func (m *Map[T]) stateLocked() MapState[T] {
	s := MapState[T]{Values: make(map[string]T, len(m.entries)), Errs: map[string]error{}, Stale: map[string]bool{}, Revision: m.rev}
	for k, e := range m.entries {
		if e.rev != 0 {
			s.Values[k] = e.val
		}
		if e.err != nil {
			s.Errs[k] = e.err
		}
		if e.stale {
			s.Stale[k] = true
		}
	}
	return s
}

// Changes is like Value.Changes, with a full copy of the state per change.
func (m *Map[T]) Changes(ctx context.Context) <-chan MapState[T] {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.n.add(ctx, m.stateLocked())
}

// Close stops following the prefix, joins the Map's goroutines and closes
// every Changes channel. It is idempotent.
func (m *Map[T]) Close() error {
	err := m.c.Close()
	m.wg.Wait()
	m.n.close()
	return err
}
