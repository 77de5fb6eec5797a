package election_test

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

	"github.com/concordkit/concord/election"
)

func attrs(kvs []attribute.KeyValue) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range kvs {
		m[kv.Key] = kv.Value
	}
	return m
}

func TestTelemetry(t *testing.T) {
	name := t.Name()
	assertNoKeys(t, cluster, name)
	ctx := ctxT(t, 20*time.Second)
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer tp.Shutdown(context.Background())
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())

	e := election.New(newProcess(t, cluster, 2*time.Second).k, name,
		election.WithTracerProvider(tp), election.WithMeterProvider(mp))
	term, err := e.Campaign(ctx, "v")
	require.NoError(t, err)
	require.NoError(t, term.Resign(ctx))
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = e.Campaign(cctx, "v")
	require.Error(t, err)

	spans := exp.GetSpans()
	require.Len(t, spans, 2)
	for i, want := range []string{"acquired", "canceled"} {
		assert.Equal(t, "election.campaign", spans[i].Name)
		a := attrs(spans[i].Attributes)
		assert.Equal(t, want, a["election.outcome"].AsString())
		assert.Equal(t, name, a["election.name"].AsString())
		assert.Contains(t, a, attribute.Key("election.wait_ms"))
	}
	assert.Equal(t, term.Token(), attrs(spans[0].Attributes)["election.token"].AsInt64())

	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(ctx, &rm))
	found := map[string]bool{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			found[m.Name] = true
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				require.Len(t, d.DataPoints, 1)
				assert.Equal(t, int64(1), d.DataPoints[0].Value, m.Name)
			case metricdata.Histogram[float64]:
				if m.Name == "concord.election.wait.duration" {
					// One campaign was elected, one canceled.
					outcomes := map[string]uint64{}
					for _, dp := range d.DataPoints {
						v, _ := dp.Attributes.Value("election.outcome")
						outcomes[v.AsString()] += dp.Count
					}
					assert.Equal(t, map[string]uint64{"acquired": 1, "canceled": 1}, outcomes)
					continue
				}
				require.Len(t, d.DataPoints, 1)
				assert.Equal(t, uint64(1), d.DataPoints[0].Count, m.Name)
			}
		}
	}
	assert.True(t, found["concord.election.leadership_changes"], "%v", found)
	assert.True(t, found["concord.election.hold.duration"], "%v", found)
	assert.True(t, found["concord.election.wait.duration"], "%v", found)
}
