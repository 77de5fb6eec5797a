// Package names validates recipe names and lays out the keys a recipe writes
// under its name.
//
// A recipe named N writes only under N + "/." + kind + "/" (for example
// "/jobs/reindex/.lock/"). Names are '/'-separated segments; a segment may not
// start with '.', so no name can equal or reach into another recipe's
// reserved keys: a lock named "a" writes "a/.lock/…", and no valid name is
// "a/.lock". Two recipes of different kinds may share a name.
package names

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxLen is the longest name accepted, in bytes.
const MaxLen = 1024

// Validate reports why name cannot be used as a recipe name, with pkg (the
// package, e.g. "lock") as the error's prefix, or nil.
func Validate(pkg, name string) error {
	bad := func(why string) error { return fmt.Errorf("%s: invalid name %q: %s", pkg, name, why) }
	switch {
	case name == "":
		return fmt.Errorf("%s: invalid name: empty", pkg)
	case len(name) > MaxLen:
		return fmt.Errorf("%s: invalid name (%d bytes): longer than %d bytes", pkg, len(name), MaxLen)
	case !utf8.ValidString(name):
		return bad("not valid UTF-8")
	case strings.ContainsRune(name, 0):
		return bad("contains a NUL byte")
	case strings.HasSuffix(name, "/"):
		return bad("ends with '/'")
	case strings.Contains(name, "//"):
		return bad("contains an empty segment ('//')")
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return bad("contains a control character")
		}
	}
	for seg := range strings.SplitSeq(strings.TrimPrefix(name, "/"), "/") {
		if strings.HasPrefix(seg, ".") {
			return bad("a segment starts with '.' (reserved for recipe keys)")
		}
	}
	return nil
}

// ValidateSegment reports why s cannot be the last segment of a key a
// recipe names after it (a cron job, a discovery instance), or nil: empty,
// longer than max bytes, not UTF-8, or holding '/' or a control character.
// The error reads "<pkg>: invalid <what> …".
func ValidateSegment(pkg, what, s string, max int) error {
	bad := func(why string) error { return fmt.Errorf("%s: invalid %s %q: %s", pkg, what, s, why) }
	switch {
	case s == "":
		return fmt.Errorf("%s: invalid %s: empty", pkg, what)
	case len(s) > max:
		return fmt.Errorf("%s: invalid %s (%d bytes): longer than %d bytes", pkg, what, len(s), max)
	case !utf8.ValidString(s):
		return bad("not valid UTF-8")
	case strings.ContainsRune(s, '/'):
		return bad("contains '/'")
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return bad("contains a control character")
		}
	}
	return nil
}

// Prefix returns the key prefix a recipe of the given kind owns under name:
// name + "/." + kind + "/". name must be valid.
func Prefix(name, kind string) string { return name + "/." + kind + "/" }

// IDLen is the length of the random IDs recipes name their own keys with:
// 8 random bytes in lowercase hex.
const IDLen = 16

// IsID reports whether s has the shape of such an ID. Recipes check the
// keys they read under their names with it, to tell a key they wrote from
// a foreign one.
func IsID(s string) bool {
	if len(s) != IDLen {
		return false
	}
	for i := range len(s) {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// NewID returns a new random ID of that shape.
func NewID() string {
	var b [IDLen / 2]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go ≥ 1.24)
	return hex.EncodeToString(b[:])
}
