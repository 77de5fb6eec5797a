package semaphore

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// A permit key's value records the count and who asked, for Inspect:
//
//	s1:<count>:<unix nanoseconds of the request>:<caller's value>
//
// The limit key's value is the limit in decimal.
const valueMagic = "s1:"

func encodePermit(n int, at time.Time, v string) string {
	return valueMagic + strconv.Itoa(n) + ":" + strconv.FormatInt(at.UnixNano(), 10) + ":" + v
}

func decodePermit(b []byte) (n int, at time.Time, v string, err error) {
	s := string(b)
	rest, ok := strings.CutPrefix(s, valueMagic)
	if !ok {
		return 0, time.Time{}, "", fmt.Errorf("%w: %.40q is not a permit", ErrCorrupt, s)
	}
	ns, rest, ok1 := strings.Cut(rest, ":")
	ts, v, ok2 := strings.Cut(rest, ":")
	if !ok1 || !ok2 {
		return 0, time.Time{}, "", fmt.Errorf("%w: %.40q is not a permit", ErrCorrupt, s)
	}
	n, err = strconv.Atoi(ns)
	if err != nil || n <= 0 || n > MaxLimit || ns != strconv.Itoa(n) {
		return 0, time.Time{}, "", fmt.Errorf("%w: permit %.40q has a bad count", ErrCorrupt, s)
	}
	t, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || t < 0 || ts != strconv.FormatInt(t, 10) {
		return 0, time.Time{}, "", fmt.Errorf("%w: permit %.40q has a bad time", ErrCorrupt, s)
	}
	return n, time.Unix(0, t), v, nil
}

func encodeLimit(limit int) string { return strconv.Itoa(limit) }

func decodeLimit(b []byte) (int, error) {
	s := string(b)
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 || n > MaxLimit || s != strconv.Itoa(n) {
		return 0, fmt.Errorf("%w: limit %.40q", ErrCorrupt, s)
	}
	return n, nil
}
