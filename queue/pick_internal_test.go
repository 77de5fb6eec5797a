package queue

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// idsOwnedBy returns n task IDs whose owner among w workers is rank r.
func idsOwnedBy(r, w, n int) []string {
	var out []string
	for i := 0; len(out) < n; i++ {
		id := fmt.Sprintf("t%03d", i)
		if int(ownerHash(id)%uint32(w)) == r {
			out = append(out, id)
		}
	}
	return out
}

func ids(es []entry) []string {
	out := []string{}
	for _, e := range es {
		out = append(out, e.id)
	}
	return out
}

func TestChoose(t *testing.T) {
	now := time.Unix(1000, 0)
	ns := now.UnixNano()
	ready := func(id string, prio int32, at int64) entry { return entry{id: id, prio: prio, at: at, ready: true} }
	delayed := func(id string, prio int32, at int64) entry { return entry{id: id, prio: prio, at: at} }
	none := func(string) bool { return false }
	takenSet := func(ids ...string) func(string) bool {
		return func(id string) bool {
			for _, x := range ids {
				if x == id {
					return true
				}
			}
			return false
		}
	}
	// With workers "a" and "b", a owns ownA, b owns ownB.
	ownA, ownB := idsOwnedBy(0, 2, 3), idsOwnedBy(1, 2, 3)
	step := 10 * time.Millisecond

	for _, tc := range []struct {
		name     string
		view     pickView
		batch    int
		want     []string
		wantNext time.Time
	}{{
		name:  "alone: in order, up to the batch",
		view:  pickView{self: "a", workers: []string{"a"}, ready: []entry{ready("x", 0, 1), ready("y", 0, 2), ready("z", 0, 3)}, taken: none},
		batch: 2, want: []string{"x", "y"},
	}, {
		name:  "alone: taken tasks are passed over",
		view:  pickView{self: "a", workers: []string{"a"}, ready: []entry{ready("x", 0, 1), ready("y", 0, 2)}, taken: takenSet("x")},
		batch: 2, want: []string{"y"},
	}, {
		name:  "alone: a due delayed task of higher priority comes first; one not due sets the next look",
		view:  pickView{self: "a", workers: []string{"a"}, ready: []entry{ready("x", 0, 1)}, delayed: []entry{delayed("d", 5, ns-1), delayed("later", 9, ns+50)}, taken: none},
		batch: 2, want: []string{"d", "x"}, wantNext: time.Unix(0, ns+50),
	}, {
		name:  "alone: nothing free",
		view:  pickView{self: "a", workers: []string{"a"}, ready: []entry{ready("x", 0, 1)}, taken: takenSet("x")},
		batch: 1, want: []string{},
	}, {
		name: "two workers: a takes its own task, not b's first",
		view: pickView{self: "a", workers: []string{"b", "a"}, ready: []entry{ready(ownB[0], 0, 1), ready(ownA[0], 0, 2)}, taken: none,
			since: map[string]time.Time{ownB[0]: now, ownA[0]: now}, step: step},
		batch: 1, want: []string{ownA[0]},
	}, {
		name: "two workers: b takes its own task, whatever order its view lists the workers in",
		view: pickView{self: "b", workers: []string{"a", "b"}, ready: []entry{ready(ownB[0], 0, 1), ready(ownA[0], 0, 2)}, taken: none,
			since: map[string]time.Time{ownB[0]: now, ownA[0]: now}, step: step},
		batch: 1, want: []string{ownB[0]},
	}, {
		name: "two workers: another's task waits for its owner one step, and says when to look again",
		view: pickView{self: "a", workers: []string{"a", "b"}, ready: []entry{ready(ownB[0], 0, 1)}, taken: none,
			since: map[string]time.Time{ownB[0]: now.Add(-step / 2)}, step: step},
		batch: 1, want: []string{}, wantNext: now.Add(step / 2),
	}, {
		name: "two workers: another's task left unclaimed for a step is taken, one at a time",
		view: pickView{self: "a", workers: []string{"a", "b"}, ready: []entry{ready(ownB[0], 0, 1), ready(ownB[1], 0, 2)}, taken: none,
			since: map[string]time.Time{ownB[0]: now.Add(-step), ownB[1]: now.Add(-step)}, step: step},
		batch: 2, want: []string{ownB[0]},
	}, {
		name: "two workers: a delayed task's turn counts from when it became due",
		view: pickView{self: "a", workers: []string{"a", "b"}, delayed: []entry{delayed(ownB[0], 0, ns-int64(step/4))}, taken: none,
			since: map[string]time.Time{ownB[0]: now.Add(-time.Hour)}, step: step},
		batch: 1, want: []string{}, wantNext: now.Add(step - step/4),
	}, {
		name:  "two workers: own tasks up to the batch",
		view:  pickView{self: "a", workers: []string{"a", "b"}, ready: []entry{ready(ownA[0], 0, 1), ready(ownB[0], 0, 2), ready(ownA[1], 0, 3), ready(ownA[2], 0, 4)}, taken: none, step: step},
		batch: 2, want: []string{ownA[0], ownA[1]},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got, next := choose(tc.view, now, tc.batch)
			assert.Equal(t, tc.want, ids(got))
			assert.Equal(t, tc.wantNext, next)
		})
	}
}

// Only the first 4·w free tasks compete: an own task further back waits,
// so that one worker's view does not reach past the tasks the others are
// about to take.
func TestChooseLooksAtTheFirstFourPerWorker(t *testing.T) {
	now := time.Unix(1000, 0)
	ownA, ownB := idsOwnedBy(0, 2, 1), idsOwnedBy(1, 2, 9)
	var ready []entry
	for i, id := range append(ownB, ownA...) {
		ready = append(ready, entry{id: id, at: int64(i), ready: true})
	}
	since := map[string]time.Time{}
	for _, e := range ready {
		since[e.id] = now
	}
	got, next := choose(pickView{self: "a", workers: []string{"a", "b"}, ready: ready, taken: func(string) bool { return false },
		since: since, step: time.Millisecond}, now, 1)
	assert.Empty(t, got)
	assert.Equal(t, now.Add(time.Millisecond), next)
}
