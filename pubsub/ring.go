package pubsub

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/names"
)

// keys is a topic's key layout, all under names.Prefix(topic, "pubsub").
type keys struct {
	topic  string
	prefix string // <topic>/.pubsub/
	head   string // <topic>/.pubsub/head
	slots  string // <topic>/.pubsub/s/ ; slot i is slots + decimal i
}

func keysFor(topic string) keys {
	p := names.Prefix(topic, "pubsub")
	return keys{topic: topic, prefix: p, head: p + "head", slots: p + "s/"}
}

func (k keys) slot(seq, count uint64) string {
	return k.slots + strconv.FormatUint(seq%count, 10)
}

// ringPage bounds one read of the ring: a ring of up to MaxRetainCount keys
// is read in pages, never in one giant response.
const ringPage = 512

// stored is a decoded slot.
type stored struct {
	rev int64
	env envelope
}

// snapshot is the topic as of one revision: its head and every retained
// message, plus the revisions of slot values that could not be decoded.
type snapshot struct {
	rev     int64 // the revision the snapshot was read at
	head    head
	hasHead bool
	headRev int64    // ModRevision of the head: the latest publish
	msgs    []stored // sorted by seq
	corrupt []int64  // ModRevisions of undecodable slot values
}

// readRing reads the head and the whole ring at one revision. The first page
// comes with the head in one transaction; later pages are read at that
// revision. The ring holds at most the topic's retention count of keys and
// no key is ever added outside it, so the read is bounded and cannot scan a
// growing run of tombstones.
func readRing(ctx context.Context, cli *clientv3.Client, k keys) (snapshot, error) {
	end := clientv3.GetPrefixRangeEnd(k.slots)
	resp, err := cli.Txn(ctx).Then(
		clientv3.OpGet(k.head),
		clientv3.OpGet(k.slots, clientv3.WithRange(end), clientv3.WithLimit(ringPage)),
	).Commit()
	if err != nil {
		return snapshot{}, fmt.Errorf("pubsub: read topic %q: %w", k.topic, err)
	}
	s := snapshot{rev: resp.Header.Revision}
	if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) == 1 {
		h, err := decodeHead(kvs[0].Value)
		if err != nil {
			return snapshot{}, fmt.Errorf("pubsub: topic %q head at revision %d: %w", k.topic, kvs[0].ModRevision, err)
		}
		s.head, s.hasHead, s.headRev = h, true, kvs[0].ModRevision
	}
	page := resp.Responses[1].GetResponseRange()
	for {
		for _, kv := range page.GetKvs() {
			env, err := decodeEnvelope(kv.Value)
			if err != nil {
				s.corrupt = append(s.corrupt, kv.ModRevision)
				continue
			}
			s.msgs = append(s.msgs, stored{rev: kv.ModRevision, env: env})
		}
		kvs := page.GetKvs()
		if !page.GetMore() || len(kvs) == 0 {
			break
		}
		next := string(kvs[len(kvs)-1].Key) + "\x00"
		r, err := cli.Get(ctx, next, clientv3.WithRange(end), clientv3.WithLimit(ringPage), clientv3.WithRev(s.rev))
		if err != nil {
			return snapshot{}, fmt.Errorf("pubsub: read topic %q at revision %d: %w", k.topic, s.rev, err)
		}
		page.Kvs, page.More = r.Kvs, r.More
	}
	slices.SortFunc(s.msgs, func(a, b stored) int { return cmp.Compare(a.env.seq, b.env.seq) })
	return s, nil
}

// plan turns a snapshot into the events a reader that has everything up to
// (afterSeq, afterRev) needs for the revisions lo..hi: the retained messages
// in that window and a Gap for every run of sequence numbers that is no
// longer retained and may lie in it. afterSeq = 0, afterRev = 0 means the
// reader knows nothing. Messages at or below afterSeq are skipped.
//
// A missing run between retained messages a and b (by seq) was published at
// revisions strictly between a.Rev and b.Rev; a missing run after the newest
// retained message ends at the head's revision, which is the revision of the
// latest publish. So a gap never claims revisions at which a retained
// message was published, and it can only be wider than the loss, not
// narrower.
func plan(topic string, s snapshot, afterSeq uint64, afterRev, lo, hi int64, reason GapReason) []Event {
	var out []Event
	if s.hasHead && s.head.seq < afterSeq {
		// The topic was deleted and published again: numbering restarted.
		afterSeq = 0
	}
	prevSeq, prevRev := afterSeq, afterRev
	addGap := func(fromSeq, toSeq uint64, fromRev, toRev int64) {
		if toSeq < fromSeq {
			return
		}
		f, t := max(fromRev, lo), min(toRev, hi)
		if f > t {
			return
		}
		g := &Gap{From: f, To: t, Reason: reason}
		if f == fromRev && t == toRev {
			g.Lost = toSeq - fromSeq + 1
		}
		out = append(out, Event{Gap: g})
	}
	for _, m := range s.msgs {
		if m.env.seq <= prevSeq {
			continue
		}
		addGap(prevSeq+1, m.env.seq-1, prevRev+1, m.rev-1)
		if m.rev >= lo && m.rev <= hi {
			out = append(out, Event{Message: toMessage(topic, m.rev, m.env)})
		}
		prevSeq, prevRev = m.env.seq, m.rev
	}
	if s.hasHead && s.head.seq > prevSeq {
		addGap(prevSeq+1, s.head.seq, prevRev+1, s.headRev)
	}
	for _, rev := range s.corrupt {
		if rev < lo || rev > hi || rev <= afterRev || covered(out, rev) {
			continue
		}
		out = append(out, Event{Gap: &Gap{From: rev, To: rev, Reason: GapCorrupt}})
	}
	slices.SortStableFunc(out, func(a, b Event) int { return cmp.Compare(a.rev(), b.rev()) })
	return out
}

func toMessage(topic string, rev int64, e envelope) *Message {
	return &Message{Topic: topic, Rev: rev, Seq: e.seq, Time: time.Unix(0, e.unixNs), Payload: e.payload}
}

// covered reports whether a gap in evs already covers rev.
func covered(evs []Event, rev int64) bool {
	for _, e := range evs {
		if e.Gap != nil && e.Gap.From <= rev && rev <= e.Gap.To {
			return true
		}
	}
	return false
}
