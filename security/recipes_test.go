package security_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/concordkit/concord/barrier"
	"github.com/concordkit/concord/cache"
	"github.com/concordkit/concord/cron"
	"github.com/concordkit/concord/discovery"
	"github.com/concordkit/concord/election"
	"github.com/concordkit/concord/lock"
	"github.com/concordkit/concord/pubsub"
	"github.com/concordkit/concord/queue"
	"github.com/concordkit/concord/semaphore"
)

var errNoError = errors.New("no error")

// firstErr returns the error of a call whose other result is discarded.
func firstErr[T any](_ T, err error) error { return err }

var recipes = []recipe{
	{
		kind: "lock",
		own: func(t *testing.T, tn *tenant, name string) func() {
			ctx := ctxT(t, 20*time.Second)
			h, err := lock.New(tn.k, name).Lock(ctx)
			require.NoError(t, err)
			info, err := lock.Inspect(ctx, tn.cli, name)
			require.NoError(t, err)
			require.NotNil(t, info.Holder)
			rh, err := lock.NewRWMutex(tn.k, name+"-rw").RLock(ctx)
			require.NoError(t, err)
			mh, err := lock.NewMulti(tn.k, name+"-m1", name+"-m2").Lock(ctx)
			require.NoError(t, err)
			return func() {
				for _, x := range []interface{ Unlock(context.Context) error }{h, rh, mh} {
					require.NoError(t, x.Unlock(context.Background()))
				}
			}
		},
		foreign: func(tn *tenant, name string) []op {
			return []op{
				{"Mutex.Lock", func(ctx context.Context) error { return firstErr(lock.New(tn.k, name).Lock(ctx)) }},
				{"Mutex.TryLock", func(ctx context.Context) error { return firstErr(lock.New(tn.k, name).TryLock(ctx)) }},
				{"RWMutex.Lock", func(ctx context.Context) error { return firstErr(lock.NewRWMutex(tn.k, name+"-rw").Lock(ctx)) }},
				{"RWMutex.RLock", func(ctx context.Context) error { return firstErr(lock.NewRWMutex(tn.k, name+"-rw").RLock(ctx)) }},
				{"Multi.Lock", func(ctx context.Context) error {
					return firstErr(lock.NewMulti(tn.k, name+"-m1", name+"-m2").Lock(ctx))
				}},
				{"Inspect", func(ctx context.Context) error { return firstErr(lock.Inspect(ctx, tn.cli, name)) }},
				{"ForceRelease", func(ctx context.Context) error { return firstErr(lock.ForceRelease(ctx, tn.cli, name)) }},
				{"RequestRelease", func(ctx context.Context) error { return firstErr(lock.RequestRelease(ctx, tn.cli, name)) }},
			}
		},
	},
	{
		kind: "semaphore",
		own: func(t *testing.T, tn *tenant, name string) func() {
			ctx := ctxT(t, 20*time.Second)
			p, err := semaphore.New(tn.k, name, 2).Acquire(ctx, 1)
			require.NoError(t, err)
			info, err := semaphore.Inspect(ctx, tn.cli, name)
			require.NoError(t, err)
			require.Equal(t, 1, info.InUse)
			return func() { require.NoError(t, p.Release(context.Background())) }
		},
		foreign: func(tn *tenant, name string) []op {
			return []op{
				{"Acquire", func(ctx context.Context) error { return firstErr(semaphore.New(tn.k, name, 2).Acquire(ctx, 1)) }},
				{"TryAcquire", func(ctx context.Context) error { return firstErr(semaphore.New(tn.k, name, 2).TryAcquire(ctx, 1)) }},
				{"SetLimit", func(ctx context.Context) error { return semaphore.New(tn.k, name, 2).SetLimit(ctx, 5) }},
				{"Inspect", func(ctx context.Context) error { return firstErr(semaphore.Inspect(ctx, tn.cli, name)) }},
				{"Delete", func(ctx context.Context) error { return semaphore.Delete(ctx, tn.cli, name) }},
			}
		},
	},
	{
		kind: "election",
		own: func(t *testing.T, tn *tenant, name string) func() {
			ctx := ctxT(t, 20*time.Second)
			e := election.New(tn.k, name)
			term, err := e.Campaign(ctx, tn.name)
			require.NoError(t, err)
			l, err := e.Leader(ctx)
			require.NoError(t, err)
			require.Equal(t, tn.name, l.Value)
			require.NoError(t, term.Proclaim(ctx, tn.name+"!"))
			return func() { require.NoError(t, term.Resign(context.Background())) }
		},
		foreign: func(tn *tenant, name string) []op {
			return []op{
				{"Campaign", func(ctx context.Context) error { return firstErr(election.New(tn.k, name).Campaign(ctx, "intruder")) }},
				{"Leader", func(ctx context.Context) error { return firstErr(election.New(tn.k, name).Leader(ctx)) }},
				{"Observe", func(ctx context.Context) error {
					ch, why := election.New(tn.k, name).Observe(ctx)
					for range ch {
					}
					return why()
				}},
				{"Run", func(ctx context.Context) error {
					return election.New(tn.k, name).Run(ctx, "intruder", func(context.Context, *election.Term) error { return nil })
				}},
			}
		},
	},
	{
		kind: "cron",
		own: func(t *testing.T, tn *tenant, name string) func() {
			ctx := ctxT(t, 20*time.Second)
			s := cron.New(tn.k, name)
			ran := make(chan struct{}, 1)
			require.NoError(t, s.Add("job", "* * * * * *", func(context.Context, cron.Run) error {
				select {
				case ran <- struct{}{}:
				default:
				}
				return nil
			}))
			rctx, stop := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- s.Run(rctx) }()
			select {
			case <-ran:
			case err := <-done:
				stop()
				t.Fatalf("cron Run returned before a run: %v", err)
			case <-ctx.Done():
				stop()
				t.Fatal("no run within 20 s")
			}
			stop()
			<-done
			st, err := cron.Status(ctx, tn.cli, name)
			require.NoError(t, err)
			require.NotEmpty(t, st)
			require.NoError(t, cron.Pause(ctx, tn.cli, name, "job"))
			return nil
		},
		foreign: func(tn *tenant, name string) []op {
			return []op{
				{"Scheduler.Run", func(ctx context.Context) error {
					s := cron.New(tn.k, name)
					if err := s.Add("job", "* * * * * *", func(context.Context, cron.Run) error { return nil }); err != nil {
						return err
					}
					return s.Run(ctx)
				}},
				{"Status", func(ctx context.Context) error { return firstErr(cron.Status(ctx, tn.cli, name)) }},
				{"Pause", func(ctx context.Context) error { return cron.Pause(ctx, tn.cli, name, "job") }},
				{"Resume", func(ctx context.Context) error { return cron.Resume(ctx, tn.cli, name, "job") }},
				{"Trigger", func(ctx context.Context) error { return cron.Trigger(ctx, tn.cli, name, "job") }},
				{"Delete", func(ctx context.Context) error { return cron.Delete(ctx, tn.cli, name) }},
			}
		},
	},
	{
		kind: "barrier",
		own: func(t *testing.T, tn *tenant, name string) func() {
			ctx := ctxT(t, 20*time.Second)
			b := barrier.New(tn.cli, name)
			require.NoError(t, b.Hold(ctx))
			l := barrier.NewLatch(tn.cli, name+"-latch", 2)
			require.NoError(t, l.CountDown(ctx))
			n, err := l.Count(ctx)
			require.NoError(t, err)
			require.Equal(t, 1, n)
			seat, err := barrier.NewDouble(tn.k, name+"-double", 1).Enter(ctx)
			require.NoError(t, err)
			return func() {
				require.NoError(t, b.Release(context.Background()))
				require.NoError(t, seat.Leave(ctxT(t, 10*time.Second)))
			}
		},
		foreign: func(tn *tenant, name string) []op {
			return []op{
				{"Barrier.Hold", func(ctx context.Context) error { return barrier.New(tn.cli, name).Hold(ctx) }},
				{"Barrier.Release", func(ctx context.Context) error { return barrier.New(tn.cli, name).Release(ctx) }},
				{"Barrier.Wait", func(ctx context.Context) error { return barrier.New(tn.cli, name).Wait(ctx) }},
				{"NewLeased.Hold", func(ctx context.Context) error { return barrier.NewLeased(tn.k, name).Hold(ctx) }},
				{"DoubleBarrier.Enter", func(ctx context.Context) error {
					return firstErr(barrier.NewDouble(tn.k, name+"-double", 1).Enter(ctx))
				}},
				{"Latch.CountDown", func(ctx context.Context) error { return barrier.NewLatch(tn.cli, name+"-latch", 2).CountDown(ctx) }},
				{"Latch.Count", func(ctx context.Context) error {
					return firstErr(barrier.NewLatch(tn.cli, name+"-latch", 2).Count(ctx))
				}},
				{"Latch.Wait", func(ctx context.Context) error { return barrier.NewLatch(tn.cli, name+"-latch", 2).Wait(ctx) }},
				{"Latch.Delete", func(ctx context.Context) error { return barrier.NewLatch(tn.cli, name+"-latch", 2).Delete(ctx) }},
			}
		},
	},
	{
		kind: "queue",
		own: func(t *testing.T, tn *tenant, name string) func() {
			ctx := ctxT(t, 20*time.Second)
			q := queue.New(tn.cli, name)
			for _, p := range []string{"one", "two"} {
				_, err := q.Enqueue(ctx, []byte(p))
				require.NoError(t, err)
			}
			task, err := q.TryDequeue(ctx, tn.k)
			require.NoError(t, err)
			require.NoError(t, task.Progress(ctx, 0.5, "half", []byte("cp")))
			require.NoError(t, task.Ack(ctx))
			require.NoError(t, q.Close()) // gives back the tasks it claimed ahead
			st, err := q.Stats(ctx)
			require.NoError(t, err)
			require.Equal(t, queue.Stats{Ready: 1, Done: 1}, st, "after two enqueues, one ack and Close")
			return nil
		},
		foreign: func(tn *tenant, name string) []op {
			withQ := func(f func(ctx context.Context, q *queue.Queue) error) func(context.Context) error {
				return func(ctx context.Context) error {
					q := queue.New(tn.cli, name)
					defer q.Close()
					return f(ctx, q)
				}
			}
			return []op{
				{"Enqueue", withQ(func(ctx context.Context, q *queue.Queue) error { return firstErr(q.Enqueue(ctx, []byte("x"))) })},
				{"TryDequeue", withQ(func(ctx context.Context, q *queue.Queue) error { return firstErr(q.TryDequeue(ctx, tn.k)) })},
				{"Dequeue", withQ(func(ctx context.Context, q *queue.Queue) error { return firstErr(q.Dequeue(ctx, tn.k)) })},
				{"Stats", withQ(func(ctx context.Context, q *queue.Queue) error { return firstErr(q.Stats(ctx)) })},
				{"List", withQ(func(ctx context.Context, q *queue.Queue) error { return firstErr(q.List(ctx, 0)) })},
				{"Status", withQ(func(ctx context.Context, q *queue.Queue) error {
					return firstErr(q.Status(ctx, "0000000000000000deadbeef"))
				})},
				{"WatchStatus", withQ(func(ctx context.Context, q *queue.Queue) error {
					ch, err := q.WatchStatus(ctx, "0000000000000000deadbeef")
					if err != nil {
						return err
					}
					for range ch {
					}
					return errors.Join(errNoError, ctx.Err())
				})},
				{"DeadLetters", withQ(func(ctx context.Context, q *queue.Queue) error { return firstErr(q.DeadLetters(ctx, 0)) })},
				{"PurgeDead", withQ(func(ctx context.Context, q *queue.Queue) error { return firstErr(q.PurgeDead(ctx)) })},
				{"Delete", withQ(func(ctx context.Context, q *queue.Queue) error { return q.Delete(ctx) })},
			}
		},
	},
	{
		kind: "pubsub",
		own: func(t *testing.T, tn *tenant, name string) func() {
			ctx := ctxT(t, 20*time.Second)
			h := pubsub.NewHub(tn.cli)
			sub, err := h.Subscribe(ctx, name, pubsub.FromLatest())
			require.NoError(t, err)
			rev, err := h.Publish(ctx, name, []byte("hello"))
			require.NoError(t, err)
			ev, err := sub.Next(ctx)
			require.NoError(t, err)
			require.NotNil(t, ev.Message)
			require.Equal(t, rev, ev.Message.Rev)
			return func() { require.NoError(t, h.Close()) }
		},
		foreign: func(tn *tenant, name string) []op {
			subscribe := func(from pubsub.From) func(context.Context) error {
				return func(ctx context.Context) error {
					h := pubsub.NewHub(tn.cli)
					defer h.Close()
					sub, err := h.Subscribe(ctx, name, from)
					if err != nil {
						return err
					}
					defer sub.Close()
					ev, err := sub.Next(ctx)
					if err != nil {
						return err
					}
					if ev.Message != nil {
						return errors.New("delivered " + string(ev.Message.Payload))
					}
					return errors.New("delivered a gap: " + ev.Gap.String())
				}
			}
			return []op{
				{"Publish", func(ctx context.Context) error {
					h := pubsub.NewHub(tn.cli)
					defer h.Close()
					return firstErr(h.Publish(ctx, name, []byte("intruder")))
				}},
				{"Subscribe(FromLatest)", subscribe(pubsub.FromLatest())},
				{"Subscribe(FromOldest)", subscribe(pubsub.FromOldest())},
				{"Subscribe(FromRevision)", subscribe(pubsub.FromRevision(1))},
			}
		},
	},
	{
		kind: "cache",
		own: func(t *testing.T, tn *tenant, name string) func() {
			ctx := ctxT(t, 20*time.Second)
			_, err := tn.cli.Put(ctx, name+"/k", "v")
			require.NoError(t, err)
			c, err := cache.New(ctx, tn.cli, name+"/")
			require.NoError(t, err)
			defer c.Close()
			kv, ok := c.Get(name + "/k")
			require.True(t, ok)
			require.Equal(t, "v", string(kv.Value))
			return nil
		},
		foreign: func(tn *tenant, name string) []op {
			return []op{
				{"New", func(ctx context.Context) error {
					c, err := cache.New(ctx, tn.cli, name+"/")
					if err == nil {
						_ = c.Close()
					}
					return err
				}},
			}
		},
	},
	{
		kind: "discovery",
		own: func(t *testing.T, tn *tenant, name string) func() {
			ctx := ctxT(t, 20*time.Second)
			reg, err := discovery.Register(ctx, tn.k, name, "i1", "127.0.0.1:1", map[string]string{"zone": "a"})
			require.NoError(t, err)
			ins, err := discovery.Resolve(ctx, tn.cli, name)
			require.NoError(t, err)
			require.Len(t, ins, 1)
			w, err := discovery.Watch(ctx, tn.cli, name)
			require.NoError(t, err)
			w.Close()
			m, err := discovery.Join(ctx, tn.k, name+"-group", "m1", []byte("p"))
			require.NoError(t, err)
			ms, err := discovery.Members(ctx, tn.cli, name+"-group")
			require.NoError(t, err)
			require.Len(t, ms, 1)
			return func() {
				require.NoError(t, reg.Deregister(context.Background()))
				require.NoError(t, m.Leave(context.Background()))
			}
		},
		foreign: func(tn *tenant, name string) []op {
			return []op{
				{"Register", func(ctx context.Context) error {
					return firstErr(discovery.Register(ctx, tn.k, name, "intruder", "127.0.0.1:2", nil))
				}},
				{"Resolve", func(ctx context.Context) error { return firstErr(discovery.Resolve(ctx, tn.cli, name)) }},
				{"Watch", func(ctx context.Context) error {
					w, err := discovery.Watch(ctx, tn.cli, name)
					if err == nil {
						w.Close()
					}
					return err
				}},
				{"Join", func(ctx context.Context) error {
					return firstErr(discovery.Join(ctx, tn.k, name+"-group", "intruder", nil))
				}},
				{"Members", func(ctx context.Context) error { return firstErr(discovery.Members(ctx, tn.cli, name+"-group")) }},
				{"WatchGroup", func(ctx context.Context) error {
					g, err := discovery.WatchGroup(ctx, tn.cli, name+"-group")
					if err == nil {
						g.Close()
					}
					return err
				}},
			}
		},
	},
}
