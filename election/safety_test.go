package election_test

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/election"
)

// TestSingleLeaderAcrossCuts runs three processes in Run loops. Each term
// writes fenced log entries as fast as it can. The leader's client is cut off
// four times (its writes stall in flight and resume when it is restored). No
// two processes may believe they lead at once, and the fenced log's tokens
// never go back.
func TestSingleLeaderAcrossCuts(t *testing.T) { singleLeaderAcrossCuts(t, 4) }

var long = flag.Bool("long", false, "run the long variants of the safety tests")

// TestSingleLeaderAcrossCutsLong is the same with 40 cuts (-long).
func TestSingleLeaderAcrossCutsLong(t *testing.T) {
	if !*long {
		t.Skip("run with -long")
	}
	singleLeaderAcrossCuts(t, 40)
}

func singleLeaderAcrossCuts(t *testing.T, cuts int) {
	name := t.Name()
	assertNoKeys(t, cluster, name)
	logPrefix := name + "/log/"
	t.Cleanup(func() { _, _ = cluster.Admin().Delete(context.Background(), logPrefix, clientv3.WithPrefix()) })
	ctx := ctxT(t, 60*time.Second)

	type started struct {
		proc  int
		token int64
	}
	var (
		leaders  atomic.Int32
		overlaps atomic.Int32
		seq      atomic.Int64
	)
	terms := make(chan started, 16)
	zombies := make(chan int64, 16)
	procs := make([]*process, 3)
	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for i := range procs {
		procs[i] = newProcess(t, cluster, time.Second)
		e := election.New(procs[i].k, name)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = e.Run(rctx, strconv.Itoa(i), func(fctx context.Context, term *election.Term) error {
				if leaders.Add(1) > 1 {
					overlaps.Add(1)
				}
				terms <- started{i, term.Token()}
				write := func(ctx context.Context) {
					key := fmt.Sprintf("%s%020d", logPrefix, seq.Add(1))
					resp, err := procs[i].cli.Txn(ctx).If(term.Guard()...).
						Then(clientv3.OpPut(key, strconv.FormatInt(term.Token(), 10))).Commit()
					_, _ = resp, err
				}
				for fctx.Err() == nil {
					write(fctx)
				}
				leaders.Add(-1)
				// A process paused past its loss writes once more, late:
				// only the guard keeps this write out. It stalls while the
				// client is cut and lands after the next leader's writes.
				zctx, zcancel := context.WithTimeout(context.WithoutCancel(fctx), 10*time.Second)
				defer zcancel()
				write(zctx)
				zombies <- term.Token()
				return nil
			})
		}()
	}

	prev := recv(t, asyncRecv(terms), 5*time.Second).v
	for range cuts {
		cli := procs[prev.proc].cli
		cluster.CutClient(cli)
		next := recv(t, asyncRecv(terms), 10*time.Second).v
		require.NotEqual(t, prev.proc, next.proc)
		require.Greater(t, next.token, prev.token)
		// Let the new leader write before the old one's late write lands.
		waitValue(t, logPrefix, strconv.FormatInt(next.token, 10), 5*time.Second)
		cluster.RestoreClient(cli)
		assert.Equal(t, prev.token, recv(t, asyncRecv(zombies), 10*time.Second).v)
		prev = next
	}
	cancel()
	wg.Wait()
	assert.Zero(t, overlaps.Load(), "two processes believed they led at once")

	resp, err := cluster.Admin().Get(ctx, logPrefix, clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByModRevision, clientv3.SortAscend))
	require.NoError(t, err)
	require.NotEmpty(t, resp.Kvs)
	last := int64(0)
	for _, kv := range resp.Kvs {
		tok, err := strconv.ParseInt(string(kv.Value), 10, 64)
		require.NoError(t, err)
		require.GreaterOrEqual(t, tok, last, "a fenced write of an older term landed after a newer term's (key %s)", kv.Key)
		last = tok
	}
}

// waitValue waits, on a watch, until some key under prefix holds value.
func waitValue(t *testing.T, prefix, value string, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	wch := cluster.Admin().Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	<-wch
	resp, err := cluster.Admin().Get(ctx, prefix, clientv3.WithPrefix())
	require.NoError(t, err)
	for _, kv := range resp.Kvs {
		if string(kv.Value) == value {
			return
		}
	}
	for wr := range wch {
		for _, ev := range wr.Events {
			if string(ev.Kv.Value) == value {
				return
			}
		}
	}
	t.Fatalf("no write of %q under %q within %v", value, prefix, d)
}
