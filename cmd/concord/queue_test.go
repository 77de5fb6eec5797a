package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/queue"
)

// queueFixture fills a queue with one task in each state the CLI shows:
// two ready, one delayed, one running with progress, two dead.
func queueFixture(t *testing.T, name string) (running *queue.Task, deadIDs []string) {
	t.Helper()
	ctx := context.Background()
	q := queue.New(cluster.Client(), name, queue.WithWorkerName("worker-7"), queue.WithMaxAttempts(1))
	t.Cleanup(func() { q.Close() })
	k, err := leasekeeper.New(ctx, cluster.Client(), leasekeeper.WithTTL(5*time.Second))
	require.NoError(t, err)
	t.Cleanup(func() { k.Close(context.Background()) })

	// Dequeued first (priority), then made dead.
	for _, p := range []string{"poison-1", "poison-2"} {
		_, err := q.Enqueue(ctx, []byte(p), queue.WithPriority(10))
		require.NoError(t, err)
	}
	for range 2 {
		task, err := q.Dequeue(ctx, k)
		require.NoError(t, err)
		require.NoError(t, task.Fail(ctx, "cannot parse "+string(task.Payload)))
		deadIDs = append(deadIDs, task.ID)
	}
	_, err = q.Enqueue(ctx, []byte("long job"), queue.WithPriority(5), queue.WithGroup("reports"))
	require.NoError(t, err)
	running, err = q.Dequeue(ctx, k)
	require.NoError(t, err)
	require.NoError(t, running.Progress(ctx, 0.4, "step 4 of 10", []byte("4")))
	for _, p := range []string{"a", "b"} {
		_, err := q.Enqueue(ctx, []byte(p))
		require.NoError(t, err)
	}
	_, err = q.Enqueue(ctx, []byte("later"), queue.WithDelay(time.Hour))
	require.NoError(t, err)
	return running, deadIDs
}

func TestQueueInspect(t *testing.T) {
	name := uniq("cli-queue-inspect")
	running, dead := queueFixture(t, name)

	r := concord(t, "queue", "stats", name)
	require.Equal(t, 0, r.code, r.stderr)
	t.Log("\n" + r.stdout)
	assert.Regexp(t, `(?m)^ready: +2$`, r.stdout)
	assert.Regexp(t, `(?m)^delayed: +1$`, r.stdout)
	assert.Regexp(t, `(?m)^running: +1$`, r.stdout)
	assert.Regexp(t, `(?m)^dead: +2$`, r.stdout)

	r = concord(t, "--json", "queue", "stats", name)
	require.Equal(t, 0, r.code, r.stderr)
	var stats map[string]any
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &stats))
	assert.Equal(t, map[string]any{"queue": name, "ready": 2.0, "delayed": 1.0, "running": 1.0, "done": 0.0, "canceled": 0.0, "dead": 2.0, "paused": false}, stats)

	r = concord(t, "queue", "ls", name)
	require.Equal(t, 0, r.code, r.stderr)
	t.Log("\n" + r.stdout)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	require.Len(t, lines, 5, "a header and four unfinished tasks")
	assert.Regexp(t, `^ID +STATE +PRIORITY +READY AT$`, lines[0])
	assert.Contains(t, r.stdout, running.ID)
	assert.Regexp(t, `running +5 `, r.stdout)
	assert.Regexp(t, `delayed +0 +\S+ \(in 59m59s\)|delayed +0 +\S+ \(in 1h0m0s\)`, lines[4])
	r = concord(t, "queue", "ls", name, "--limit", "1")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Len(t, strings.Split(strings.TrimSpace(r.stdout), "\n"), 2)

	r = concord(t, "queue", "status", name, running.ID)
	require.Equal(t, 0, r.code, r.stderr)
	t.Log("\n" + r.stdout)
	assert.Regexp(t, `(?m)^state: +running$`, r.stdout)
	assert.Regexp(t, `(?m)^worker: +worker-7$`, r.stdout)
	assert.Regexp(t, `(?m)^group: +reports$`, r.stdout)
	assert.Regexp(t, `(?m)^token: +`+itoa(running.Token())+`$`, r.stdout)
	assert.Regexp(t, `(?m)^progress: +\[########\.{12}\]  40%  step 4 of 10$`, r.stdout)

	r = concord(t, "--json", "queue", "status", name, dead[0])
	require.Equal(t, 0, r.code, r.stderr)
	var st map[string]any
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &st))
	assert.Equal(t, "dead", st["state"])
	assert.Equal(t, "cannot parse poison-1", st["last_error"])

	r = concord(t, "queue", "status", name, "18ea4edf0000000000000000")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, `task "18ea4edf0000000000000000": not found`)

	r = concord(t, "queue", "dead", name)
	require.Equal(t, 0, r.code, r.stderr)
	t.Log("\n" + r.stdout)
	assert.Regexp(t, `(?m)^ID +ATTEMPTS +DIED +REASON$`, r.stdout)
	assert.Regexp(t, dead[0]+` +1 +.* cannot parse poison-1`, r.stdout)
	assert.Regexp(t, dead[1]+` +1 +.* cannot parse poison-2`, r.stdout)
}

