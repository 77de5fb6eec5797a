package lock_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/lock"
)

// A waiter watches only the keys just ahead of it, so the waiters that leave
// from the middle of the queue — canceled, or their lease lost — must not
// let anyone behind them through while the holder holds: each departure is
// checked against what remains ahead. Every waiter has its own keeper, so
// a lease can be revoked under one alone. Any grant while another hold is
// out is counted, whenever it happens.
func TestWaitersAheadLeave(t *testing.T) {
	name := lockName(t)
	ctx := ctxT(t, 30*time.Second)
	var out atomic.Int32 // holds granted and not yet released
	var overlaps atomic.Int32
	grant := func(h *lock.Hold) {
		if out.Add(1) != 1 {
			overlaps.Add(1)
		}
	}
	// The count drops as Unlock is called: the next waiter may be granted
	// before Unlock's answer arrives.
	release := func(h *lock.Hold) {
		out.Add(-1)
		require.NoError(t, h.Unlock(ctx))
	}

	holderK := newKeeper(t, newClient(t), 2*time.Second)
	h, err := lock.New(holderK, name).Lock(ctx)
	require.NoError(t, err)
	grant(h)

	const n = 7
	type waiter struct {
		ch     chan lockResult
		cancel context.CancelFunc
		k      *leasekeeper.Keeper
	}
	ws := make([]waiter, n)
	for i := range ws {
		k := newKeeper(t, newClient(t), 2*time.Second)
		wctx, cancel := context.WithCancel(ctx)
		ch := make(chan lockResult, 1)
		m := lock.New(k, name)
		go func() {
			h, err := m.Lock(wctx)
			if err == nil {
				grant(h)
			}
			ch <- lockResult{h, err}
		}()
		ws[i] = waiter{ch: ch, cancel: cancel, k: k}
		waitQueue(t, name, i+2)
	}

	// Leave from the back and the middle: the last waiter's nearest (5) and
	// then its next nearest (4, by lease), then 1 and 2 with a holder and
	// others still ahead, so the waiters behind them must read what is left.
	ws[5].cancel()
	require.ErrorIs(t, recv(t, ws[5].ch, 5*time.Second).err, context.Canceled)
	require.NoError(t, cluster.RevokeLease(ctx, ws[4].k.Current().ID()))
	require.ErrorIs(t, recv(t, ws[4].ch, 5*time.Second).err, lock.ErrLost)
	ws[1].cancel()
	require.ErrorIs(t, recv(t, ws[1].ch, 5*time.Second).err, context.Canceled)
	require.NoError(t, cluster.RevokeLease(ctx, ws[2].k.Current().ID()))
	require.ErrorIs(t, recv(t, ws[2].ch, 5*time.Second).err, lock.ErrLost)
	waitQueue(t, name, 4) // the holder, 0, 3 and 6
	for _, i := range []int{0, 3, 6} {
		select {
		case r := <-ws[i].ch:
			t.Fatalf("waiter %d got %v while the holder held the lock", i, r.err)
		default:
		}
	}

	// The rest are granted one at a time, in order.
	release(h)
	for _, i := range []int{0, 3, 6} {
		r := recv(t, ws[i].ch, 5*time.Second)
		require.NoError(t, r.err, "waiter %d", i)
		release(r.h)
	}
	require.Zero(t, overlaps.Load(), "a waiter was granted while another held the lock")
	for _, w := range ws {
		w.cancel()
	}
}

