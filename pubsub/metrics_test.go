package pubsub_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/concordkit/concord/pubsub"
)

// collect returns the named metric from reader, or fails.
func collect(t *testing.T, reader *sdkmetric.ManualReader, name string) metricdata.Aggregation {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(context.Background(), &rm))
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m.Data
			}
		}
	}
	t.Fatalf("metric %s not recorded", name)
	return nil
}

func TestMetrics(t *testing.T) {
	topic := topicFor(t, cluster)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })

	h := newHub(t, newClient(t, cluster), pubsub.WithMeterProvider(mp))
	s := subscribe(t, h, topic, pubsub.FromLatest(), pubsub.WithBuffer(2))
	publishN(t, newHub(t, cluster.Client()), topic, 5)
	nextMsg(t, s)
	nextMsg(t, s)
	g := nextGap(t, s)
	assert.Equal(t, pubsub.GapOverflow, g.Reason)

	gaps, ok := collect(t, reader, "concord.pubsub.gaps").(metricdata.Sum[int64])
	require.True(t, ok)
	require.Len(t, gaps.DataPoints, 1)
	assert.Equal(t, int64(1), gaps.DataPoints[0].Value)
	reason, _ := gaps.DataPoints[0].Attributes.Value(attribute.Key("pubsub.gap.reason"))
	assert.Equal(t, "overflow", reason.AsString())

	lag, ok := collect(t, reader, "concord.pubsub.delivery_lag").(metricdata.Histogram[float64])
	require.True(t, ok)
	require.Len(t, lag.DataPoints, 1)
	assert.Equal(t, uint64(2), lag.DataPoints[0].Count)
	assert.Less(t, lag.DataPoints[0].Sum, (10 * time.Second).Seconds())
}

func TestMetricsGlobalProviderByDefault(t *testing.T) {
	topic := topicFor(t, cluster)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	prev := otel.GetMeterProvider()
	otel.SetMeterProvider(mp)
	t.Cleanup(func() {
		otel.SetMeterProvider(prev)
		_ = mp.Shutdown(context.Background())
	})

	h := newHub(t, newClient(t, cluster))
	s := subscribe(t, h, topic, pubsub.FromLatest())
	publishN(t, newHub(t, cluster.Client()), topic, 1)
	nextMsg(t, s)
	lag, ok := collect(t, reader, "concord.pubsub.delivery_lag").(metricdata.Histogram[float64])
	require.True(t, ok)
	require.Len(t, lag.DataPoints, 1)
	assert.Equal(t, uint64(1), lag.DataPoints[0].Count)
}
