package lock

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/concordkit/concord/internal/names"
)

// A queue key's value records who asked and when, for Inspect:
//
//	c1:<unix nanoseconds of the request>:<caller's value>
//
// The caller's value is free-form and may contain ':'.
const valueMagic = "c1:"

func encodeValue(at time.Time, v string) string {
	return valueMagic + strconv.FormatInt(at.UnixNano(), 10) + ":" + v
}

func decodeValue(b []byte) (at time.Time, v string, err error) {
	s := string(b)
	rest, ok := strings.CutPrefix(s, valueMagic)
	if !ok {
		return time.Time{}, "", fmt.Errorf("%w: %.40q is not a lock entry", ErrCorrupt, s)
	}
	ns, v, ok := strings.Cut(rest, ":")
	if !ok {
		return time.Time{}, "", fmt.Errorf("%w: %.40q has no time", ErrCorrupt, s)
	}
	n, err := strconv.ParseInt(ns, 10, 64)
	if err != nil || n < 0 {
		return time.Time{}, "", fmt.Errorf("%w: %.40q has a bad time", ErrCorrupt, s)
	}
	return time.Unix(0, n), v, nil
}

// requestKeyOK reports whether key, under queue, has the shape of a request
// this package writes: a random ID (names.IsID), after 'r' or 'w' for an
// RWMutex. Reads of the queue for the acquire path ask for keys only, so the
// shape is what tells a foreign key from a request there.
func requestKeyOK(queue, key string, rw bool) bool {
	rest, ok := strings.CutPrefix(key, queue)
	if !ok {
		return false
	}
	if rw {
		if len(rest) == 0 || rest[0] != 'r' && rest[0] != 'w' {
			return false
		}
		rest = rest[1:]
	}
	return names.IsID(rest)
}

// Release requests are written under release/<token> with one of these
// values, attached to the holder's lease.
const (
	releaseRequest = "request"
	releaseForce   = "force"
)

func decodeRelease(b []byte) (force bool, err error) {
	switch string(b) {
	case releaseRequest:
		return false, nil
	case releaseForce:
		return true, nil
	}
	return false, fmt.Errorf("%w: release request %.40q", ErrCorrupt, b)
}

func releaseKey(prefix string, token int64) string {
	return prefix + "release/" + strconv.FormatInt(token, 10)
}
