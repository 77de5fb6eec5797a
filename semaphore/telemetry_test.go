package semaphore_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/concordkit/concord/semaphore"
)

func TestTelemetry(t *testing.T) {
	name := semName(t)
	ctx := ctxT(t, 10*time.Second)
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()); _ = mp.Shutdown(context.Background()) })

	k := newKeeper(t, cluster.Client(), 2*time.Second)
	s := semaphore.New(k, name, 1, semaphore.WithTracerProvider(tp), semaphore.WithMeterProvider(mp))
	p, err := s.Acquire(ctx, 1)
	require.NoError(t, err)
	_, err = s.TryAcquire(ctx, 1)
	require.ErrorIs(t, err, semaphore.ErrNoPermits)
	require.NoError(t, p.Release(ctx))

	got := spans.GetSpans()
	require.Len(t, got, 2)
	attrs := func(s tracetest.SpanStub) map[attribute.Key]attribute.Value {
		out := map[attribute.Key]attribute.Value{}
		for _, kv := range s.Attributes {
			out[kv.Key] = kv.Value
		}
		return out
	}
	a := attrs(got[0])
	require.Equal(t, "semaphore.acquire", got[0].Name)
	require.Equal(t, "acquired", a["semaphore.outcome"].AsString())
	require.Equal(t, p.Token(), a["semaphore.token"].AsInt64())
	require.GreaterOrEqual(t, a["semaphore.wait_ms"].AsFloat64(), 0.0)
	require.Equal(t, "busy", attrs(got[1])["semaphore.outcome"].AsString())

	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(ctx, &rm))
	counts := map[string]uint64{}
	for _, sm := range rm.ScopeMetrics {
		for _, mt := range sm.Metrics {
			if hist, ok := mt.Data.(metricdata.Histogram[float64]); ok {
				for _, dp := range hist.DataPoints {
					counts[mt.Name] += dp.Count
				}
			}
		}
	}
	require.Equal(t, uint64(2), counts["concord.semaphore.wait.duration"])
	require.Equal(t, uint64(1), counts["concord.semaphore.hold.duration"])
}
