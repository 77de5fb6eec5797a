// Package acquiretel records the telemetry of recipes that wait to acquire a
// holding (a lock, semaphore permits, a leadership term): a
// "<recipe>.acquire" span (election: "election.campaign") carrying the wait,
// token and outcome, and the concord.<recipe>.wait.duration and
// concord.<recipe>.hold.duration histograms in seconds.
//
// Every acquisition ends with one outcome of one vocabulary, the same in
// every recipe: Acquired, Busy (a Try call found the holding taken),
// Canceled (the caller's context ended), Lost (the lease or key went while
// waiting) or Error.
package acquiretel

import (
	"context"
	"errors"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Config names a recipe's instruments and classifies its outcomes.
type Config struct {
	Scope  string // instrumentation scope, the recipe's import path
	Prefix string // "lock" → span lock.acquire, attributes lock.*, metrics concord.lock.*
	Span   string // the span's name after the prefix; empty: "acquire"
	Attrs  []attribute.KeyValue
	// Busy is the error of a Try call that found the holding taken (outcome
	// Busy); Lost is the recipe's ErrLost (outcome Lost).
	Busy error
	Lost error
	// WaitHelp and HoldHelp describe the two histograms.
	WaitHelp, HoldHelp string
}

// The outcomes of an acquisition, as the <recipe>.outcome attribute of the
// span and of the wait histogram.
const (
	Acquired = "acquired"
	Busy     = "busy"
	Canceled = "canceled"
	Lost     = "lost"
	Error    = "error"
)

// Recorder holds one recipe value's instruments. With no provider installed
// the global ones are no-ops and cost a few nanoseconds.
type Recorder struct {
	cfg    Config
	tracer trace.Tracer
	wait   metric.Float64Histogram
	hold   metric.Float64Histogram
	attrs  attribute.Set
}

// New returns a recorder on tp and mp (nil: the global providers).
func New(cfg Config, tp trace.TracerProvider, mp metric.MeterProvider) *Recorder {
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	m := mp.Meter(cfg.Scope)
	// Errors from instrument creation only report invalid names; the
	// returned instruments are usable no-ops either way.
	wait, _ := m.Float64Histogram("concord."+cfg.Prefix+".wait.duration", metric.WithUnit("s"),
		metric.WithDescription(cfg.WaitHelp))
	hold, _ := m.Float64Histogram("concord."+cfg.Prefix+".hold.duration", metric.WithUnit("s"),
		metric.WithDescription(cfg.HoldHelp))
	return &Recorder{cfg: cfg, tracer: tp.Tracer(cfg.Scope), wait: wait, hold: hold, attrs: attribute.NewSet(cfg.Attrs...)}
}

// Span is one acquisition in progress.
type Span struct {
	r     *Recorder
	sp    trace.Span
	start time.Time
}

// StartAcquire opens the acquisition's span.
func (r *Recorder) StartAcquire(ctx context.Context, try bool) (context.Context, *Span) {
	name := r.cfg.Span
	if name == "" {
		name = "acquire"
	}
	ctx, sp := r.tracer.Start(ctx, r.cfg.Prefix+"."+name, trace.WithAttributes(r.attrs.ToSlice()...),
		trace.WithAttributes(attribute.Bool(r.cfg.Prefix+".try", try)))
	return ctx, &Span{r: r, sp: sp, start: time.Now()}
}

// End records the outcome of an acquisition with the wait and, on success,
// the token.
func (s *Span) End(ctx context.Context, token int64, err error) {
	c := s.r.cfg
	waited := time.Since(s.start)
	outcome := Acquired
	switch {
	case err == nil:
	case c.Busy != nil && errors.Is(err, c.Busy):
		outcome = Busy
	case c.Lost != nil && errors.Is(err, c.Lost):
		outcome = Lost
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil:
		outcome = Canceled
	default:
		outcome = Error
	}
	s.sp.SetAttributes(
		attribute.Float64(c.Prefix+".wait_ms", float64(waited)/float64(time.Millisecond)),
		attribute.String(c.Prefix+".outcome", outcome))
	if err == nil {
		s.sp.SetAttributes(attribute.Int64(c.Prefix+".token", token))
	} else if outcome == Error || outcome == Lost {
		s.sp.RecordError(err)
		s.sp.SetStatus(codes.Error, err.Error())
	}
	s.sp.End()
	s.r.wait.Record(context.WithoutCancel(ctx), waited.Seconds(),
		metric.WithAttributeSet(s.r.attrs), metric.WithAttributes(attribute.String(c.Prefix+".outcome", outcome)))
}

// Held records how long a holding was held.
func (r *Recorder) Held(d time.Duration) {
	r.hold.Record(context.Background(), d.Seconds(), metric.WithAttributeSet(r.attrs))
}
