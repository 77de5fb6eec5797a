package lock_test

import (
	"context"
	"testing"

	"github.com/concordkit/concord/internal/holdingtest"
	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/lock"
)

func unlock(ctx context.Context, h holdingtest.Holding) error { return h.(*lock.Hold).Unlock(ctx) }

func TestConformanceMutex(t *testing.T) {
	holdingtest.Run(t, cluster, "/conformance/mutex", holdingtest.Kind{
		ErrLost: lock.ErrLost, Exclusive: true,
		Acquire: func(ctx context.Context, k *leasekeeper.Keeper, name string) (holdingtest.Holding, error) {
			return lock.New(k, name).Lock(ctx)
		},
		Release: unlock,
	})
}

func TestConformanceRWMutexWrite(t *testing.T) {
	holdingtest.Run(t, cluster, "/conformance/rwmutex-write", holdingtest.Kind{
		ErrLost: lock.ErrLost, Exclusive: true,
		Acquire: func(ctx context.Context, k *leasekeeper.Keeper, name string) (holdingtest.Holding, error) {
			return lock.NewRWMutex(k, name).Lock(ctx)
		},
		Release: unlock,
	})
}

func TestConformanceRWMutexRead(t *testing.T) {
	holdingtest.Run(t, cluster, "/conformance/rwmutex-read", holdingtest.Kind{
		ErrLost: lock.ErrLost,
		Acquire: func(ctx context.Context, k *leasekeeper.Keeper, name string) (holdingtest.Holding, error) {
			return lock.NewRWMutex(k, name).RLock(ctx)
		},
		Release: unlock,
	})
}

func TestConformanceMultiHold(t *testing.T) {
	holdingtest.Run(t, cluster, "/conformance/multi", holdingtest.Kind{
		ErrLost: lock.ErrLost, Exclusive: true,
		Acquire: func(ctx context.Context, k *leasekeeper.Keeper, name string) (holdingtest.Holding, error) {
			return lock.NewMulti(k, name+"/a", name+"/b").Lock(ctx)
		},
		Release: func(ctx context.Context, h holdingtest.Holding) error { return h.(*lock.MultiHold).Unlock(ctx) },
	})
}
