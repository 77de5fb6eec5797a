package cron

import "errors"

// ErrCommitted reports a Commit refused because the time's effects were
// committed already: by an earlier attempt of the same time (whose leader
// then lost its term before recording that fn returned), or by an earlier
// Commit of the same run.
var ErrCommitted = errors.New("cron: run already committed")

// ErrCorrupt reports a value under the scheduler's keys that it did not
// write or cannot read.
var ErrCorrupt = errors.New("cron: corrupt value")
var (
	// ErrBadSpec reports a schedule that cannot be parsed.
	ErrBadSpec = errors.New("cron: bad schedule spec")
	// ErrDuplicate reports a job added, or a handler registered, twice.
	ErrDuplicate = errors.New("cron: duplicate name")
	// ErrStarted reports an Add, a Handle or a second Run after Run started.
	ErrStarted = errors.New("cron: scheduler already running")
)
