package pubsub

import (
	"encoding/binary"
	"fmt"
	"math"
	"time"
)

// Stored formats. Both start with a format byte so that a later format can be
// told apart from this one, and both are decoded without trusting any length
// they carry: a decoder never allocates more than the value it was given.
const (
	formatMessage byte = 0x01 // message envelope in a slot key
	formatHead    byte = 0x02 // topic head

	// envelopeOverhead bounds what a message envelope adds to the payload:
	// a format byte and two varints.
	envelopeOverhead = 1 + binary.MaxVarintLen64 + binary.MaxVarintLen64
)

// envelope is a message as stored in its slot: the topic-wide sequence number
// given by the publishing transaction, the publisher's wall clock, the payload.
type envelope struct {
	seq     uint64
	unixNs  int64
	payload []byte
}

func encodeEnvelope(e envelope) []byte {
	b := make([]byte, 0, envelopeOverhead+len(e.payload))
	b = append(b, formatMessage)
	b = binary.AppendUvarint(b, e.seq)
	b = binary.AppendVarint(b, e.unixNs)
	return append(b, e.payload...)
}

// decodeEnvelope reads a slot value. The payload aliases v.
func decodeEnvelope(v []byte) (envelope, error) {
	if len(v) == 0 || v[0] != formatMessage {
		return envelope{}, fmt.Errorf("%w: not a message envelope", ErrCorrupt)
	}
	rest := v[1:]
	seq, n := binary.Uvarint(rest)
	if n <= 0 || seq == 0 || seq > maxSeq {
		return envelope{}, fmt.Errorf("%w: bad sequence number", ErrCorrupt)
	}
	rest = rest[n:]
	ns, n := binary.Varint(rest)
	if n <= 0 {
		return envelope{}, fmt.Errorf("%w: bad timestamp", ErrCorrupt)
	}
	return envelope{seq: seq, unixNs: ns, payload: rest[n:]}, nil
}

// maxSeq bounds sequence numbers read back: a topic reaches it only by a
// planted or corrupt head, and the sum and difference of two stay in range.
const maxSeq = math.MaxInt64

// head is the topic's one mutable record: the sequence number of the latest
// message and the retention every publisher must agree on. Its ModRevision is
// the revision of the latest publish (head and slot are written together).
type head struct {
	seq    uint64
	count  uint64        // ring size: messages kept by count
	maxAge time.Duration // 0: no age limit
}

func encodeHead(h head) []byte {
	b := make([]byte, 0, 1+3*binary.MaxVarintLen64)
	b = append(b, formatHead)
	b = binary.AppendUvarint(b, h.seq)
	b = binary.AppendUvarint(b, h.count)
	return binary.AppendVarint(b, int64(h.maxAge))
}

func decodeHead(v []byte) (head, error) {
	if len(v) == 0 || v[0] != formatHead {
		return head{}, fmt.Errorf("%w: not a topic head", ErrCorrupt)
	}
	rest := v[1:]
	seq, n := binary.Uvarint(rest)
	if n <= 0 || seq >= maxSeq {
		// At maxSeq the next publish would overflow what messages carry.
		return head{}, fmt.Errorf("%w: bad head sequence number", ErrCorrupt)
	}
	rest = rest[n:]
	count, n := binary.Uvarint(rest)
	if n <= 0 || count == 0 || count > MaxRetainCount {
		return head{}, fmt.Errorf("%w: bad head retention count", ErrCorrupt)
	}
	rest = rest[n:]
	age, n := binary.Varint(rest)
	if n <= 0 || age < 0 {
		return head{}, fmt.Errorf("%w: bad head retention age", ErrCorrupt)
	}
	if n != len(rest) {
		return head{}, fmt.Errorf("%w: trailing bytes after the head", ErrCorrupt)
	}
	return head{seq: seq, count: count, maxAge: time.Duration(age)}, nil
}
