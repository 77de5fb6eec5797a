package queue

import (
	"context"
	"errors"
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
	"github.com/concordkit/concord/leasekeeper"
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

type unsureKey struct{ key, value string }

// unsureClaim is a claim whose transaction never answered.
type unsureClaim struct {
	lease *leasekeeper.Lease
	until time.Time
}

// unsureFor is how long a claim whose transaction never answered is looked
// out for: longer than etcd takes to apply or drop a proposal it accepted.
const unsureFor = time.Minute

// giveBack is a claim to give back: a buffered task to release, or a claim
// whose transaction did not answer, to delete if it is there with the value
// this Queue wrote.
type giveBack struct {
	seq   int                // identifies it in index.giveBacks
	task  *Task              // a buffered task; or:
	key   string             // a claim key,
	held  clientv3.Cmp       // true while the claim is the one to give back,
	lease *leasekeeper.Lease // and the claim's lease
}

// gone reports whether the claim went by itself: its lease or its task's
// claim was lost.
func (g giveBack) gone() bool {
	if g.task != nil {
		return g.task.Context().Err() != nil
	}
	return g.lease.Err() != nil
}

// addGiveBack records a claim that could not be given back.
func (ix *index) addGiveBack(g giveBack) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.addGiveBackLocked(g)
}

func (ix *index) addGiveBackLocked(g giveBack) {
	ix.giveBackSeq++
	g.seq = ix.giveBackSeq
	ix.giveBacks = append(ix.giveBacks, g)
}

// claimRef is a claim key with the comparison that holds while it is the
// claim to give back.
type claimRef struct {
	key  string
	held clientv3.Cmp
}

// giveBackClaims gives back the claims that are still there, in one
// transaction under ctx (which callers bound). If the outcome is unknown,
// the index goroutine retries them until their lease ends; an error that
// says nothing was done (permission, a bad request) is not retried.
func (ix *index) giveBackClaims(ctx context.Context, cs []claimRef, lease *leasekeeper.Lease) {
	ops := make([]clientv3.Op, len(cs))
	for i, c := range cs {
		ops[i] = clientv3.OpTxn([]clientv3.Cmp{c.held}, []clientv3.Op{clientv3.OpDelete(c.key)}, nil)
	}
	_, err := ix.q.cli.Txn(ctx).Then(ops...).Commit()
	if err == nil || !outcomeUnknown(err) {
		return
	}
	ix.mu.Lock()
	defer ix.mu.Unlock()
	for _, c := range cs {
		ix.addGiveBackLocked(giveBack{key: c.key, held: c.held, lease: lease})
	}
}

// outcomeUnknown reports whether a failed request may have been applied, or
// may succeed when tried again.
func outcomeUnknown(err error) bool {
	return retry.Unknown(err)
}

// watchUnsure records claims whose transaction never answered, to be given
// back if the watch shows them land later.
func (ix *index) watchUnsure(keys, values []string, lease *leasekeeper.Lease) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if ix.unsure == nil {
		ix.unsure = map[unsureKey]unsureClaim{}
	}
	until := time.Now().Add(unsureFor)
	for i, k := range keys {
		ix.unsure[unsureKey{k, values[i]}] = unsureClaim{lease: lease, until: until}
	}
}

