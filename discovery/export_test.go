package discovery

// WriteInProgress reports whether a write of r's record (an Update, a
// re-registration, a Deregister's delete) holds the record's write lock.
func WriteInProgress(r *Registration) bool { return r.b.writing.Held() }
