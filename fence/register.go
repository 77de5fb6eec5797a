package fence

import "sync"

// Register remembers, per resource, the highest fencing token it admitted.
// The zero value is ready to use; it is safe for concurrent use. It keeps one
// small record for every resource name it was given, for its lifetime.
type Register struct {
	mu  sync.Mutex
	res map[string]*record
}

// record is one resource's fence. Its mutex is held while an admitted
// operation runs, so that the check and the operation are one step.
type record struct {
	mu      sync.Mutex
	highest int64
}

func (r *Register) record(resource string) *record {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.res == nil {
		r.res = map[string]*record{}
	}
	rec := r.res[resource]
	if rec == nil {
		rec = &record{}
		r.res[resource] = rec
	}
	return rec
}

// Do runs op if token is at least the highest token admitted for resource,
// and raises that record to token first; otherwise it returns an error that
// errors.Is ErrStale and does not run op. Operations on one resource run one
// at a time, checked and run under the resource's mutex: a stale holder
// cannot be admitted between a newer holder's check and its operation. The
// record stays raised if op fails: the newer holder exists either way. A
// token that is not positive is refused with ErrNoToken.
func (r *Register) Do(resource string, token int64, op func() error) error {
	if err := checkToken(token); err != nil {
		return err
	}
	rec := r.record(resource)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if token < rec.highest {
		return staleError(resource, token, rec.highest)
	}
	rec.highest = token
	return op()
}

// Admit is Do with nothing to run: it raises the record for resource to
// token, or refuses a stale token. Use it only where what follows cannot be
// overtaken by another holder's operation (Do otherwise).
func (r *Register) Admit(resource string, token int64) error {
	return r.Do(resource, token, func() error { return nil })
}

// Highest returns the highest token admitted for resource, 0 if none was.
// It waits for an operation running on resource.
func (r *Register) Highest(resource string) int64 {
	r.mu.Lock()
	rec := r.res[resource]
	r.mu.Unlock()
	if rec == nil {
		return 0
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return rec.highest
}
