package barrier_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/concordkit/concord/barrier"
)

func TestTelemetry(t *testing.T) {
	name := t.Name()
	assertNoKeys(t, name)
	ctx := ctxT(t, 20*time.Second)
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer tp.Shutdown(context.Background())
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	opts := []barrier.Option{barrier.WithTracerProvider(tp), barrier.WithMeterProvider(mp)}

	require.NoError(t, barrier.New(cluster.Client(), name, opts...).Wait(ctx))
	s, err := barrier.NewDouble(newProcess(t, 2*time.Second).k, name, 1, opts...).Enter(ctx)
	require.NoError(t, err)
	require.NoError(t, s.Leave(ctx))

	spans := exp.GetSpans()
	require.Len(t, spans, 3)
	for i, kind := range []string{"barrier", "double.enter", "double.leave"} {
		assert.Equal(t, "barrier.wait", spans[i].Name)
		a := map[attribute.Key]attribute.Value{}
		for _, kv := range spans[i].Attributes {
			a[kv.Key] = kv.Value
		}
		assert.Equal(t, kind, a["barrier.kind"].AsString())
		assert.Equal(t, "ok", a["barrier.outcome"].AsString())
		assert.Contains(t, a, attribute.Key("barrier.wait_ms"))
		if i > 0 {
			assert.Equal(t, s.Token(), a["barrier.token"].AsInt64())
		}
	}

	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(ctx, &rm))
	require.Len(t, rm.ScopeMetrics, 1)
	m := rm.ScopeMetrics[0].Metrics[0]
	assert.Equal(t, "concord.barrier.wait.duration", m.Name)
	var n uint64
	for _, dp := range m.Data.(metricdata.Histogram[float64]).DataPoints {
		n += dp.Count
	}
	assert.Equal(t, uint64(3), n)
}
