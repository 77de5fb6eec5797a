package lock

import (
	"fmt"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// pred is a key ahead of the waiter's own.
type pred struct {
	rev   int64
	lease clientv3.LeaseID
}

// turn follows which keys ahead of own must still go before own is granted,
// from the reads of the queue and the deletions seen on the watches.
type turn struct {
	prefix string // the lock's prefix
	queue  string // prefix + "q/"
	key    string // own key
	rw     bool   // an RWMutex's queue: requests are r<id> and w<id>
	rev    int64  // own create revision, the token
	// yields reports whether own must wait for the older key k.
	yields func(k string) bool

	seen int64 // revision of the last read; events at or below it are in it
	// alive is the highest revision at which own key was seen to stand by
	// an event on its watch: a touch by the unlock of the key ahead.
	alive int64
	// next is the key just behind own, with its create revision, as of the
	// last read (Mutex only): own unlock touches it (touchNext).
	next    string
	nextRev int64
	// applied is the revision of the latest deletion ahead taken from a
	// watch without a read after it: a later read must be at least as new.
	applied int64
	preds   map[string]pred
	// gone are the keys seen to go, or found gone by a read, since the last
	// read that still showed keys ahead, for lock-delay: one of them was the
	// last holder.
	gone []pred
	// emptied is set when the last key ahead went while own waited.
	emptied bool

	requested bool // a release was requested for own token
	forced    bool // ForceRelease deleted own key
}

// load replaces what turn knows with a read at rev: of the whole prefix, or
// of the queue's keys. Own key must be in it.
func (t *turn) load(kvs []*mvccpb.KeyValue, rev int64) error {
	t.seen = rev
	clear(t.preds)
	t.next, t.nextRev = "", 0
	t.emptied = false
	found := false
	rel := releaseKey(t.prefix, t.rev)
	for _, kv := range kvs {
		k := string(kv.Key)
		switch {
		case k == t.key:
			if kv.CreateRevision != t.rev {
				return errOwnGone
			}
			found = true
		case k == rel:
			force, err := decodeRelease(kv.Value)
			if err != nil {
				return err
			}
			t.requested = true
			t.forced = t.forced || force
		case strings.HasPrefix(k, t.queue) && !requestKeyOK(t.queue, k, t.rw):
			return fmt.Errorf("%w: key %s is no request of this lock", ErrCorrupt, k)
		case strings.HasPrefix(k, t.queue) && kv.CreateRevision < t.rev && (t.yields == nil || t.yields(k)):
			t.preds[k] = pred{rev: kv.CreateRevision, lease: clientv3.LeaseID(kv.Lease)}
		case strings.HasPrefix(k, t.queue) && kv.CreateRevision > t.rev && (t.next == "" || kv.CreateRevision < t.nextRev):
			t.next, t.nextRev = k, kv.CreateRevision
		}
	}
	if !found {
		return errOwnGone
	}
	return nil
}

// nearest2 returns the keys ahead with the highest and second highest
// create revisions ("" if none): own is granted right after the first,
// unless it leaves the queue first.
func (t *turn) nearest2() (first, second string) {
	var r1, r2 int64
	for k, p := range t.preds {
		switch {
		case p.rev > r1:
			second, r2 = first, r1
			first, r1 = k, p.rev
		case p.rev > r2:
			second, r2 = k, p.rev
		}
	}
	return first, second
}

// apply updates turn with one event of the watch on own key. It returns
// errOwnGone when own key is deleted or replaced.
func (t *turn) apply(ev *clientv3.Event) error {
	if ev.Kv.ModRevision <= t.seen || string(ev.Kv.Key) != t.key {
		return nil // already part of the last read (or an older incarnation)
	}
	if ev.Type == clientv3.EventTypeDelete || ev.Kv.CreateRevision != t.rev {
		return errOwnGone
	}
	// A put of the same incarnation (the unlock ahead touched it, see
	// touchNext): own key stood at that revision.
	t.alive = max(t.alive, ev.Kv.ModRevision)
	return nil
}
