package pubsub

import (
	"context"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/guard"
	"github.com/concordkit/concord/internal/names"
)

// pubState is what a Hub knows of a topic it publishes to.
type pubState struct {
	// turn admits one publish per topic at a time in this Hub: they would
	// only conflict with each other on the head. A channel rather than a
	// mutex, so a waiting publish gives up when its context ends.
	turn chan struct{}

	// Owned by whoever holds turn.
	head    head
	headRev int64 // ModRevision of the head as last seen; 0: absent
	cached  bool  // head/headRev came from an earlier call
}

// Publish publishes payload on topic and returns the revision it was written
// at: the message's Rev, and its cursor.
//
// A publish is one transaction when the Hub's cached head is current: it
// compares the head's ModRevision, then writes the head (sequence number + 1)
// and the message into the ring slot of that sequence number, overwriting
// the oldest message once the ring is full. When another publisher moved the
// head, the transaction's else branch returns the new head and Publish tries
// again, so a contended publish costs one more round trip per conflict.
// Publishes of one Hub to one topic are serialised locally.
//
// Invalid topic names, payloads over etcd's request limit and bad retention
// options are refused before anything is written. On an etcd error the
// publish may or may not have been applied; publishing again may then
// deliver the payload twice.
func (h *Hub) Publish(ctx context.Context, topic string, payload []byte, opts ...PublishOption) (int64, error) {
	if err := names.Validate("pubsub", topic); err != nil {
		return 0, err
	}
	if err := guard.CheckClient("pubsub", h.cli); err != nil {
		return 0, err
	}
	var cfg pubConfig
	for _, o := range opts {
		o(&cfg)
	}
	if err := cfg.validate(); err != nil {
		return 0, err
	}
	if err := guard.CheckValueSize("pubsub", "payload", len(payload)+envelopeOverhead); err != nil {
		return 0, err
	}
	k := keysFor(topic)
	ps, err := h.pubState(topic)
	if err != nil {
		return 0, err
	}
	select {
	case ps.turn <- struct{}{}:
	case <-ctx.Done():
		return 0, context.Cause(ctx)
	}
	defer func() { <-ps.turn }()

	for {
		if err := ctx.Err(); err != nil {
			return 0, context.Cause(ctx)
		}
		next := head{seq: 1, count: DefaultRetainCount}
		if cfg.countSet {
			next.count = cfg.count
		}
		if cfg.ageSet {
			next.maxAge = cfg.maxAge
		}
		if ps.headRev != 0 {
			if conflict := retentionConflict(ps.head, cfg); conflict != nil {
				if ps.cached {
					// The topic may have been deleted and made again since
					// we cached it: look before refusing.
					if err := h.refreshHead(ctx, k, ps); err != nil {
						return 0, err
					}
					continue
				}
				return 0, fmt.Errorf("%w: topic %q: %s", ErrRetention, topic, conflict)
			}
			next = head{seq: ps.head.seq + 1, count: ps.head.count, maxAge: ps.head.maxAge}
		}
		env := encodeEnvelope(envelope{seq: next.seq, unixNs: time.Now().UnixNano(), payload: payload})
		resp, err := h.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(k.head), "=", ps.headRev)).
			Then(clientv3.OpPut(k.head, string(encodeHead(next))), clientv3.OpPut(k.slot(next.seq, next.count), string(env))).
			Else(clientv3.OpGet(k.head)).
			Commit()
		if err != nil {
			ps.cached = true
			return 0, fmt.Errorf("pubsub: publish to %q: %w", topic, err)
		}
		if resp.Succeeded {
			ps.head, ps.headRev, ps.cached = next, resp.Header.Revision, true
			if next.maxAge > 0 {
				h.trimTopic(k, next.maxAge)
			}
			return resp.Header.Revision, nil
		}
		if err := ps.setHead(k, resp.Responses[0].GetResponseRange().GetKvs()); err != nil {
			return 0, err
		}
	}
}

// retentionConflict describes how the options disagree with the topic's
// stored retention, or returns nil.
func retentionConflict(h head, cfg pubConfig) error {
	if cfg.countSet && cfg.count != h.count {
		return fmt.Errorf("it keeps %d messages, asked for %d", h.count, cfg.count)
	}
	if cfg.ageSet && cfg.maxAge != h.maxAge {
		return fmt.Errorf("it keeps messages for %v, asked for %v", h.maxAge, cfg.maxAge)
	}
	return nil
}

func (h *Hub) refreshHead(ctx context.Context, k keys, ps *pubState) error {
	resp, err := h.cli.Get(ctx, k.head)
	if err != nil {
		return fmt.Errorf("pubsub: publish to %q: read head: %w", k.topic, err)
	}
	return ps.setHead(k, resp.Kvs)
}

// setHead records the head as just read (none if kvs is empty).
func (ps *pubState) setHead(k keys, kvs []*mvccpb.KeyValue) error {
	ps.cached = false
	if len(kvs) == 0 {
		ps.head, ps.headRev = head{}, 0
		return nil
	}
	hd, err := decodeHead(kvs[0].Value)
	if err != nil {
		return fmt.Errorf("pubsub: publish to %q: head at revision %d: %w", k.topic, kvs[0].ModRevision, err)
	}
	ps.head, ps.headRev = hd, kvs[0].ModRevision
	return nil
}

func (h *Hub) pubState(topic string) (*pubState, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, ErrHubClosed
	}
	ps := h.pubs[topic]
	if ps == nil {
		ps = &pubState{turn: make(chan struct{}, 1)}
		h.pubs[topic] = ps
	}
	return ps, nil
}
