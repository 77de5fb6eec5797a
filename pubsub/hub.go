package pubsub

import (
	"context"
	"sync"
	"sync/atomic"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Hub is one client's publisher and subscriber for any number of topics. It
// holds one etcd watch per topic that has subscriptions, whatever their
// number, and fans its events out to them; it caches each topic's head so
// that a publish is one transaction. A Hub is safe for concurrent use.
//
// Lifecycle: NewHub does no I/O and starts nothing. A topic's watch goroutine
// starts with its first subscription and is joined when its last one ends.
// The age trimmer starts with the first publish to a topic that has an age
// limit. Close ends every subscription and joins every goroutine the Hub
// started. The package-level Publish and Subscribe use one Hub per client,
// closed when the client is closed.
type Hub struct {
	cli     *clientv3.Client
	metrics *metrics

	watches atomic.Int64 // etcd watches opened, over the Hub's life

	mu     sync.Mutex // protects feeds, pubs, closed, trim
	feeds  map[string]*feed
	pubs   map[string]*pubState
	closed bool
	trim   *trimmer
}

// NewHub returns a Hub on cli. It does no I/O.
func NewHub(cli *clientv3.Client, opts ...HubOption) *Hub {
	var cfg hubConfig
	for _, o := range opts {
		o(&cfg)
	}
	return &Hub{
		cli:     cli,
		metrics: newMetrics(cfg.meter),
		feeds:   map[string]*feed{},
		pubs:    map[string]*pubState{},
	}
}

// Stats describes what a Hub holds, for tests and monitoring.
type Stats struct {
	Topics        int   // topics with a running watch
	Subscriptions int   // open subscriptions
	WatchesOpened int64 // etcd watches opened since NewHub, re-watches included
}

// Stats returns a snapshot of the Hub's state.
func (h *Hub) Stats() Stats {
	h.mu.Lock()
	feeds := make([]*feed, 0, len(h.feeds))
	for _, f := range h.feeds {
		feeds = append(feeds, f)
	}
	h.mu.Unlock()
	st := Stats{Topics: len(feeds), WatchesOpened: h.watches.Load()}
	for _, f := range feeds {
		f.mu.Lock()
		st.Subscriptions += len(f.subs)
		f.mu.Unlock()
	}
	return st
}

// Close ends every subscription (their Next returns ErrHubClosed), stops the
// watches and the trimmer, and returns when every goroutine the Hub started
// has returned. Publishing after Close fails with ErrHubClosed. Close is
// idempotent.
func (h *Hub) Close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.closed = true
	feeds := h.feeds
	h.feeds = map[string]*feed{}
	trim := h.trim
	h.trim = nil
	h.mu.Unlock()

	for _, f := range feeds {
		f.mu.Lock()
		subs := make([]*Subscription, 0, len(f.subs))
		for s := range f.subs {
			subs = append(subs, s)
		}
		f.mu.Unlock()
		for _, s := range subs {
			s.end(ErrHubClosed)
		}
		f.stop()
	}
	if trim != nil {
		trim.stop()
	}
	return nil
}

// acquire returns the running feed of topic, starting it if needed, and
// counts one more user of it.
func (h *Hub) acquire(k keys) (*feed, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, ErrHubClosed
	}
	f := h.feeds[k.topic]
	if f == nil {
		f = startFeed(h, k)
		h.feeds[k.topic] = f
	}
	f.refs++
	return f, nil
}

// release drops one user of f and stops f when it was the last.
func (h *Hub) release(f *feed) {
	h.mu.Lock()
	f.refs--
	last := f.refs == 0
	if last && h.feeds[f.k.topic] == f {
		delete(h.feeds, f.k.topic)
	}
	h.mu.Unlock()
	if last {
		f.stop()
	}
}

// The package-level functions share one Hub per client.
var defaultHubs struct {
	mu sync.Mutex // protects m
	m  map[*clientv3.Client]*Hub
}

// For returns the Hub the package-level Publish and Subscribe use for cli,
// made on first use and closed (its goroutines joined) when cli is closed.
func For(cli *clientv3.Client) *Hub {
	if cli == nil {
		return NewHub(nil) // its calls report the nil client
	}
	defaultHubs.mu.Lock()
	defer defaultHubs.mu.Unlock()
	if h, ok := defaultHubs.m[cli]; ok {
		return h
	}
	if defaultHubs.m == nil {
		defaultHubs.m = map[*clientv3.Client]*Hub{}
	}
	h := NewHub(cli)
	defaultHubs.m[cli] = h
	// No goroutine waits for the client: AfterFunc runs this only once the
	// client's context ends.
	context.AfterFunc(cli.Ctx(), func() {
		defaultHubs.mu.Lock()
		if defaultHubs.m[cli] == h {
			delete(defaultHubs.m, cli)
		}
		defaultHubs.mu.Unlock()
		_ = h.Close()
	})
	return h
}

// Publish publishes payload on topic through cli's shared Hub (see For and
// Hub.Publish).
func Publish(ctx context.Context, cli *clientv3.Client, topic string, payload []byte, opts ...PublishOption) (int64, error) {
	return For(cli).Publish(ctx, topic, payload, opts...)
}

// Subscribe subscribes to topic through cli's shared Hub (see For and
// Hub.Subscribe).
func Subscribe(ctx context.Context, cli *clientv3.Client, topic string, from From, opts ...SubscribeOption) (*Subscription, error) {
	return For(cli).Subscribe(ctx, topic, from, opts...)
}
