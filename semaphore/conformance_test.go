package semaphore_test

import (
	"context"
	"strings"
	"testing"

	"github.com/concordkit/concord/internal/holdingtest"
	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/semaphore"
)

func TestConformancePermit(t *testing.T) {
	holdingtest.Run(t, cluster, "/conformance/permit", holdingtest.Kind{
		ErrLost: semaphore.ErrLost, Exclusive: true, // a limit of one
		Acquire: func(ctx context.Context, k *leasekeeper.Keeper, name string) (holdingtest.Holding, error) {
			return semaphore.New(k, name, 1).Acquire(ctx, 1)
		},
		Release:  func(ctx context.Context, h holdingtest.Holding) error { return h.(*semaphore.Permit).Release(ctx) },
		Leftover: func(key string) bool { return strings.HasSuffix(key, "/limit") },
	})
}
