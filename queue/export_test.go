package queue

// PendingGiveBacks returns how many claims q is still trying to give back.
func PendingGiveBacks(q *Queue) int {
	ix := q.currentIndex()
	if ix == nil {
		return 0
	}
	ix.mu.Lock()
	defer ix.mu.Unlock()
	return len(ix.giveBacks)
}

// OpHeld reports whether one of t's Ack, Nack, Fail or Progress calls holds
// the lock that serializes them.
func OpHeld(t *Task) bool { return t.op.Held() }

// RetentionGrantHeld reports whether an Ack of q holds the lock that
// serializes retention lease grants.
func RetentionGrantHeld(q *Queue) bool { return q.retainG.Held() }

// IgnoreGroups makes this process's consumers hand grouped tasks out as if
// they were in no group, until the test ends.
func IgnoreGroups(t interface{ Cleanup(func()) }) {
	ignoreGroups.Store(true)
	t.Cleanup(func() { ignoreGroups.Store(false) })
}
