package pubsub

import "errors"

// ErrRetention reports retention options that are invalid, or that disagree
// with the retention a topic was created with.
var ErrRetention = errors.New("pubsub: bad retention")

// ErrClosed is returned by Next after the subscription was closed with Close.
var ErrClosed = errors.New("pubsub: subscription closed")

// ErrCorrupt reports a value under a topic's keys that this package did not
// write or cannot read (a foreign writer, a newer format, a truncated value).
var ErrCorrupt = errors.New("pubsub: corrupt value")

// ErrHubClosed is returned by a Hub's methods, and ends its subscriptions,
// once it is closed.
var ErrHubClosed = errors.New("pubsub: hub closed")
