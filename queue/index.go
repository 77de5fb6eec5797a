package queue

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/retry"
	"github.com/concordkit/concord/internal/watch"
)

// index is one process's view of a queue's index keys (i/r/, i/d/, i/c/),
// kept by one watch, so that a Dequeue finds its candidate without reading
// etcd and an idle consumer is woken by the watch event itself. The view may
// lag etcd by a watch delay; claims are transactions that re-check in etcd
// what the view promised, so a stale view costs a failed claim, never a
// wrong one.
type index struct {
	q      *Queue
	cancel context.CancelFunc
	done   chan struct{} // closed when run returns

	mu       sync.Mutex // protects everything below
	ready    []entry    // live i/r/ keys, sorted by entry.less
	delayed  []entry    // live i/d/ keys, sorted by time, then entry.less
	claimed  map[string]int64
	workers  map[string]time.Time // worker → when a claim of it was last seen
	skip     map[string]int64     // id → skip it until the view reaches this revision
	since    map[string]time.Time // id → when this view last saw it become claimable
	reserved map[string]bool      // ids a local Dequeue is claiming now
	tasks    map[string]*Task     // claimed through this Queue and not finished
	buffered []*Task              // claimed by a batch, not yet handed out
	rev      int64                // revision the view reflects
	loaded   bool
	paused   bool          // the pause marker is present
	groups   groups        // the group member keys
	denied   error         // set while etcd refuses this process the index for lack of permission
	changed  chan struct{} // closed and replaced on every change
	conflict int64         // failed claim transactions
	claimRTT time.Duration // running average of claim round trips
	patience time.Duration // added to the handoff step after claims lost to their owners
	claims   int64         // claim transactions
	// giveBacks are claims of this Queue that it could not give back: the
	// transaction failed, or a claim's outcome was unknown. Bound to a lease
	// this process keeps alive, they would hide their tasks until the
	// process exits, so the index goroutine tries again on every tick.
	giveBacks   []giveBack
	giveBackSeq int
	// unsure are claims whose transaction never answered, by claim key and
	// the value written (a task may have several on their way), with until
	// when to look out for them: such a claim may still be applied after the
	// give-back found nothing, and is given back when the watch shows it
	// land.
	unsure map[unsureKey]unsureClaim
}

func startIndex(q *Queue) *index {
	ctx, cancel := context.WithCancel(context.Background())
	ix := &index{
		q:        q,
		cancel:   cancel,
		done:     make(chan struct{}),
		claimed:  map[string]int64{},
		workers:  map[string]time.Time{},
		skip:     map[string]int64{},
		since:    map[string]time.Time{},
		reserved: map[string]bool{},
		tasks:    map[string]*Task{},
		groups:   newGroups(),
		changed:  make(chan struct{}),
		// Cautious until claims have shown how long owners take here.
		patience: initialPatience,
	}
	go ix.run(ctx)
	return ix
}

func (ix *index) stop() {
	ix.cancel()
	<-ix.done
}

// notifyLocked wakes every local waiter; they re-check under mu. A waiter
// that finds nothing goes back to sleep, so waking all local waiters costs no
// etcd request.
func (ix *index) notifyLocked() {
	close(ix.changed)
	ix.changed = make(chan struct{})
}

// run keeps the view: a watch on i/ with no start revision (etcd syncs it
// at once, where a watch from an old revision waits for its 100 ms unsynced
// loop), a full read after the watch is created, then events applied in
// order. A failed read, or a watch etcd refuses, starts over with a fresh
// watch and read after a backoff.
func (ix *index) run(ctx context.Context) {
	defer close(ix.done)
	bo := retry.RecoverPolicy.New()
	for ctx.Err() == nil {
		loaded, err := ix.session(ctx)
		if loaded {
			bo.Reset()
		}
		ix.mu.Lock()
		ix.loaded = false
		if retry.PermissionDenied(err) {
			// Not transient: tell the waiting Dequeue calls instead of
			// letting them wait for a load that cannot come. Keep trying
			// in the background, in case the permission is granted.
			ix.denied = fmt.Errorf("queue: watch %q: %w", ix.q.keys.index(), rpctypes.ErrPermissionDenied)
		}
		ix.notifyLocked()
		ix.mu.Unlock()
		if bo.Wait(ctx) != nil {
			return
		}
	}
}

