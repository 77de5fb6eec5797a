package queue

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Key layout under the queue's prefix P = names.Prefix(name, "queue"):
//
//	P i/r/<prio>/<time>/<id>  ready: claimable now, in key order
//	P i/d/<time>/<prio>/<id>  delayed: claimable from <time> on
//	P i/c/<id>                claim, bound to the worker's lease
//	P i/k/<id>                cancel marker: the canceled claim's token, retention lease
//	P i/p                     pause marker: present while the queue is paused
//	P i/g/<group>/<id>        group member (WithGroup): present while the task is unfinished
//	P m/in                    bounded queue (WithMaxSize): how many tasks were admitted
//	P m/out                   bounded queue: its Version counts the tasks that left
//	P t/<id>                  task record: metadata and payload
//	P s/<id>                  status record: state, position key, last error
//	P f/<id>                  finished record, bound to a retention lease
//	P r/<id>                  an acked task's result (AckResult), on the same lease
//	P a/<id>                  claim counter: its etcd Version counts the claims
//	P n/<id>                  claims given back unused: its Version counts them
//	P p/<id>                  progress: fraction, message, checkpoint
//	P u/<dedup id>            dedup claim: the ID of the unfinished task
//	P x/<id>                  dead-letter index
//
// The three index kinds sit under one "i/" prefix so a consumer process
// watches them with a single watch, without receiving payloads.
//
// <prio> is 8 hex digits that sort higher priorities first; <time> is 16 hex
// digits of Unix nanoseconds; <id> is 16 hex digits of Unix nanoseconds and 8
// of randomness, so IDs from one producer sort in enqueue order.
type layout struct {
	prefix string
}

func (l layout) ready(prio int32, at int64, id string) string {
	return l.prefix + "i/r/" + encPrio(prio) + "/" + encTime(at) + "/" + id
}
func (l layout) delayed(at int64, prio int32, id string) string {
	return l.prefix + "i/d/" + encTime(at) + "/" + encPrio(prio) + "/" + id
}
func (l layout) claim(id string) string    { return l.prefix + "i/c/" + id }
func (l layout) canceled(id string) string { return l.prefix + "i/k/" + id }
func (l layout) task(id string) string     { return l.prefix + "t/" + id }
func (l layout) status(id string) string   { return l.prefix + "s/" + id }
func (l layout) finished(id string) string { return l.prefix + "f/" + id }
func (l layout) attempt(id string) string  { return l.prefix + "a/" + id }
func (l layout) unused(id string) string   { return l.prefix + "n/" + id }
func (l layout) progress(id string) string { return l.prefix + "p/" + id }
func (l layout) dedup(d string) string     { return l.prefix + "u/" + d }
func (l layout) dead(id string) string     { return l.prefix + "x/" + id }
func (l layout) index() string             { return l.prefix + "i/" }
func (l layout) readyPrefix() string       { return l.prefix + "i/r/" }
func (l layout) delayedPrefix() string     { return l.prefix + "i/d/" }
func (l layout) claimPrefix() string       { return l.prefix + "i/c/" }
func (l layout) canceledPrefix() string    { return l.prefix + "i/k/" }
func (l layout) paused() string            { return l.prefix + "i/p" }
func (l layout) result(id string) string   { return l.prefix + "r/" + id }
func (l layout) groupPrefix() string       { return l.prefix + "i/g/" }
func (l layout) admitted() string          { return l.prefix + "m/in" }
func (l layout) departed() string          { return l.prefix + "m/out" }

// member is the group member key of task id in the group whose hash is g
// (groupHash).
func (l layout) member(g, id string) string { return l.prefix + "i/g/" + g + "/" + id }

// groupHash names a group in keys: 16 hex digits of the SHA-256 of its name,
// so that any name fits a key of fixed shape. Two names that shared a hash
// would be ordered as one group: slower, never out of order.
func groupHash(name string) string {
	h := sha256.Sum256([]byte(name))
	return hex.EncodeToString(h[:8])
}

// parseMember parses a key under i/g/ (rest is the key without the queue
// prefix and "i/g/"): the group's hash and the task's ID.
func parseMember(rest string) (g, id string, ok bool) {
	g, id, ok = strings.Cut(rest, "/")
	return g, id, ok && len(g) == 16 && isHex(g) && validID(id)
}

// encPrio maps a priority to 8 hex digits whose byte order is the reverse of
// the priority order, so that a range in key order yields the highest first.
func encPrio(p int32) string {
	u := ^(uint32(p) ^ 0x80000000)
	return fmt.Sprintf("%08x", u)
}

func decPrio(s string) (int32, error) {
	if len(s) != 8 {
		return 0, fmt.Errorf("priority %q: want 8 hex digits", s)
	}
	u, err := strconv.ParseUint(s, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("priority %q: %w", s, err)
	}
	return int32(^uint32(u) ^ 0x80000000), nil
}

func encTime(ns int64) string { return fmt.Sprintf("%016x", uint64(ns)) }

func decTime(s string) (int64, error) {
	if len(s) != 16 {
		return 0, fmt.Errorf("time %q: want 16 hex digits", s)
	}
	u, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		return 0, fmt.Errorf("time %q: %w", s, err)
	}
	return int64(u), nil
}

const idLen = 24

func validID(id string) bool {
	return len(id) == idLen && isHex(id)
}

// isHex reports whether s is lower-case hex digits only.
func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// idGen makes task IDs that strictly increase within one process, so tasks
// from one producer keep their enqueue order even within a clock tick.
type idGen struct {
	mu   sync.Mutex // protects last
	last int64
}

func (g *idGen) next(now time.Time) (string, int64) {
	ns := now.UnixNano()
	g.mu.Lock()
	if ns <= g.last {
		ns = g.last + 1
	}
	g.last = ns
	g.mu.Unlock()
	var r [4]byte
	_, _ = rand.Read(r[:])
	return encTime(ns) + hex.EncodeToString(r[:]), ns
}

// entry is one index key, parsed.
type entry struct {
	key   string
	id    string
	prio  int32
	at    int64 // ready time (delayed) or order time (ready)
	ready bool  // under i/r/ rather than i/d/
}

// less orders entries as consumers should take them: higher priority first,
// then earlier time, then ID.
func (e entry) less(o entry) bool {
	if e.prio != o.prio {
		return e.prio > o.prio
	}
	if e.at != o.at {
		return e.at < o.at
	}
	return e.id < o.id
}

// parseIndexKey parses a key under i/r/ or i/d/ (rest is the key without the
// queue prefix and without "i/").
func parseIndexKey(key, rest string) (entry, error) {
	parts := strings.Split(rest, "/")
	if len(parts) != 4 || (parts[0] != "r" && parts[0] != "d") {
		return entry{}, fmt.Errorf("%w: index key %q", ErrCorrupt, key)
	}
	e := entry{key: key, id: parts[3], ready: parts[0] == "r"}
	ps, ts := parts[1], parts[2]
	if !e.ready {
		ps, ts = ts, ps
	}
	var err error
	if e.prio, err = decPrio(ps); err != nil {
		return entry{}, fmt.Errorf("%w: index key %q: %v", ErrCorrupt, key, err)
	}
	if e.at, err = decTime(ts); err != nil {
		return entry{}, fmt.Errorf("%w: index key %q: %v", ErrCorrupt, key, err)
	}
	if !validID(e.id) {
		return entry{}, fmt.Errorf("%w: index key %q: bad task ID", ErrCorrupt, key)
	}
	return e, nil
}
