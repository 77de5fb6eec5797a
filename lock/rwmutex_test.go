package lock_test

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/lock"
)

func rwCount(t testing.TB, name string) int {
	t.Helper()
	resp, err := cluster.Admin().Get(ctxT(t, 5*time.Second), name+"/.rwlock/q/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)
	return int(resp.Count)
}

func waitRW(t testing.TB, name string, n int) {
	t.Helper()
	waitFor(t, 10*time.Second, "rwlock queue", func() bool { return rwCount(t, name) == n })
}

func rlockAsync(ctx context.Context, rw *lock.RWMutex, reader bool) <-chan lockResult {
	ch := make(chan lockResult, 1)
	go func() {
		var h *lock.Hold
		var err error
		if reader {
			h, err = rw.RLock(ctx)
		} else {
			h, err = rw.Lock(ctx)
		}
		ch <- lockResult{h, err}
	}()
	return ch
}

func notYet(t testing.TB, ch <-chan lockResult) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("granted out of turn (err %v)", r.err)
	default:
	}
}

// Readers share; a writer waits for earlier readers; a reader that comes
// after a waiting writer waits for it.
func TestRWMutexOrder(t *testing.T) {
	name := lockName(t)
	ctx := ctxT(t, 20*time.Second)
	k := newKeeper(t, cluster.Client(), 2*time.Second)
	rw := lock.NewRWMutex(k, name)

	r1, err := rw.RLock(ctx)
	require.NoError(t, err)
	r2, err := rw.RLock(ctx)
	require.NoError(t, err)
	w := rlockAsync(ctx, rw, false)
	waitRW(t, name, 3)
	r3 := rlockAsync(ctx, rw, true)
	waitRW(t, name, 4)
	notYet(t, w)
	notYet(t, r3)

	require.NoError(t, r1.Unlock(ctx))
	notYet(t, w)
	require.NoError(t, r2.Unlock(ctx))
	rw1 := recv(t, w, 5*time.Second)
	require.NoError(t, rw1.err)
	notYet(t, r3)
	require.NoError(t, rw1.h.Unlock(ctx))
	rr := recv(t, r3, 5*time.Second)
	require.NoError(t, rr.err)
	require.Greater(t, rr.h.Token(), rw1.h.Token())
	require.NoError(t, rr.h.Unlock(ctx))
	requireNoKeys(t, name)
}

// etcd issue 16221: etcd's RWMutex grants a writer whose session expired
// while it waited. Here a waiting writer whose lease is revoked, or whose
// client is cut off until its lease expires, gets ErrLost, never a Hold, and
// the lock passes on to the next request.
func TestRWMutexWriterLeaseExpiredWhileWaiting(t *testing.T) {
	name := lockName(t)
	ctx := ctxT(t, 30*time.Second)
	kr := newKeeper(t, newClient(t), 2*time.Second)
	reader, err := lock.NewRWMutex(kr, name).RLock(ctx)
	require.NoError(t, err)

	// Revoked on the server.
	kw := newKeeper(t, newClient(t), 2*time.Second)
	w := rlockAsync(ctx, lock.NewRWMutex(kw, name), false)
	waitRW(t, name, 2)
	require.NoError(t, cluster.RevokeLease(ctx, kw.Current().ID()))
	r := recv(t, w, 5*time.Second)
	require.ErrorIs(t, r.err, lock.ErrLost)
	require.Nil(t, r.h)

	// Expired while the writer's process lives on, cut off.
	cutCli := newClient(t)
	kc := newKeeper(t, cutCli, 2*time.Second)
	w = rlockAsync(ctx, lock.NewRWMutex(kc, name), false)
	waitRW(t, name, 2)
	later := rlockAsync(ctx, lock.NewRWMutex(kr, name), false)
	waitRW(t, name, 3)
	cluster.CutClient(cutCli)
	r = recv(t, w, 10*time.Second)
	require.ErrorIs(t, r.err, lock.ErrLost)
	require.Nil(t, r.h)
	cluster.RestoreClient(cutCli)

	require.NoError(t, reader.Unlock(ctx))
	rl := recv(t, later, 10*time.Second)
	require.NoError(t, rl.err)
	require.NoError(t, rl.h.Unlock(ctx))
}