func TestQueueAdmin(t *testing.T) {
	name := uniq("cli-queue-admin")
	_, dead := queueFixture(t, name)

	r := concord(t, "queue", "requeue", name, dead[0])
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, "queue "+name+": requeued 1 dead letter(s): "+dead[0]+"\n", r.stdout)
	r = concord(t, "queue", "status", name, dead[0])
	assert.Regexp(t, `(?m)^state: +queued$`, r.stdout)

	// A task that is not dead is refused by name; the others still go.
	r = concord(t, "queue", "purge", name, dead[0], dead[1])
	assert.Equal(t, 1, r.code)
	assert.Equal(t, "queue "+name+": purged 1 dead letter(s): "+dead[1]+"\n", r.stdout)
	assert.Contains(t, r.stderr, `task "`+dead[0]+`": queue: task is not a dead letter`)

	r = concord(t, "queue", "dead", name)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, "queue "+name+": no dead letters\n", r.stdout)

	// Cancel: the requeued task goes; an unknown one is refused by name.
	r = concord(t, "queue", "cancel", name, dead[0], "18ea4edf0000000000000000")
	assert.Equal(t, 1, r.code)
	assert.Equal(t, "queue "+name+": canceled 1 task(s): "+dead[0]+"\n", r.stdout)
	assert.Contains(t, r.stderr, `task "18ea4edf0000000000000000": queue: task not found`)
	r = concord(t, "queue", "status", name, dead[0])
	assert.Regexp(t, `(?m)^state: +canceled$`, r.stdout)
	r = concord(t, "queue", "stats", name)
	assert.Regexp(t, `(?m)^canceled: +1$`, r.stdout)

	// Without IDs: every dead letter.
	name2 := uniq("cli-queue-admin-all")
	_, dead2 := queueFixture(t, name2)
	r = concord(t, "--json", "queue", "requeue", name2)
	require.Equal(t, 0, r.code, r.stderr)
	var out map[string]any
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &out))
	assert.ElementsMatch(t, []any{dead2[0], dead2[1]}, out["requeued"])
	r = concord(t, "queue", "stats", name2)
	assert.Regexp(t, `(?m)^dead: +0$`, r.stdout)
	assert.Regexp(t, `(?m)^ready: +4$`, r.stdout)

	r = concord(t, "queue", "purge", name2)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, "queue "+name2+": purged 0 dead letter(s)\n", r.stdout)

	// A result stored with the Ack, printed raw or as JSON.
	rq := queue.New(cluster.Client(), name2)
	t.Cleanup(func() { rq.Close() })
	k, err := leasekeeper.New(context.Background(), cluster.Client(), leasekeeper.WithTTL(5*time.Second))
	require.NoError(t, err)
	t.Cleanup(func() { k.Close(context.Background()) })
	for {
		task, err := rq.Dequeue(context.Background(), k)
		require.NoError(t, err)
		if string(task.Payload) == "a" {
			require.NoError(t, task.AckResult(context.Background(), []byte("result of a\n")))
			r = concord(t, "queue", "result", name2, task.ID)
			require.Equal(t, 0, r.code, r.stderr)
			assert.Equal(t, "result of a\n", r.stdout)
			r = concord(t, "--json", "queue", "result", name2, task.ID)
			assert.JSONEq(t, `{"queue":"`+name2+`","id":"`+task.ID+`","result":"result of a\n"}`, r.stdout)
			break
		}
		require.NoError(t, task.Ack(context.Background()))
		r = concord(t, "queue", "result", name2, task.ID)
		assert.Equal(t, 1, r.code)
		assert.Contains(t, r.stderr, "concord: queue: task finished without a result")
	}

	// Pause and resume: stats tells which.
	r = concord(t, "queue", "pause", name2)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, "queue "+name2+" paused: workers get no task until it is resumed; enqueues go on\n", r.stdout)
	r = concord(t, "queue", "stats", name2)
	assert.Regexp(t, `(?m)^state: +paused: no task is handed out until resumed$`, r.stdout)
	r = concord(t, "--json", "queue", "resume", name2)
	require.Equal(t, 0, r.code, r.stderr)
	assert.JSONEq(t, `{"queue":"`+name2+`","paused":false}`, r.stdout)
	r = concord(t, "queue", "stats", name2)
	assert.Regexp(t, `(?m)^state: +running$`, r.stdout)
}

func TestQueueStatusWatch(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := uniq("cli-queue-watch")
	q := queue.New(cluster.Client(), name, queue.WithWorkerName("worker-9"))
	defer q.Close()
	id, err := q.Enqueue(ctx, []byte("job"))
	require.NoError(t, err)

	out, errOut := newLineWriter(), newLineWriter()
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"--endpoints", strings.Join(cluster.Endpoints(), ","), "queue", "status", name, id, "--watch"}, out, errOut)
	}()
	waitLine(t, out, "queued   attempt 0", 10*time.Second)
	task, err := q.Dequeue(ctx, newKeeper(t))
	require.NoError(t, err)
	waitLine(t, out, "running  attempt 1", 10*time.Second)
	require.NoError(t, task.Progress(ctx, 0.5, "halfway", nil))
	waitLine(t, out, "running  attempt 1  [##########..........]  50%  worker-9  halfway", 10*time.Second)
	require.NoError(t, task.Ack(ctx))
	// A done task keeps the bar of its last progress.
	waitLine(t, out, "done     attempt 1  [##########..........]  50%  worker-9  halfway", 10*time.Second)
	select {
	case code := <-done:
		assert.Equal(t, 0, code, errOut.String())
	case <-ctx.Done():
		t.Fatal("queue status --watch did not end when the task was done")
	}
	t.Log("\n" + out.String())
}
