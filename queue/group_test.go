package queue_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/queue"
)

// groupDisorder returns every claim of a group's task made before the
// group's previous acknowledged task was acknowledged, judged by etcd's
// revisions: acked maps a task to its Ack's revision, tokens to the
// tokens of its claims handed to workers, group to its group. One
// producer enqueued the tasks, so a group's order is its IDs' order.
// Tasks that were never acknowledged (canceled) are skipped.
func groupDisorder(acked map[string]int64, tokens map[string][]int64, group map[string]string) []string {
	byGroup := map[string][]string{}
	for id, g := range group {
		if _, ok := acked[id]; ok && g != "" {
			byGroup[g] = append(byGroup[g], id)
		}
	}
	var out []string
	for g, ids := range byGroup {
		slices.Sort(ids)
		for i := 1; i < len(ids); i++ {
			prev, id := ids[i-1], ids[i]
			for _, tok := range tokens[id] {
				if tok < acked[prev] {
					out = append(out, fmt.Sprintf("group %s: task %s claimed at revision %d, before task %s was acknowledged at %d", g, id, tok, prev, acked[prev]))
				}
			}
		}
	}
	return out
}

// runGroupWorkers enqueues tasks in groups a, b and c and in no group,
// one by one and in batches (c in one transaction), and has three workers
// in processes of their own take and acknowledge them all. It returns what
// groupDisorder judges from.
func runGroupWorkers(t *testing.T) (acked map[string]int64, tokens map[string][]int64, group map[string]string) {
	ctx := ctxT(t, 60*time.Second)
	name := qname(t)
	producer := newQueue(t, cluster.Client(), name, queue.WithRetention(time.Minute))
	group = map[string]string{}
	enqueued := func(ids []string, items []queue.Item) {
		for i, id := range ids {
			group[id] = strings.Split(string(items[i].Payload), ":")[0]
		}
	}
	for k := range 12 {
		var items []queue.Item
		for _, g := range []string{"a", "b", ""} {
			it := queue.Item{Payload: []byte(g + ":" + strconv.Itoa(k))}
			if g != "" {
				it.Options = append(it.Options, queue.WithGroup(g))
			}
			items = append(items, it)
		}
		if k%2 == 0 {
			for _, it := range items {
				id, err := producer.Enqueue(ctx, it.Payload, it.Options...)
				require.NoError(t, err)
				enqueued([]string{id}, []queue.Item{it})
			}
			continue
		}
		ids, err := producer.EnqueueBatch(ctx, items)
		require.NoError(t, err)
		enqueued(ids, items)
	}
	// One transaction: its tasks share a revision and go in item order.
	var items []queue.Item
	for k := range 6 {
		items = append(items, queue.Item{Payload: []byte("c:" + strconv.Itoa(k)), Options: []queue.EnqueueOption{queue.WithGroup("c")}})
	}
	ids, err := producer.EnqueueBatch(ctx, items)
	require.NoError(t, err)
	enqueued(ids, items)

	var mu sync.Mutex
	tokens = map[string][]int64{}
	left := len(group)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	for range 3 {
		cli, err := cluster.NewClient()
		require.NoError(t, err)
		t.Cleanup(func() { _ = cli.Close() })
		q := newQueue(t, cli, name, queue.WithRetention(time.Minute))
		k := newKeeper(t, cli, 10*time.Second)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				task, err := q.Dequeue(wctx, k)
				if err != nil {
					return
				}
				mu.Lock()
				assert.Equal(t, group[task.ID], task.Group)
				tokens[task.ID] = append(tokens[task.ID], task.Token())
				mu.Unlock()
				if err := task.Ack(wctx); err != nil {
					return
				}
				mu.Lock()
				if left--; left == 0 {
					close(done)
				}
				mu.Unlock()
			}
		}()
	}
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("not every task was acknowledged")
	}
	stop()
	wg.Wait()
	acked = map[string]int64{}
	resp, err := cluster.Admin().Get(ctx, name+"/.queue/f/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	require.NoError(t, err)
	for _, kv := range resp.Kvs {
		acked[strings.TrimPrefix(string(kv.Key), name+"/.queue/f/")] = kv.ModRevision
	}
	require.Len(t, acked, len(group))
	return acked, tokens, group
}

// Tasks of one group go one at a time in enqueue order, across three
// workers that compete for them, while tasks of other groups and in no
// group run beside them.
func TestGroupOrder(t *testing.T) {
	acked, tokens, group := runGroupWorkers(t)
	assert.Empty(t, groupDisorder(acked, tokens, group))
}

// The order checker (also the chaos test's) catches consumers that ignore
// groups.
func TestGroupCheckerCatchesDisorder(t *testing.T) {
	queue.IgnoreGroups(t)
	acked, tokens, group := runGroupWorkers(t)
	bad := groupDisorder(acked, tokens, group)
	assert.NotEmpty(t, bad, "tasks taken out of order, and the checker saw none")
	t.Logf("%d claims out of order, as expected with groups ignored; the first: %v", len(bad), bad[:min(len(bad), 1)])
}

