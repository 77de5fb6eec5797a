package queue

import (
	"context"
	"slices"
	"time"
)

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

// chooseLocked picks the candidates for this process's next claim from the
// view (see choose), first forgetting the workers not seen claiming for
// activeWindow and the skips the view has caught up with.
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
	for id, r := range ix.skip {
		if ix.rev >= r {
			delete(ix.skip, id)
		}
	}
	return choose(pickView{
		self:    ix.q.worker,
		workers: active,
		ready:   ix.ready,
		delayed: ix.delayed,
		taken: func(id string) bool {
			_, claimed := ix.claimed[id]
			_, skipped := ix.skip[id]
			return claimed || skipped || ix.reserved[id] || ix.groups.waiting(id)
		},
		since: ix.since,
		step:  ix.handoffStepLocked(),
	}, now, batch)
}

// pickView is what choose decides from.
type pickView struct {
	self    string
	workers []string // the workers seen claiming recently, self included
	ready   []entry  // in claim order (cmpReady)
	delayed []entry  // by ready time (cmpDelayed)
	// taken reports a task claimed, reserved by a local Dequeue, hidden
	// until the view catches up with a claim's outcome, or waiting for an
	// earlier task of its group.
	taken func(id string) bool
	since map[string]time.Time // id → when the view saw it become claimable
	step  time.Duration        // a handoff step (handoffStepLocked)
}

// choose picks up to batch candidates for this worker's next claim. It
// reports none when nothing is available, with the time to look again: when
// the next delayed task becomes due, or when another worker's turn on a task
// runs out. It changes nothing: what it returns depends on its arguments
// alone.
//
// Consumers in different processes do not all race for the first task. The
// workers, sorted by name, give each a rank r among w workers; a task whose
// ID hashes to r (mod w) is r's own, and r claims its own tasks among the
// first 4·w available. Ownership depends on the task alone, not on how up
// to date each view is, so views that lag each other by a claim or two
// still pick different tasks. A task owned by another worker is taken, one
// at a time, only after it stayed unclaimed for step × ((r − owner) mod w):
// a new task wakes one claim, not all, and a busy owner holds it up for a
// few milliseconds at most. A worker alone owns every task and takes them
// strictly in order.
func choose(v pickView, now time.Time, batch int) ([]entry, time.Time) {
	workers := slices.Sorted(slices.Values(v.workers))
	rank := slices.Index(workers, v.self)
	w := len(workers)
	cands, next := candidates(v, now, 4*w)
	if w == 1 {
		return cands[:min(batch, len(cands))], next
	}
	var own []entry
	for _, e := range cands {
		if int(ownerHash(e.id)%uint32(w)) == rank {
			own = append(own, e)
			if len(own) == batch {
				return own, next
			}
		}
	}
	if len(own) > 0 {
		return own, next
	}
	for _, e := range cands {
		owner := int(ownerHash(e.id) % uint32(w))
		since := v.since[e.id]
		if !e.ready && time.Unix(0, e.at).After(since) {
			since = time.Unix(0, e.at)
		}
		turn := since.Add(v.step * time.Duration((rank-owner+w)%w))
		if !now.Before(turn) {
			return []entry{e}, next
		}
		if next.IsZero() || turn.Before(next) {
			next = turn
		}
	}
	return nil, next
}

// candidates returns the first want tasks free to claim, ready ones and
// due delayed ones merged in claim order, and when the next delayed task
// becomes due (zero if none is waiting).
func candidates(v pickView, now time.Time, want int) ([]entry, time.Time) {
	var cands []entry
	for _, e := range v.ready {
		if len(cands) == want {
			break
		}
		if !v.taken(e.id) {
			cands = append(cands, e)
		}
	}
	var next time.Time
	nowNs := now.UnixNano()
	for _, e := range v.delayed {
		if e.at > nowNs {
			next = time.Unix(0, e.at)
			break
		}
		if v.taken(e.id) {
			continue
		}
		if i, _ := slices.BinarySearchFunc(cands, e, cmpReady); i < want {
			cands = slices.Insert(cands, i, e)
			cands = cands[:min(len(cands), want)]
		}
	}
	return cands, next
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
		if ix.loaded && ix.paused {
			if !wait {
				ix.mu.Unlock()
				return nil, ErrPaused
			}
		} else if ix.loaded {
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