// Writers exclude everyone, readers overlap only with readers, under
// contention.
func TestRWMutexExclusion(t *testing.T) {
	name := lockName(t)
	ctx := ctxT(t, 60*time.Second)
	var readers, writers, bad atomic.Int32
	var wg sync.WaitGroup
	for ki := range 2 {
		k := newKeeper(t, newClient(t), 2*time.Second)
		rw := lock.NewRWMutex(k, name)
		for g := range 6 {
			wg.Go(func() {
				for range 3 {
					reader := (g+ki)%3 != 0
					var h *lock.Hold
					var err error
					if reader {
						h, err = rw.RLock(ctx)
					} else {
						h, err = rw.Lock(ctx)
					}
					if err != nil {
						t.Error(err)
						return
					}
					if reader {
						readers.Add(1)
						if writers.Load() != 0 {
							bad.Add(1)
						}
						readers.Add(-1)
					} else {
						if writers.Add(1) != 1 || readers.Load() != 0 {
							bad.Add(1)
						}
						writers.Add(-1)
					}
					if err := h.Unlock(ctx); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	require.Zero(t, bad.Load(), "readers and writers overlapped")
}

// Multi takes all or nothing, in sorted order, and its Hold covers every
// part.
func TestMulti(t *testing.T) {
	a, b, c := lockName(t, "a"), lockName(t, "b"), lockName(t, "c")
	ctx := ctxT(t, 20*time.Second)
	k1 := newKeeper(t, newClient(t), 2*time.Second)
	k2 := newKeeper(t, newClient(t), 2*time.Second)

	_, err := lock.NewMulti(k1).Lock(ctx)
	require.ErrorContains(t, err, "lock: multi-lock of no names")
	_, err = lock.NewMulti(k1, a, "").Lock(ctx)
	require.ErrorContains(t, err, "lock: invalid name")

	m := lock.NewMulti(k1, c, a, b, a)
	require.Equal(t, []string{a, b, c}, m.Names())
	h, err := m.Lock(ctx)
	require.NoError(t, err)
	require.Len(t, h.Tokens(), 3)
	require.Len(t, h.Guard(), 3)
	require.Equal(t, h.Tokens()[0], h.Token())

	// Another Multi sharing one name fails TryLock and leaves nothing taken.
	other := lock.NewMulti(k2, a, "/test/"+t.Name()+"_z")
	t.Cleanup(func() { requireNoKeys(t, "/test/"+t.Name()+"_z") })
	_, err = other.TryLock(ctx)
	require.ErrorIs(t, err, lock.ErrLocked)
	require.Equal(t, 0, queueLen(t, "/test/"+t.Name()+"_z"))

	require.NoError(t, h.Unlock(ctx))

	// Any part forced away cancels the whole hold, and from then on the
	// guard refuses a write through every member.
	for _, victim := range []string{a, b, c} {
		h, err := m.Lock(ctx)
		require.NoError(t, err)
		_, err = lock.ForceRelease(ctx, cluster.Client(), victim)
		require.NoError(t, err)
		select {
		case <-h.Context().Done():
		case <-time.After(5 * time.Second):
			t.Fatalf("multi hold not canceled when part %s was lost", victim)
		}
		require.ErrorIs(t, context.Cause(h.Context()), lock.ErrLost)
		require.ErrorIs(t, context.Cause(h.Context()), lock.ErrRevoked)
		requireFenced(t, ctx, h)
		require.NoError(t, h.Unlock(ctx))
		require.NoError(t, h.Unlock(ctx))
	}

	// Deadlock-free: two Multis over the same names in opposite order.
	var wg sync.WaitGroup
	for i, k := range []*leasekeeper.Keeper{k1, k2} {
		names := []string{a, b, c}
		if i == 1 {
			names = []string{c, b, a}
		}
		mm := lock.NewMulti(k, names...)
		wg.Go(func() {
			for range 5 {
				h, err := mm.Lock(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				if err := h.Unlock(ctx); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
}

// requireFenced checks that a write guarded by h is refused through every
// member. The check must be a write: a transaction with no operations (or
// only serializable reads) is read-only, and etcd answers it from the
// serving member's own state without a read barrier, so a follower that has
// not yet applied the deletion would still let the guard pass.
func requireFenced(t *testing.T, ctx context.Context, h interface{ Guard() []clientv3.Cmp }) {
	t.Helper()
	fenced := "/test/" + strings.ReplaceAll(t.Name(), "/", "_") + "_fenced"
	t.Cleanup(func() { _, _ = cluster.Admin().Delete(context.Background(), fenced) })
	for i := range cluster.Size() {
		resp, err := cluster.ClientTo(i).Txn(ctx).If(h.Guard()...).Then(clientv3.OpPut(fenced, "written")).Commit()
		require.NoError(t, err)
		require.False(t, resp.Succeeded, "a write guarded by a lost hold succeeded through member %d", i)
	}
	resp, err := cluster.Admin().Get(ctx, fenced)
	require.NoError(t, err)
	require.Empty(t, resp.Kvs)
}

// InspectRWMutex shows the readers sharing the lock as holders, and the
// writer and later reader waiting behind them in order.
func TestInspectRWMutex(t *testing.T) {
	name := lockName(t)
	ctx := ctxT(t, 20*time.Second)
	k := newKeeper(t, cluster.Client(), 2*time.Second)
	rw := lock.NewRWMutex(k, name, lock.WithValue("v"))
	info, err := lock.InspectRWMutex(ctx, cluster.Client(), name)
	require.NoError(t, err)
	require.Nil(t, info.Holder)
	require.Empty(t, info.Holders)

	r1, err := rw.RLock(ctx)
	require.NoError(t, err)
	r2, err := rw.RLock(ctx)
	require.NoError(t, err)
	w := rlockAsync(ctx, rw, false)
	waitRW(t, name, 3)
	r3 := rlockAsync(ctx, rw, true)
	waitRW(t, name, 4)

	info, err = lock.InspectRWMutex(ctx, cluster.Client(), name)
	require.NoError(t, err)
	require.Len(t, info.Holders, 2)
	require.Equal(t, r1.Token(), info.Holder.Token)
	require.Equal(t, []int64{r1.Token(), r2.Token()}, []int64{info.Holders[0].Token, info.Holders[1].Token})
	require.True(t, info.Holders[0].Reader && info.Holders[1].Reader)
	require.Len(t, info.Waiters, 2)
	require.False(t, info.Waiters[0].Reader, "the writer waits first")
	require.True(t, info.Waiters[1].Reader)
	require.Equal(t, "v", info.Waiters[0].Value)

	require.NoError(t, r1.Unlock(ctx))
	require.NoError(t, r2.Unlock(ctx))
	rw1 := recv(t, w, 5*time.Second)
	require.NoError(t, rw1.err)
	info, err = lock.InspectRWMutex(ctx, cluster.Client(), name)
	require.NoError(t, err)
	require.Len(t, info.Holders, 1, "a writer holds alone")
	require.False(t, info.Holder.Reader)
	require.Equal(t, rw1.h.Token(), info.Holder.Token)
	require.Len(t, info.Waiters, 1)
	require.NoError(t, rw1.h.Unlock(ctx))
	rr := recv(t, r3, 5*time.Second)
	require.NoError(t, rr.err)
	require.NoError(t, rr.h.Unlock(ctx))

	// A key of another shape under the queue is an error, not a panic.
	foreign := name + "/.rwlock/q/"
	_, err = cluster.Admin().Put(ctx, foreign, "c1:1:x")
	require.NoError(t, err)
	_, err = lock.InspectRWMutex(ctx, cluster.Client(), name)
	require.ErrorIs(t, err, lock.ErrCorrupt)
	_, err = cluster.Admin().Delete(ctx, foreign)
	require.NoError(t, err)
}

// Release requests and forced releases reach every holder of an RWMutex:
// all readers that share it, or its writer. A writer that waited behind
// forced readers is granted, not forced along with them.
func TestRWMutexRevocation(t *testing.T) {
	name := lockName(t)
	ctx := ctxT(t, 30*time.Second)
	cli := cluster.Client()
	_, err := lock.RequestReleaseRWMutex(ctx, cli, name)
	require.ErrorIs(t, err, lock.ErrNotHeld)
	_, err = lock.ForceReleaseRWMutex(ctx, cli, name)
	require.ErrorIs(t, err, lock.ErrNotHeld)
	_, err = lock.ForceReleaseRWMutex(ctx, cli, "")
	require.ErrorContains(t, err, "lock:")

	k1 := newKeeper(t, newClient(t), 2*time.Second)
	k2 := newKeeper(t, newClient(t), 2*time.Second)
	rw1, rw2 := lock.NewRWMutex(k1, name), lock.NewRWMutex(k2, name)
	r1, err := rw1.RLock(ctx)
	require.NoError(t, err)
	r2, err := rw2.RLock(ctx)
	require.NoError(t, err)
	w := rlockAsync(ctx, rw2, false)
	waitRW(t, name, 3)

	toks, err := lock.RequestReleaseRWMutex(ctx, cli, name)
	require.NoError(t, err)
	require.Equal(t, []int64{r1.Token(), r2.Token()}, toks)
	revokedSoon(t, r1)
	revokedSoon(t, r2)
	require.NoError(t, r1.Context().Err(), "a request alone does not end the hold")
	notYet(t, w)

	toks, err = lock.ForceReleaseRWMutex(ctx, cli, name)
	require.NoError(t, err)
	require.Equal(t, []int64{r1.Token(), r2.Token()}, toks)
	wr := recv(t, w, 5*time.Second)
	require.NoError(t, wr.err)
	lostSoon(t, r1)
	lostSoon(t, r2)
	resp, err := cli.Txn(ctx).If(r1.Guard()...).Then(clientv3.OpPut(name+"/data", "x")).Commit()
	require.NoError(t, err)
	require.False(t, resp.Succeeded, "a forced reader's guarded write succeeded")
	require.NoError(t, wr.h.Context().Err(), "the writer behind the readers was forced too")
	select {
	case <-wr.h.Revoked():
		t.Fatal("the writer behind the readers got their release request")
	default:
	}

	// A reader that comes after the writer waits; forcing the writer
	// takes the writer alone and grants that reader.
	r3 := rlockAsync(ctx, rw1, true)
	waitRW(t, name, 2)
	toks, err = lock.ForceReleaseRWMutex(ctx, cli, name)
	require.NoError(t, err)
	require.Equal(t, []int64{wr.h.Token()}, toks)
	lostSoon(t, wr.h)
	rr := recv(t, r3, 5*time.Second)
	require.NoError(t, rr.err)
	require.NoError(t, rr.h.Context().Err())

	for _, h := range []*lock.Hold{r1, r2, wr.h, rr.h} {
		require.NoError(t, h.Unlock(ctx)) // tidies the force markers
	}
	requireNoKeys(t, name)

	// A key of another shape anywhere in the queue, even behind the
	// holders, is reported, and nothing is written.
	h, err := rw1.RLock(ctx)
	require.NoError(t, err)
	w2 := rlockAsync(ctx, rw2, false)
	waitRW(t, name, 2)
	foreign := name + "/.rwlock/q/x"
	_, err = cluster.Admin().Put(ctx, foreign, "c1:1:x")
	require.NoError(t, err)
	_, err = lock.ForceReleaseRWMutex(ctx, cli, name)
	require.ErrorIs(t, err, lock.ErrCorrupt)
	_, err = lock.RequestReleaseRWMutex(ctx, cli, name)
	require.ErrorIs(t, err, lock.ErrCorrupt)
	rel, err := cluster.Admin().Get(ctx, name+"/.rwlock/release/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)
	require.Zero(t, rel.Count, "a release request was written before the error")
	require.NoError(t, h.Context().Err())
	_, err = cluster.Admin().Delete(ctx, foreign)
	require.NoError(t, err)
	require.NoError(t, h.Unlock(ctx))
	wr2 := recv(t, w2, 5*time.Second)
	require.NoError(t, wr2.err)
	require.NoError(t, wr2.h.Unlock(ctx))
	requireNoKeys(t, name)
}

// A forced release of more readers than fit one transaction takes them all,
// in batches, and not the writer waiting behind them, which is granted.
func TestRWMutexForceManyReaders(t *testing.T) {
	name := lockName(t)
	ctx := ctxT(t, 30*time.Second)
	rws := []*lock.RWMutex{
		lock.NewRWMutex(newKeeper(t, newClient(t), 2*time.Second), name),
		lock.NewRWMutex(newKeeper(t, newClient(t), 2*time.Second), name),
	}
	var holds []*lock.Hold
	var want []int64
	for i := range 70 {
		h, err := rws[i%2].RLock(ctx)
		require.NoError(t, err)
		holds = append(holds, h)
		want = append(want, h.Token())
	}
	w := rlockAsync(ctx, rws[0], false)
	waitRW(t, name, 71)
	toks, err := lock.ForceReleaseRWMutex(ctx, cluster.Client(), name)
	require.NoError(t, err)
	require.Equal(t, want, toks)
	wr := recv(t, w, 5*time.Second)
	require.NoError(t, wr.err)
	for _, h := range holds {
		lostSoon(t, h)
		require.NoError(t, h.Unlock(ctx))
	}
	require.NoError(t, wr.h.Context().Err(), "the writer behind the readers was forced too")
	require.NoError(t, wr.h.Unlock(ctx))
	requireNoKeys(t, name)
}