// session runs one watch; it reports whether it got as far as loading, and
// why it could not when it could not. internal/watch opens the watch again
// after a failure and announces the new creation: the view is read afresh
// at or after it, since events in between were not seen.
func (ix *index) session(ctx context.Context) (bool, error) {
	prefix := ix.q.keys.index()
	w := watch.Open(ctx, ix.q.cli, prefix, watch.Config{Options: []clientv3.OpOption{clientv3.WithPrefix()}})
	defer w.Stop()
	tick := time.NewTicker(bufferHold / 2)
	defer tick.Stop()
	loaded := false
	var loadRev int64
	for {
		var resp clientv3.WatchResponse
		var ok bool
		select {
		case resp, ok = <-w.C:
		case <-tick.C:
			if loaded {
				ix.releaseStale(ctx)
				ix.retryGiveBacks(ctx)
			}
			continue
		case <-ctx.Done():
			return loaded, nil
		}
		if !ok {
			return loaded, w.Err()
		}
		if resp.Created {
			rev, err := ix.load(ctx, resp.Header.Revision)
			if err != nil {
				return loaded, err
			}
			loadRev = rev
			if !loaded {
				loaded = true
				ix.mu.Lock()
				ix.denied = nil
				ix.mu.Unlock()
			}
			continue
		}
		if loaded {
			ix.apply(resp.Events, loadRev, resp.Header.Revision)
		}
	}
}

