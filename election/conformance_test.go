package election_test

import (
	"context"
	"testing"

	"github.com/concordkit/concord/election"
	"github.com/concordkit/concord/internal/holdingtest"
	"github.com/concordkit/concord/leasekeeper"
)

func TestConformanceTerm(t *testing.T) {
	holdingtest.Run(t, cluster, "/conformance/term", holdingtest.Kind{
		ErrLost: election.ErrLost, Exclusive: true,
		Acquire: func(ctx context.Context, k *leasekeeper.Keeper, name string) (holdingtest.Holding, error) {
			return election.New(k, name).Campaign(ctx, "v")
		},
		Release: func(ctx context.Context, h holdingtest.Holding) error { return h.(*election.Term).Resign(ctx) },
	})
}
