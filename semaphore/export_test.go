package semaphore

// Releasing reports whether a Release of p holds its turn.
func Releasing(p *Permit) bool { return p.release.Held() }