// load reads every index key at one revision (at least rev), in pages, and
// replaces the view with it. Events at or below the returned revision are
// already in the view.
func (ix *index) load(ctx context.Context, rev int64) (int64, error) {
	prefix := ix.q.keys.index()
	end := clientv3.GetPrefixRangeEnd(prefix)
	var ready, delayed []entry
	paused := false
	gs := newGroups()
	groupPrefix := ix.q.keys.groupPrefix()
	claimed := map[string]int64{}
	claimValues := map[string]string{} // claim key → value, for ix.unsure
	claimPrefix := prefix + "c/"
	canceledPrefix := ix.q.keys.canceledPrefix()
	var markers []*mvccpb.KeyValue
	workers := map[string]time.Time{}
	key := prefix
	readRev := int64(0)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(1000)}
		if readRev != 0 {
			opts = append(opts, clientv3.WithRev(readRev))
		}
		resp, err := ix.q.cli.Get(ctx, key, opts...)
		if err != nil {
			return 0, err
		}
		if readRev == 0 {
			readRev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			paused = paused || string(kv.Key) == ix.q.keys.paused()
			if rest, ok := strings.CutPrefix(string(kv.Key), groupPrefix); ok {
				if h, id, ok := parseMember(rest); ok {
					gs.add(h, id, kv.CreateRevision)
				}
				continue
			}
			ix.q.classify(kv, &ready, &delayed, claimed, workers)
			if strings.HasPrefix(string(kv.Key), claimPrefix) {
				claimValues[string(kv.Key)] = string(kv.Value)
			}
			if strings.HasPrefix(string(kv.Key), canceledPrefix) {
				markers = append(markers, kv)
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	slices.SortFunc(ready, cmpReady)
	slices.SortFunc(delayed, cmpDelayed)
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.ready, ix.delayed, ix.claimed, ix.workers, ix.paused, ix.groups = ready, delayed, claimed, workers, paused, gs
	// A claim whose transaction never answered may have landed while no
	// watch was running: give it back, as apply does.
	for uk, u := range ix.unsure {
		if v, ok := claimValues[uk.key]; ok && v == uk.value {
			delete(ix.unsure, uk)
			ix.addGiveBackLocked(giveBack{key: uk.key, held: clientv3.Compare(clientv3.Value(uk.key), "=", uk.value), lease: u.lease})
		}
	}
	// A claim deleted while no watch was running (a restart after
	// compaction, a lost leader) left no event: compare the tasks this
	// process holds with the claims just read, after the cancel markers
	// said which of them were canceled.
	for _, kv := range markers {
		ix.canceledLocked(string(kv.Key), kv.Value)
	}
	for id, t := range ix.tasks {
		if claimed[id] != t.Token() && t.Token() <= readRev {
			t.claimDeleted(readRev)
		}
	}
	now := time.Now()
	clear(ix.since)
	for _, list := range [][]entry{ready, delayed} {
		for _, e := range list {
			ix.since[e.id] = now
		}
	}
	ix.rev = max(readRev, rev)
	ix.loaded = true
	ix.notifyLocked()
	return readRev, nil
}

// canceledLocked ends the task this Queue holds whose claim the cancel
// marker at key names, if any. Called with mu held.
func (ix *index) canceledLocked(key string, value []byte) {
	id, ok := strings.CutPrefix(key, ix.q.keys.canceledPrefix())
	if !ok {
		return
	}
	token, ok := canceledToken(value)
	if t := ix.tasks[id]; ok && token != 0 && t != nil && t.Token() == token {
		t.canceledRemotely()
	}
}

func cmpReady(a, b entry) int {
	switch {
	case a.less(b):
		return -1
	case b.less(a):
		return 1
	}
	return 0
}

func cmpDelayed(a, b entry) int {
	if a.at != b.at {
		if a.at < b.at {
			return -1
		}
		return 1
	}
	return cmpReady(a, b)
}

// classify adds one index key to the collections. Keys this package did not
// write are ignored here (Stats and List report them); a corrupt key must not
// stop every consumer.
func (q *Queue) classify(kv *mvccpb.KeyValue, ready, delayed *[]entry, claimed map[string]int64, workers map[string]time.Time) {
	rest := strings.TrimPrefix(string(kv.Key), q.keys.index())
	if id, ok := strings.CutPrefix(rest, "c/"); ok {
		if !validID(id) {
			return
		}
		claimed[id] = kv.CreateRevision
		if c, err := decodeClaim(kv.Value); err == nil {
			workers[c.Worker] = time.Now()
		}
		return
	}
	e, err := parseIndexKey(string(kv.Key), rest)
	if err != nil {
		return
	}
	if e.ready {
		*ready = append(*ready, e)
	} else {
		*delayed = append(*delayed, e)
	}
}

func (ix *index) apply(evs []*clientv3.Event, loadRev, headerRev int64) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	prefix := ix.q.keys.index()
	// Cancel markers first: a Cancel deletes the claim in the same
	// revision, and the worker must learn why it lost the task.
	for _, ev := range evs {
		if ev.Kv.ModRevision > loadRev && ev.Type == clientv3.EventTypePut {
			ix.canceledLocked(string(ev.Kv.Key), ev.Kv.Value)
		}
	}
	for _, ev := range evs {
		if ev.Kv.ModRevision <= loadRev {
			continue // already in the loaded view
		}
		key := string(ev.Kv.Key)
		rest := strings.TrimPrefix(key, prefix)
		if strings.HasPrefix(rest, "k/") {
			continue // a cancel marker, handled above
		}
		if rest == "p" {
			ix.paused = ev.Type == clientv3.EventTypePut
			continue
		}
		if m, ok := strings.CutPrefix(rest, "g/"); ok {
			if h, id, ok := parseMember(m); ok {
				if ev.Type == clientv3.EventTypePut {
					ix.groups.add(h, id, ev.Kv.CreateRevision)
				} else {
					ix.groups.remove(h, id)
					// The next task of the group becomes claimable now:
					// its owner's turn starts now, as for a released claim,
					// so that idle workers do not all race for it.
					if ms := ix.groups.members[h]; len(ms) > 0 {
						ix.since[ms[0].id] = time.Now()
					}
				}
			}
			continue
		}
		if id, ok := strings.CutPrefix(rest, "c/"); ok {
			if !validID(id) {
				continue
			}
			if ev.Type == clientv3.EventTypePut {
				ix.claimed[id] = ev.Kv.CreateRevision
				if c, err := decodeClaim(ev.Kv.Value); err == nil {
					ix.workers[c.Worker] = time.Now()
				}
				if uk := (unsureKey{key, string(ev.Kv.Value)}); ix.unsure[uk].lease != nil {
					// A claim whose transaction never answered landed after
					// all, held by no Task: give it back.
					ix.addGiveBackLocked(giveBack{key: key, held: clientv3.Compare(clientv3.Value(key), "=", uk.value), lease: ix.unsure[uk].lease})
					delete(ix.unsure, uk)
				}
			} else {
				delete(ix.claimed, id)
				ix.since[id] = time.Now()
				if t := ix.tasks[id]; t != nil && ev.Kv.ModRevision > t.Token() {
					// The claim key is gone: acknowledged by this Queue, or
					// deleted by its lease's expiry or by someone else. Stop
					// tracking it either way, so tasks a worker abandons
					// without finishing do not pile up here.
					t.claimDeleted(ev.Kv.ModRevision)
					delete(ix.tasks, id)
				}
			}
			continue
		}
		e, err := parseIndexKey(key, rest)
		if err != nil {
			continue
		}
		list, cmp := &ix.ready, cmpReady
		if !e.ready {
			list, cmp = &ix.delayed, cmpDelayed
		}
		i, found := slices.BinarySearchFunc(*list, e, cmp)
		if ev.Type == clientv3.EventTypePut {
			if !found {
				*list = slices.Insert(*list, i, e)
			}
			ix.since[e.id] = time.Now()
		} else if found {
			*list = deleteEntry(*list, i)
			delete(ix.since, e.id)
		}
	}
	if headerRev > ix.rev {
		ix.rev = headerRev
	}
	ix.notifyLocked()
}

