package cache

import (
	"log/slog"

	"go.opentelemetry.io/otel/metric"
)

// Option configures a Cache.
type Option func(*options)

type options struct {
	pageSize  int64 // 0: sized by pageBytes
	pageBytes int64
	buffer    int
	meter     metric.MeterProvider
	logger    *slog.Logger
}

// DefaultPageBytes is the size a page of the initial load aims at.
const DefaultPageBytes = 4 << 20

// Page sizes in keys: the first page of a load, and the bounds of the later
// pages' sizes when they are derived from DefaultPageBytes.
const (
	firstPageKeys = 1000
	minPageKeys   = 100
	maxPageKeys   = 100_000
)

// DefaultBuffer is the number of batches a subscription holds before it is
// reset to a snapshot.
const DefaultBuffer = 1024

func defaults() options {
	return options{pageBytes: DefaultPageBytes, buffer: DefaultBuffer}
}

// WithPageSize fixes how many keys one read of the initial load (and of a
// reload) returns. By default the first page is 1000 keys and each later page
// is sized from the average size of the keys read so far to carry about
// DefaultPageBytes (4 MiB), between 100 and 100,000 keys. Larger pages mean
// fewer round trips and, because etcd counts the whole remaining range on
// every paged read, much less work on the server (measured on 100k keys of
// 100 bytes: 1,000-key pages took 4x as long as one unpaged read, 10,000-key
// pages about as long); smaller pages bound the size of each response.
func WithPageSize(n int) Option {
	return func(o *options) {
		o.pageSize = int64(n)
		if n <= 0 {
			o.pageSize = -1 // refused by New
		}
	}
}

// WithBuffer sets how many batches a subscription may hold unread. A
// subscriber that falls further behind is reset: its queued batches are
// dropped and replaced by one snapshot of the current state (see Batch).
// Default 1024.
func WithBuffer(n int) Option { return func(o *options) { o.buffer = n } }

// WithMeterProvider sets the OpenTelemetry meter provider for the cache's
// metrics (default: the global one).
func WithMeterProvider(mp metric.MeterProvider) Option { return func(o *options) { o.meter = mp } }

// WithLogger sets the logger for watch failures and reloads (default:
// slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }
