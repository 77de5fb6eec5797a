package barrier

// SetTestHookRead calls f after the first read of every wait, until reset
// with nil.
func SetTestHookRead(f func()) {
	if f == nil {
		testHookRead.Store(nil)
		return
	}
	testHookRead.Store(&f)
}