// retryGiveBacks tries once more, within one 2 s budget, to give back the
// claims that could not be; those that fail again stay for the next tick. A
// claim whose lease is gone went with it.
func (ix *index) retryGiveBacks(ctx context.Context) {
	ix.mu.Lock()
	gs := slices.Clone(ix.giveBacks)
	now := time.Now()
	for k, u := range ix.unsure {
		if now.After(u.until) || u.lease.Err() != nil {
			delete(ix.unsure, k)
		}
	}
	ix.mu.Unlock()
	if len(gs) == 0 {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	settled := map[int]bool{}
	var claims []giveBack
	for _, g := range gs {
		switch {
		case g.gone():
			settled[g.seq] = true
		case g.task != nil:
			if err := g.task.release(rctx); err == nil || errors.Is(err, ErrLost) || !outcomeUnknown(err) {
				settled[g.seq] = true
			}
		default:
			claims = append(claims, g)
		}
	}
	// One transaction per chunk of claims, each a nested transaction, within
	// the cluster's limit of operations per transaction.
	for chunk := range slices.Chunk(claims, max(1, ix.q.o.maxTxnOps)) {
		ops := make([]clientv3.Op, len(chunk))
		for i, g := range chunk {
			ops[i] = clientv3.OpTxn([]clientv3.Cmp{g.held}, []clientv3.Op{clientv3.OpDelete(g.key)}, nil)
		}
		if _, err := ix.q.cli.Txn(rctx).Then(ops...).Commit(); err == nil || !outcomeUnknown(err) {
			for _, g := range chunk {
				settled[g.seq] = true
			}
		}
	}
	ix.mu.Lock()
	ix.giveBacks = slices.DeleteFunc(ix.giveBacks, func(g giveBack) bool { return settled[g.seq] })
	ix.mu.Unlock()
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
	claimed := map[string]int64{}
	claimValues := map[string]string{} // claim key → value, for ix.unsure
	claimPrefix := prefix + "c/"
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
			ix.q.classify(kv, &ready, &delayed, claimed, workers)
			if strings.HasPrefix(string(kv.Key), claimPrefix) {
				claimValues[string(kv.Key)] = string(kv.Value)
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
	ix.ready, ix.delayed, ix.claimed, ix.workers = ready, delayed, claimed, workers
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
	// process holds with the claims just read.
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
	for _, ev := range evs {
		if ev.Kv.ModRevision <= loadRev {
			continue // already in the loaded view
		}
		key := string(ev.Kv.Key)
		rest := strings.TrimPrefix(key, prefix)
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

// activeWindow is how long a worker counts as active after its last claim
// was seen, for spreading claims.
const activeWindow = 2 * time.Second

// handoffStep is how long a task that is another worker's turn stays
// reserved for it, per place between the two workers, before this one takes
// it: twice this Queue's recent claim round trip (the owner's claim must
// also reach this view through the watch), plus a patience learnt from
// claims lost, within [5 ms, 100 ms]. A busy owner does not hold tasks up
// for long, and idle workers do not all race for one new task, also on a
// slow or loaded cluster.
//
// The round trip measures the cluster, not how long the owner takes to
// wake and send its claim: on a machine short of CPU that can be far
// longer (measured under -race with every core busy: a third of the claims
// lost, against a tenth otherwise). Each claim lost doubles the patience
// (from 2 ms), each claim won takes an eighth off it. It starts at
// initialPatience.
const initialPatience = 8 * time.Millisecond

func (ix *index) handoffStepLocked() time.Duration {
	return min(max(2*ix.claimRTT+2*time.Millisecond+ix.patience, 5*time.Millisecond), 100*time.Millisecond)
}

// observeClaim folds one claim round trip into the running average.
func (ix *index) observeClaim(d time.Duration) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if ix.claimRTT == 0 {
		ix.claimRTT = d
		return
	}
	ix.claimRTT += (d - ix.claimRTT) / 8
}

// chooseLocked picks the candidate for this process's next claim. It
// reports none when nothing is available, with the time to look again: when
// the next delayed task becomes due, or when another worker's turn on a task
// runs out.
//
// Consumers in different processes do not all race for the first task. The
// workers seen claiming recently, sorted by name, give each a rank r among
// w workers; a task whose ID hashes to r (mod w) is r's own, and r claims
// the first own task among the first 4·w available at once. Ownership
// depends on the task alone, not on how up to date each view is, so views
// that lag each other by a claim or two still pick different tasks. A task
// owned by another worker is taken only after it stayed unclaimed for
// step × ((r − owner) mod w) (see handoffStepLocked): a new task wakes one claim, not all,
// and a busy owner holds it up for a few milliseconds at most. A worker alone
// owns every task and takes them strictly in order.
func (ix *index) chooseLocked(now time.Time, batch int) ([]entry, time.Time) {
	active := []string{ix.q.worker}
	for w, seen := range ix.workers {
		if w == ix.q.worker {
			continue
		}
		if now.Sub(seen) > activeWindow {
			delete(ix.workers, w)
			continue
		}
		active = append(active, w)
	}
	slices.Sort(active)
	rank := slices.Index(active, ix.q.worker)
	workers := len(active)
	want := 4 * workers

	usable := func(e entry) bool {
		if _, ok := ix.claimed[e.id]; ok {
			return false
		}
		if ix.reserved[e.id] {
			return false
		}
		if r, ok := ix.skip[e.id]; ok {
			if ix.rev < r {
				return false
			}
			delete(ix.skip, e.id)
		}
		return true
	}
	var cands []entry
	for _, e := range ix.ready {
		if len(cands) == want {
			break
		}
		if usable(e) {
			cands = append(cands, e)
		}
	}
	// Due delayed tasks compete with ready ones by priority and ready time.
	var next time.Time
	nowNs := now.UnixNano()
	for _, e := range ix.delayed {
		if e.at > nowNs {
			next = time.Unix(0, e.at)
			break
		}
		if !usable(e) {
			continue
		}
		i, _ := slices.BinarySearchFunc(cands, e, cmpReady)
		if i < want {
			cands = slices.Insert(cands, i, e)
			if len(cands) > want {
				cands = cands[:want]
			}
		}
	}
	if workers == 1 {
		return cands[:min(batch, len(cands))], next
	}
	var own []entry
	for _, e := range cands {
		if int(ownerHash(e.id)%uint32(workers)) == rank {
			own = append(own, e)
			if len(own) == batch {
				break
			}
		}
	}
	if len(own) > 0 {
		return own, next
	}
	var fallback *entry
	step := ix.handoffStepLocked()
	for i, e := range cands {
		owner := int(ownerHash(e.id) % uint32(workers))
		if fallback != nil {
			continue
		}
		since := ix.since[e.id]
		if !e.ready && time.Unix(0, e.at).After(since) {
			since = time.Unix(0, e.at)
		}
		turn := since.Add(step * time.Duration((rank-owner+workers)%workers))
		if !now.Before(turn) {
			fallback = &cands[i]
			continue
		}
		if next.IsZero() || turn.Before(next) {
			next = turn
		}
	}
	if fallback != nil {
		return []entry{*fallback}, next
	}
	return nil, next
}

// ownerHash is FNV-1a of a task ID: IDs end in random bits, so tasks spread
// evenly over the workers.
func ownerHash(id string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(id); i++ {
		h ^= uint32(id[i])
		h *= 16777619
	}
	return h
}

// pick waits until a candidate is available, reserves it locally and returns
// it. Reserved candidates are skipped by other local Dequeue calls until
// release.
func (ix *index) pick(ctx context.Context, wait bool, batch int) ([]entry, error) {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		ix.mu.Lock()
		ch := ix.changed
		var next time.Time
		if ix.loaded {
			es, n := ix.chooseLocked(time.Now(), batch)
			if len(es) > 0 {
				for _, e := range es {
					ix.reserved[e.id] = true
				}
				ix.mu.Unlock()
				return es, nil
			}
			next = n
			if !wait {
				ix.mu.Unlock()
				return nil, ErrEmpty
			}
		} else if ix.denied != nil {
			err := ix.denied
			ix.mu.Unlock()
			return nil, err
		}
		ix.mu.Unlock()
		var tc <-chan time.Time
		if !next.IsZero() {
			d := time.Until(next)
			if timer == nil {
				timer = time.NewTimer(d)
			} else {
				timer.Reset(d)
			}
			tc = timer.C
		}
		select {
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		case <-ix.done:
			return nil, ErrClosed
		case <-ch:
		case <-tc:
		}
	}
}

// release ends a local reservation; skipUntil > 0 hides the candidate until
// the view has caught up with that revision (the claim's outcome).
func (ix *index) release(id string, skipUntil int64) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	delete(ix.reserved, id)
	if skipUntil > ix.rev {
		ix.skip[id] = skipUntil
	}
	ix.notifyLocked()
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

func (ix *index) count(conflict bool) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.claims++
	if conflict {
		ix.conflict++
		ix.patience = min(max(2*ix.patience, 2*time.Millisecond), 100*time.Millisecond)
	} else {
		ix.patience -= ix.patience / 8
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

// takeBuffered hands out the first task a batch claimed for lease, dropping
// buffered tasks whose claim was lost meanwhile.
func (ix *index) takeBuffered(lease *leasekeeper.Lease) *Task {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	for i := 0; i < len(ix.buffered); i++ {
		t := ix.buffered[i]
		if t.Context().Err() != nil {
			ix.buffered = slices.Delete(ix.buffered, i, i+1)
			if ix.tasks[t.ID] == t {
				delete(ix.tasks, t.ID)
			}
			i--
			continue
		}
		if t.Lease() == lease.ID() {
			ix.buffered = slices.Delete(ix.buffered, i, i+1)
			return t
		}
	}
	return nil
}

func (ix *index) buffer(ts []*Task) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	now := time.Now()
	for _, t := range ts {
		t.buffered = now
	}
	ix.buffered = append(ix.buffered, ts...)
}

// bufferHold is how long a batch-claimed task waits in the buffer for a
// Dequeue of this Queue before it is given back for other workers: a
// process that stops dequeuing without closing its Queue must not sit on
// tasks.
const bufferHold = 500 * time.Millisecond

// releaseStale gives back buffered tasks older than bufferHold. It runs on
// the index goroutine, between watch events.
func (ix *index) releaseStale(ctx context.Context) {
	ix.mu.Lock()
	var stale []*Task
	now := time.Now()
	kept := ix.buffered[:0]
	for _, t := range ix.buffered {
		if now.Sub(t.buffered) > bufferHold {
			stale = append(stale, t)
		} else {
			kept = append(kept, t)
		}
	}
	clear(ix.buffered[len(kept):])
	ix.buffered = kept
	ix.mu.Unlock()
	for _, t := range stale {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if err := t.release(rctx); err != nil && outcomeUnknown(err) && t.Context().Err() == nil {
			ix.addGiveBack(giveBack{task: t})
		}
		cancel()
	}
}

// drainBuffered removes and returns every buffered task.
func (ix *index) drainBuffered() []*Task {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ts := ix.buffered
	ix.buffered = nil
	return ts
}
