package cache

import clientv3 "go.etcd.io/etcd/client/v3"

// KV is one key as the cache holds it. Value is shared with the cache and
// every reader: do not modify it.
type KV struct {
	Key            string
	Value          []byte
	CreateRevision int64
	ModRevision    int64
	Version        int64
	Lease          clientv3.LeaseID
}

// EventType says what happened to a key.
type EventType int

const (
	// Create: the key did not exist and now does.
	Create EventType = iota + 1
	// Update: the key existed and has a new value. After a reload this also
	// stands for a deletion followed by a re-creation that the cache could
	// not see one by one (the KV's CreateRevision then differs from Prev's).
	Update
	// Delete: the key existed and is gone.
	Delete
)

func (t EventType) String() string {
	switch t {
	case Create:
		return "Create"
	case Update:
		return "Update"
	case Delete:
		return "Delete"
	}
	return "EventType(?)"
}

// Event is one change of one key.
type Event struct {
	Type EventType
	// KV is the new state of the key. For a Delete it holds the key alone,
	// with ModRevision set to the revision of the deletion (the reload
	// revision when the deletion was found by a reload).
	KV KV
	// Prev is the key's state before the change; nil for a Create.
	Prev *KV
}

// Batch is the unit a subscriber receives: every change at one revision (a
// transaction may change several keys at once), or a snapshot. Applying a
// batch to a view that equals etcd's range at an earlier revision makes it
// equal etcd's range at Revision, so a subscriber that applies batches in
// the order received never holds a state that etcd never had.
type Batch struct {
	// Revision is the etcd revision the view equals after this batch.
	Revision int64
	// Snapshot is true when Events hold the whole state (every event a
	// Create): the subscriber must drop its view and rebuild it from this
	// batch. The first batch of a subscription is a snapshot; so is the
	// first batch after a subscriber fell more than its buffer behind.
	Snapshot bool
	// Events are the changes, ordered by key within a batch; a snapshot's
	// events are ordered by key too.
	Events []Event
}
