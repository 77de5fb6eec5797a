package election

// Proclaiming reports whether a Proclaim of t holds its turn.
func (t *Term) Proclaiming() bool { return t.proclaiming.Held() }
