package cache_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/concordkit/concord/cache"
)

func TestStalenessMetric(t *testing.T) {
	p := prefixFor(t, cluster)
	defer cleanup(t, cluster, p)
	ctx := ctxT(t, 10*time.Second)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())

	c := newCache(t, cluster.Client(), p, cache.WithMeterProvider(mp))
	var last int64
	for i := range 5 {
		last = put(t, fmt.Sprintf("%sk%d", p, i), "v")
	}
	require.NoError(t, c.WaitRevision(ctx, last))

	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(ctx, &rm))
	var found bool
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "concord.cache.staleness" {
				continue
			}
			found = true
			assert.Equal(t, "s", m.Unit)
			h, ok := m.Data.(metricdata.Histogram[float64])
			require.True(t, ok, "%T", m.Data)
			require.Len(t, h.DataPoints, 1)
			dp := h.DataPoints[0]
			assert.EqualValues(t, 5, dp.Count)
			assert.Less(t, dp.Sum, 5.0, "staleness of 5 local applies")
		}
	}
	assert.True(t, found, "no concord.cache.staleness histogram")
}

// counterValue returns the sum of an Int64 counter's data points.
func counterValue(t *testing.T, rm metricdata.ResourceMetrics, name string) int64 {
	t.Helper()
	var total int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			sum, ok := m.Data.(metricdata.Sum[int64])
			require.True(t, ok, "%T", m.Data)
			for _, dp := range sum.DataPoints {
				total += dp.Value
			}
		}
	}
	return total
}
