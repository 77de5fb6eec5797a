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
