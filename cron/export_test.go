package cron

// Committing reports whether a Commit of r holds its turn.
func Committing(r Run) bool { return r.commit.turn.Held() }