// A waiter whose own key goes before, or together with, the last key ahead
// of it gets ErrLost, never a Hold: its own key and the keys ahead are on
// separate watches, whose events may reach it in either order. The key goes
// by a revoke of the waiter's lease behind its keeper's back (the keeper
// has a long TTL, so it does not notice first), or in one transaction with
// the holder's key.
func TestOwnKeyGoneWithLastAhead(t *testing.T) {
	for i := range 16 {
		revoke := i%2 == 0
		t.Run(fmt.Sprintf("%d_revoke_%v", i, revoke), func(t *testing.T) {
			name := lockName(t)
			ctx := ctxT(t, 20*time.Second)
			holderK := newKeeper(t, newClient(t), 5*time.Second)
			waiterK := newKeeper(t, newClient(t), 60*time.Second)
			h, err := lock.New(holderK, name).Lock(ctx)
			require.NoError(t, err)
			ch := lockAsync(ctx, lock.New(waiterK, name))
			waitQueue(t, name, 2)
			if revoke {
				require.NoError(t, cluster.RevokeLease(ctx, waiterK.Current().ID()))
				require.NoError(t, h.Unlock(ctx))
			} else {
				resp, err := cluster.Admin().Get(ctx, name+"/.lock/q/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
				require.NoError(t, err)
				require.Len(t, resp.Kvs, 2)
				_, err = cluster.Admin().Txn(ctx).Then(
					clientv3.OpDelete(string(resp.Kvs[0].Key)),
					clientv3.OpDelete(string(resp.Kvs[1].Key))).Commit()
				require.NoError(t, err)
				require.NoError(t, h.Unlock(ctx))
			}
			r := recv(t, ch, 5*time.Second)
			if r.err == nil {
				_ = r.h.Unlock(ctx)
			}
			require.ErrorIs(t, r.err, lock.ErrLost, "a waiter whose key was gone got a Hold")
			require.Nil(t, r.h)
		})
	}
}

// A lock name may be any UTF-8: nothing derived from it goes where only
// ASCII is allowed (such as gRPC metadata).
func TestUnicodeName(t *testing.T) {
	name := lockName(t, "naïve", "日本")
	ctx := ctxT(t, 10*time.Second)
	k := newKeeper(t, newClient(t), 2*time.Second)
	h, err := lock.New(k, name).Lock(ctx)
	require.NoError(t, err)
	ch := lockAsync(ctx, lock.New(k, name))
	waitQueue(t, name, 2)
	require.NoError(t, h.Unlock(ctx))
	r := recv(t, ch, 5*time.Second)
	require.NoError(t, r.err)
	require.NoError(t, r.h.Unlock(ctx))
	rw := lock.NewRWMutex(k, name)
	rh, err := rw.RLock(ctx)
	require.NoError(t, err)
	require.NoError(t, rh.Unlock(ctx))
}

// An unlock touches the key of the next waiter, as the holder's last read
// saw it, in the same revision as its delete: the waiter takes the touch as
// proof its key stood. A touch never writes a key that went in between.
func TestUnlockTouchesNext(t *testing.T) {
	for _, nextLeaves := range []bool{false, true} {
		t.Run(fmt.Sprintf("nextLeaves=%v", nextLeaves), func(t *testing.T) {
			name := lockName(t)
			ctx := ctxT(t, 30*time.Second)
			mutex := func() *lock.Mutex { return lock.New(newKeeper(t, newClient(t), 2*time.Second), name) }
			hA, err := mutex().Lock(ctx)
			require.NoError(t, err)
			// Queue: A (holder), P, Q, B, C. B watches Q and P and knows A
			// too, so a departure ahead makes it read the queue, and learn
			// C behind it.
			var chs []<-chan lockResult
			cctx, cancelC := context.WithCancel(ctx)
			defer cancelC()
			mutexC := mutex()
			for i := range 4 {
				lctx, m := ctx, mutex()
				if i == 3 {
					lctx, m = cctx, mutexC
				}
				chs = append(chs, lockAsync(lctx, m))
				waitQueue(t, name, i+2)
			}
			info, err := lock.Inspect(ctx, cluster.Client(), name)
			require.NoError(t, err)
			keyC := info.Waiters[3].Key
			require.NoError(t, hA.Unlock(ctx))
			var hB *lock.Hold
			for i := range 3 {
				r := recv(t, chs[i], 5*time.Second)
				require.NoError(t, r.err)
				if i == 2 {
					hB = r.h
				} else {
					require.NoError(t, r.h.Unlock(ctx))
				}
			}
			version := func() int64 {
				resp, err := cluster.Admin().Get(ctx, keyC)
				require.NoError(t, err)
				if len(resp.Kvs) == 0 {
					return 0
				}
				return resp.Kvs[0].Version
			}
			require.EqualValues(t, 1, version(), "C was written before B unlocked")
			if nextLeaves {
				cancelC()
				r := recv(t, chs[3], 5*time.Second)
				require.Error(t, r.err)
				waitQueue(t, name, 1)
				require.Zero(t, version())
				// C asks again: its key comes back as a new incarnation,
				// which B's unlock must not touch.
				ch := lockAsync(ctx, mutexC)
				waitQueue(t, name, 2)
				require.NoError(t, hB.Unlock(ctx), "an unlock whose next went in between")
				r = recv(t, ch, 5*time.Second)
				require.NoError(t, r.err)
				require.EqualValues(t, 1, version(), "the touch wrote onto a newer incarnation")
				require.NoError(t, r.h.Unlock(ctx))
				requireNoKeys(t, name)
				return
			}
			require.NoError(t, hB.Unlock(ctx))
			r := recv(t, chs[3], 5*time.Second)
			require.NoError(t, r.err)
			require.EqualValues(t, 2, version(), "B's unlock did not touch C")
			require.NoError(t, r.h.Unlock(ctx))
			requireNoKeys(t, name)
		})
	}
}

// Under contention deep enough for holders to know who is next, grants are
// confirmed by the touch of the unlock ahead, not by a progress request.
func TestTouchSparesProgress(t *testing.T) {
	name := lockName(t)
	ctx := ctxT(t, 60*time.Second)
	const n, cycles = 6, 15
	ms := make([]*lock.Mutex, n)
	for i := range ms {
		ms[i] = lock.New(newKeeper(t, newClient(t), 2*time.Second), name)
	}
	touch0, progress0 := lock.ConfirmsBy()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for _, m := range ms {
		wg.Go(func() {
			for range cycles {
				h, err := m.Lock(ctx)
				if err != nil {
					errs <- err
					return
				}
				if err := h.Unlock(ctx); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	touch, progress := lock.ConfirmsBy()
	touch, progress = touch-touch0, progress-progress0
	t.Logf("%d grants: %d confirmed by a touch, %d by a progress request", n*cycles, touch, progress)
	require.Positive(t, touch, "no grant was confirmed by a touch")
	require.LessOrEqual(t, touch+progress, int64(n*cycles))
	requireNoKeys(t, name)
}
