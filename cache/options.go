package cache

import (
	"log/slog"

	"go.opentelemetry.io/otel/metric"
)

// Option configures a Cache.
type Option func(*options)

type options struct {
	pageSize int64
	buffer   int
	meter    metric.MeterProvider
	logger   *slog.Logger
}

// DefaultPageSize is the number of keys read per page when a cache loads its
// prefix.
const DefaultPageSize = 2000

// DefaultBuffer is the number of batches a subscription holds before it is
// reset to a snapshot.
const DefaultBuffer = 1024

func defaults() options {
	return options{pageSize: DefaultPageSize, buffer: DefaultBuffer}
}

// WithPageSize sets how many keys one read of the initial load (and of a
// reload) returns. Larger pages mean fewer round trips and, because etcd
// counts the whole remaining range on every paged read, less work on the
// server; smaller pages bound the size of each response. Default 2000.
func WithPageSize(n int) Option { return func(o *options) { o.pageSize = int64(n) } }

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
