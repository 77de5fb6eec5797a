package pubsub

import (
	"fmt"
	"time"

	"go.opentelemetry.io/otel/metric"
)

// Retention limits.
const (
	// DefaultRetainCount is how many messages a topic keeps when its first
	// publisher does not say.
	DefaultRetainCount = 1000
	// MaxRetainCount bounds a topic's ring: every catch-up read and every
	// age trim reads at most this many keys.
	MaxRetainCount = 1 << 20
	// DefaultBuffer is how many events a subscription holds for a reader
	// that falls behind before it drops messages and owes a gap notice.
	DefaultBuffer = 256
)

// PublishOption sets a topic's retention. Retention is fixed by the first
// publish to a topic and stored in its head; a later publish that passes a
// different retention fails with ErrRetention instead of silently changing
// what other publishers and subscribers rely on. A publish without options
// adopts whatever the topic has.
type PublishOption func(*pubConfig)

type pubConfig struct {
	count    uint64
	maxAge   time.Duration
	countSet bool
	ageSet   bool
	badCount int64 // the invalid value asked for, for the error
}

// WithMaxCount keeps the newest n messages (default DefaultRetainCount, at
// most MaxRetainCount). It is the size of the topic's ring of slot keys: a
// publish overwrites the oldest slot in the same transaction, so trimming by
// count costs nothing and leaves no tombstones.
func WithMaxCount(n int) PublishOption {
	return func(c *pubConfig) {
		c.countSet = true
		if n < 1 || n > MaxRetainCount {
			c.badCount = int64(n)
			c.count = 0
			return
		}
		c.count = uint64(n)
	}
}

// WithMaxAge also drops messages older than d (by the publisher's clock).
// They are deleted by the age trimmer of the Hub that published to the
// topic, within about d/4 of expiring (see the package doc). d = 0 means no
// age limit.
func WithMaxAge(d time.Duration) PublishOption {
	return func(c *pubConfig) { c.ageSet, c.maxAge = true, d }
}

func (c *pubConfig) validate() error {
	if c.countSet && c.count == 0 {
		return fmt.Errorf("%w: count %d: must be between 1 and %d", ErrRetention, c.badCount, MaxRetainCount)
	}
	if c.ageSet && c.maxAge < 0 {
		return fmt.Errorf("%w: age %v: must be 0 (none) or more", ErrRetention, c.maxAge)
	}
	if c.ageSet && c.maxAge > 0 && c.maxAge < time.Millisecond {
		return fmt.Errorf("%w: age %v: must be at least 1ms", ErrRetention, c.maxAge)
	}
	return nil
}

// SubscribeOption configures one subscription.
type SubscribeOption func(*subConfig)

type subConfig struct {
	buffer int
}

// WithBuffer sets how many events the subscription holds for a slow reader
// (default DefaultBuffer, at least 1). When it is full, further messages are
// dropped for this subscription alone and reported by one Gap once the
// reader catches up; other subscriptions on the topic are not held back.
func WithBuffer(n int) SubscribeOption { return func(c *subConfig) { c.buffer = n } }

// HubOption configures a Hub.
type HubOption func(*hubConfig)

type hubConfig struct {
	meter metric.MeterProvider
}

// WithMeterProvider sends the Hub's metrics to mp instead of the global
// meter provider.
func WithMeterProvider(mp metric.MeterProvider) HubOption {
	return func(c *hubConfig) { c.meter = mp }
}

// From says where a subscription starts.
type From struct {
	kind fromKind
	rev  int64
}

type fromKind int

const (
	fromLatest fromKind = iota
	fromRevision
	fromOldest
)

// FromLatest delivers the messages published after Subscribe returns, and
// possibly a few published while it ran or just before: the member that
// serves the watch can lag the one that acknowledged them.
func FromLatest() From { return From{kind: fromLatest} }

// FromRevision delivers the messages published at revision rev or later: pass
// the last delivered Message.Rev + 1 to resume. Messages at or after rev that
// are no longer retained are reported as a Gap.
func FromRevision(rev int64) From { return From{kind: fromRevision, rev: rev} }

// FromOldest delivers every retained message, oldest first, then new ones.
func FromOldest() From { return From{kind: fromOldest} }

func (f From) String() string {
	switch f.kind {
	case fromLatest:
		return "latest"
	case fromOldest:
		return "oldest"
	default:
		return fmt.Sprintf("revision %d", f.rev)
	}
}