// deleteEntry removes list[i]. Consumers take tasks from the head of the
// queue, so most deletions are near the front of a list that holds the whole
// backlog: shifting the few entries before i, rather than every entry after
// it, keeps an acknowledgement's cost independent of the backlog in every
// consumer process that sees it. The vacated slot is zeroed so that its key
// strings can be collected; later appends reallocate the array as usual.
func deleteEntry(list []entry, i int) []entry {
	if i >= len(list)/2 {
		return slices.Delete(list, i, i+1)
	}
	copy(list[1:i+1], list[:i])
	list[0] = entry{}
	return list[1:]
}

// stopTimeouts stops the timers of the tasks this Queue handed out.
func (ix *index) stopTimeouts() {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	for _, t := range ix.tasks {
		t.stopTimeout()
	}
}

func (ix *index) track(t *Task) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.tasks[t.ID] = t
}

func (ix *index) untrack(t *Task) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if ix.tasks[t.ID] == t {
		delete(ix.tasks, t.ID)
	}
}

// depth returns the view's ready, delayed and running counts. Tasks this
// Queue claimed count as running even before the watch shows their claim.
func (ix *index) depth(now time.Time) (ready, delayed, running int, ok bool) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if !ix.loaded {
		return 0, 0, 0, false
	}
	busy := func(id string) bool {
		_, c := ix.claimed[id]
		return c || ix.tasks[id] != nil
	}
	nowNs := now.UnixNano()
	for _, e := range ix.delayed {
		switch {
		case busy(e.id):
			running++
		case e.at > nowNs:
			delayed++
		default:
			ready++
		}
	}
	for _, e := range ix.ready {
		if busy(e.id) {
			running++
		} else {
			ready++
		}
	}
	return ready, delayed, running, true
}

// ClaimCounts returns how many claim transactions this Queue sent and how
// many of them failed because another worker was first (or the view was
// stale).
func (q *Queue) ClaimCounts() (claims, conflicts int64) {
	ix := q.currentIndex()
	if ix == nil {
		return 0, 0
	}
	ix.mu.Lock()
	defer ix.mu.Unlock()
	return ix.claims, ix.conflict
}
