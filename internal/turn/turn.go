// Package turn serialises operations that hold their turn across a request
// to etcd. A sync.Mutex would do, but a caller waiting on one cannot give
// up: behind a holder stalled on a client cut off from etcd (with a context
// that never ends) it would wait for ever, whatever its own context says.
package turn

import "context"

// Turn is a lock taken under a context. The zero Turn is not usable; make
// one with New.
type Turn struct{ ch chan struct{} }

// New returns a free Turn.
func New() Turn { return Turn{ch: make(chan struct{}, 1)} }

// Take takes the turn, or returns ctx's cause if ctx ends first, holding
// nothing. A free turn is taken even when ctx has already ended, so that a
// call needing no request (a repeated, idempotent release) or one detached
// from ctx (a delete that a canceled caller must still make) does not fail
// at random: a select among a free turn and an ended ctx picks either.
func (t Turn) Take(ctx context.Context) error {
	select {
	case t.ch <- struct{}{}:
		return nil
	default:
	}
	select {
	case t.ch <- struct{}{}:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// Done gives the turn back. It must be held.
func (t Turn) Done() { <-t.ch }

// Held reports whether someone holds the turn, for tests.
func (t Turn) Held() bool { return len(t.ch) > 0 }
