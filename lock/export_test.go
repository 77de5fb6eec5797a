package lock

// ConfirmsBy returns how many Mutex confirms so far ended by a touch of own
// key, and by the answer to a progress request.
func ConfirmsBy() (touch, progress int64) {
	return confirmsBy.touch.Load(), confirmsBy.progress.Load()
}

// Unlocking reports whether an Unlock of h holds its turn.
func Unlocking(h *Hold) bool { return h.unlock.Held() }

// OwnWatchesIdle returns how many watches on m's own key are pooled, idle.
func OwnWatchesIdle(m *Mutex) int { return m.w.own.Idle() }