// While a group's task runs, the group's next task is not handed out but
// other groups' are; when the worker's lease is lost, the same task goes
// to the next worker first; a dead letter and a canceled task let the
// group move on, and a requeued dead letter goes to the end of its group.
func TestGroupWaitsForItsHead(t *testing.T) {
	ctx := ctxT(t, 60*time.Second)
	name := qname(t)
	cli := cluster.Client()
	q := newQueue(t, cli, name, queue.WithRetention(time.Minute))
	k1 := newKeeper(t, cli, 10*time.Second)
	k2 := newKeeper(t, cli, 10*time.Second)

	enq := func(payload, group string) string {
		t.Helper()
		id, err := q.Enqueue(ctx, []byte(payload), queue.WithGroup(group))
		require.NoError(t, err)
		return id
	}
	a1, a2, a3, a4 := enq("a1", "a"), enq("a2", "a"), enq("a3", "a"), enq("a4", "a")
	b1 := enq("b1", "b")
	st, err := q.Status(ctx, a2)
	require.NoError(t, err)
	assert.Equal(t, "a", st.Group)

	head, err := q.Dequeue(ctx, k1)
	require.NoError(t, err)
	require.Equal(t, a1, head.ID)
	other, err := q.Dequeue(ctx, k2)
	require.NoError(t, err)
	assert.Equal(t, b1, other.ID, "another group runs beside it")
	_, err = q.TryDequeue(ctx, k2)
	require.ErrorIs(t, err, queue.ErrEmpty, "a2 waits for a1")

	// The head's worker is cut off: a1 comes again, before a2.
	require.NoError(t, cluster.RevokeLease(ctx, k1.Current().ID()))
	select {
	case <-head.Context().Done():
	case <-ctx.Done():
		t.Fatal("the head's context did not end with its lease")
	}
	again, err := q.Dequeue(ctx, k2)
	require.NoError(t, err)
	assert.Equal(t, a1, again.ID)
	assert.True(t, again.Redelivered)
	_, err = q.TryDequeue(ctx, k2)
	require.ErrorIs(t, err, queue.ErrEmpty, "a2 waits for the redelivered a1")

	// Dead-lettered: the group moves on.
	require.NoError(t, again.Fail(ctx, "broken"))
	next, err := q.Dequeue(ctx, k2)
	require.NoError(t, err)
	assert.Equal(t, a2, next.ID)
	// a3 is canceled while a2 runs; then a2 acked: a4 is next, not a3.
	require.NoError(t, q.Cancel(ctx, a3))
	require.NoError(t, q.Requeue(ctx, a1))
	require.NoError(t, next.Ack(ctx))
	next, err = q.Dequeue(ctx, k2)
	require.NoError(t, err)
	assert.Equal(t, a4, next.ID)
	_, err = q.TryDequeue(ctx, k2)
	require.ErrorIs(t, err, queue.ErrEmpty, "the requeued a1 waits for a4")
	require.NoError(t, next.Ack(ctx))
	last, err := q.Dequeue(ctx, k2)
	require.NoError(t, err)
	assert.Equal(t, a1, last.ID)
	require.NoError(t, last.Ack(ctx))
	require.NoError(t, other.Ack(ctx))
	assertOnlyFinished(t, cluster.Admin(), name)
}

// A group name is checked before anything is written, and a task record
// with a group no producer could have written is ErrCorrupt.
func TestGroupBadInput(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	name := qname(t)
	cli := cluster.Client()
	q := newQueue(t, cli, name)
	for _, g := range []string{"", strings.Repeat("g", queue.MaxGroupLen+1), "a\x00b", "\xff"} {
		_, err := q.Enqueue(ctx, []byte("x"), queue.WithGroup(g))
		assert.ErrorContains(t, err, "queue: enqueue: invalid option: group name", "%q", g)
	}
	resp, err := cli.Get(ctx, name, clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)
	assert.Zero(t, resp.Count, "nothing written")

	id, err := q.Enqueue(ctx, []byte("x"), queue.WithGroup("g"))
	require.NoError(t, err)
	_, err = cli.Put(ctx, name+"/.queue/t/"+id, fmt.Sprintf(`{"v":1,"p":0,"e":1,"m":5,"g":%q}`+"\nx", strings.Repeat("g", queue.MaxGroupLen+1)))
	require.NoError(t, err)
	_, err = q.Status(ctx, id)
	assert.ErrorIs(t, err, queue.ErrCorrupt)
	k := newKeeper(t, cli, 10*time.Second)
	_, err = q.TryDequeue(ctx, k)
	assert.ErrorIs(t, err, queue.ErrCorrupt)
	assert.False(t, errors.Is(err, queue.ErrEmpty))
}
