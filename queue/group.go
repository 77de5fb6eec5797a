package queue

import (
	"cmp"
	"slices"
	"sync/atomic"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// member is one unfinished task of a group, as a consumer's view knows it:
// its member key's create revision is its place in the group.
type member struct {
	rev int64
	id  string
}

func cmpMember(a, b member) int {
	if c := cmp.Compare(a.rev, b.rev); c != 0 {
		return c
	}
	// One transaction (an EnqueueBatch, several EnqueueTx) gives its tasks
	// one revision; IDs from one process strictly increase.
	return cmp.Compare(a.id, b.id)
}

// groups is a consumer's view of the group member keys (i/g/): the
// unfinished tasks of every group, in group order.
//
// Why a task the view calls the head of its group may be claimed without
// any further check in etcd: the view reflects every revision up to the
// one it was read or watched at, whole (etcd never splits a revision's
// events between watch responses, and the index applies a response under
// one lock). It holds the task's member key, so it holds every member key
// created before it, live or since deleted. A member key is deleted only
// when its task is finished for good, and a requeued dead letter gets a new
// one, created later than any task it could overtake. So "every task
// before this one in its group is finished" is true in etcd once the view
// says so, and stays true: the claim transaction need not compare ranges
// of member keys (which would walk every deleted one until compaction).
type groups struct {
	members map[string][]member // group hash → live members, in group order
	of      map[string]string   // task ID → its group's hash
}

func newGroups() groups {
	return groups{members: map[string][]member{}, of: map[string]string{}}
}

func (g groups) add(h, id string, rev int64) {
	if g.of[id] == h {
		g.remove(h, id) // written again in place: its new revision counts
	}
	ms := g.members[h]
	m := member{rev, id}
	i, _ := slices.BinarySearchFunc(ms, m, cmpMember)
	g.members[h] = slices.Insert(ms, i, m)
	g.of[id] = h
}

func (g groups) remove(h, id string) {
	ms := g.members[h]
	if i := slices.IndexFunc(ms, func(m member) bool { return m.id == id }); i >= 0 {
		ms = slices.Delete(ms, i, i+1)
	}
	if len(ms) == 0 {
		delete(g.members, h)
	} else {
		g.members[h] = ms
	}
	if g.of[id] == h {
		delete(g.of, id)
	}
}

// waiting reports whether task id must wait for an earlier task of its
// group. A task in no group, or whose member key the view has not seen
// (its group finished it, or it was enqueued without one), never waits.
func (g groups) waiting(id string) bool {
	if ignoreGroups.Load() {
		return false
	}
	h, ok := g.of[id]
	if !ok {
		return false
	}
	ms := g.members[h]
	return len(ms) > 0 && ms[0].id != id
}

// ignoreGroups makes every consumer of this process hand grouped tasks out
// as if they were in no group. Only tests set it, to show that their order
// checkers catch a group taken out of order.
var ignoreGroups atomic.Bool

// leaveOps are the operations that take a task out of the unfinished set
// for good (acknowledged, dead-lettered): its dedup ID is freed and its
// group moves on.
func (t *Task) leaveOps() []clientv3.Op {
	out := append(t.dedupRelease(), t.q.keys.departOps(t.bounded)...)
	if t.Group != "" {
		out = append(out, clientv3.OpDelete(t.q.keys.member(groupHash(t.Group), t.ID)))
	}
	return out
}
