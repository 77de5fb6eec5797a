package barrier_test

import (
	"context"
	"testing"

	"github.com/concordkit/concord/barrier"
	"github.com/concordkit/concord/internal/holdingtest"
	"github.com/concordkit/concord/leasekeeper"
)

func TestConformanceSeat(t *testing.T) {
	holdingtest.Run(t, cluster, "/conformance/seat", holdingtest.Kind{
		ErrLost: barrier.ErrLost,
		Acquire: func(ctx context.Context, k *leasekeeper.Keeper, name string) (holdingtest.Holding, error) {
			return barrier.NewDouble(k, name, 1).Enter(ctx)
		},
		Release: func(ctx context.Context, h holdingtest.Holding) error { return h.(*barrier.Seat).Leave(ctx) },
	})
}
