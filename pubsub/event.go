package pubsub

import (
	"fmt"
	"time"
)

// Message is one published message.
type Message struct {
	Topic string
	// Rev is the etcd revision of the publish: unique per message on a
	// cluster, increasing in publish order. Resume with FromRevision(Rev+1).
	Rev int64
	// Seq numbers the topic's messages 1, 2, 3… in publish order.
	Seq uint64
	// Time is the publisher's wall clock at publish.
	Time    time.Time
	Payload []byte
}

// GapReason says why messages were not delivered.
type GapReason string

const (
	// GapTrimmed: the messages were dropped by the topic's retention (count or
	// age) before this subscription could read them.
	GapTrimmed GapReason = "trimmed"
	// GapCompacted: the subscription's watch had to resume at a revision
	// etcd had compacted, and the messages were no longer retained either.
	GapCompacted GapReason = "compacted"
	// GapOverflow: this subscription's buffer was full.
	GapOverflow GapReason = "overflow"
	// GapCorrupt: a value under the topic was not a message this package
	// can read (From = To = its revision).
	GapCorrupt GapReason = "corrupt"
)

// Gap reports that messages published at revisions From..To (inclusive)
// were, or may have been, not delivered. Every revision of the topic at or
// after a subscription's start is either delivered as a Message or covered
// by a Gap; a Gap may cover revisions at which nothing was published.
type Gap struct {
	From, To int64
	// Lost is the number of messages lost when it is known, else 0.
	Lost   uint64
	Reason GapReason
}

func (g Gap) String() string {
	return fmt.Sprintf("gap %d..%d (%s, lost %d)", g.From, g.To, g.Reason, g.Lost)
}

// Event is what a subscription delivers: exactly one of Message and Gap is
// non-nil.
type Event struct {
	Message *Message
	Gap     *Gap
}

// rev is the event's revision for ordering: a message's, or a gap's last.
func (e Event) rev() int64 {
	if e.Message != nil {
		return e.Message.Rev
	}
	return e.Gap.To
}
