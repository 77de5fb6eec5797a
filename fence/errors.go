package fence

import (
	"errors"
	"fmt"
)

var (
	// ErrStale reports a token lower than one already admitted for the
	// resource: its holder lost the holding to a newer one.
	ErrStale = errors.New("fence: stale token")
	// ErrNoToken reports a request that carries no token, or one that is
	// not a positive integer.
	ErrNoToken = errors.New("fence: no valid fencing token")
	// ErrNoRow reports a Column whose row does not exist.
	ErrNoRow = errors.New("fence: no such row")
)

// staleError says which token was refused and what was admitted before.
func staleError(resource string, token, highest int64) error {
	return fmt.Errorf("%w: token %d for %q, %d already admitted", ErrStale, token, resource, highest)
}

// checkToken refuses tokens no holding can carry: a create revision is at
// least 1.
func checkToken(token int64) error {
	if token <= 0 {
		return fmt.Errorf("%w: %d is not positive", ErrNoToken, token)
	}
	return nil
}
