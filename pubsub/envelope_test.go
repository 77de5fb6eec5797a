package pubsub

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestEnvelopeRoundTrip(t *testing.T) {
	for _, e := range []envelope{
		{seq: 1, unixNs: 0, payload: nil},
		{seq: 1 << 62, unixNs: -5, payload: []byte("x")},
		{seq: maxSeq, unixNs: 1, payload: nil},
		{seq: 7, unixNs: time.Now().UnixNano(), payload: bytes.Repeat([]byte{0}, 1000)},
	} {
		got, err := decodeEnvelope(encodeEnvelope(e))
		require.NoError(t, err)
		assert.Equal(t, e.seq, got.seq)
		assert.Equal(t, e.unixNs, got.unixNs)
		assert.Equal(t, len(e.payload), len(got.payload))
	}
	for _, bad := range [][]byte{nil, {}, {0x02}, {0x01}, {0x01, 0x00, 0x00}, {0x01, 0x80}, {0x01, 0x01}, {0x01, 0x01, 0x80},
		encodeEnvelope(envelope{seq: maxSeq + 1}), encodeEnvelope(envelope{seq: 1<<64 - 1})} {
		_, err := decodeEnvelope(bad)
		assert.ErrorIs(t, err, ErrCorrupt, "%x", bad)
	}
}

func TestHeadRoundTrip(t *testing.T) {
	for _, h := range []head{
		{seq: 0, count: 1},
		{seq: 99, count: MaxRetainCount, maxAge: time.Hour},
		{seq: maxSeq - 1, count: 1},
	} {
		got, err := decodeHead(encodeHead(h))
		require.NoError(t, err)
		assert.Equal(t, h, got)
	}
	for _, bad := range [][]byte{nil, {0x01}, {0x02}, {0x02, 0x00}, {0x02, 0x00, 0x00, 0x00}, {0x02, 0x00, 0x01, 0x01}, append(encodeHead(head{count: 1}), 0),
		// The next publish would carry a sequence number past maxSeq.
		encodeHead(head{seq: maxSeq, count: 1}), encodeHead(head{seq: 1<<64 - 1, count: 1})} {
		_, err := decodeHead(bad)
		assert.ErrorIs(t, err, ErrCorrupt, "%x", bad)
	}
}

func FuzzDecodeEnvelope(f *testing.F) {
	f.Add(encodeEnvelope(envelope{seq: 1, unixNs: 1, payload: []byte("hello")}))
	f.Add([]byte{0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Add([]byte{})
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, v []byte) {
		e, err := decodeEnvelope(v)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error not ErrCorrupt: %v", err)
			}
			return
		}
		if e.seq == 0 || e.seq > maxSeq {
			t.Fatalf("accepted sequence number %d", e.seq)
		}
		if len(e.payload) > len(v) {
			t.Fatal("payload longer than the value")
		}
		// What decodes re-encodes to a value that decodes the same.
		again, err := decodeEnvelope(encodeEnvelope(e))
		if err != nil || again.seq != e.seq || again.unixNs != e.unixNs || !bytes.Equal(again.payload, e.payload) {
			t.Fatalf("round trip changed %+v to %+v (%v)", e, again, err)
		}
	})
}

func FuzzDecodeHead(f *testing.F) {
	f.Add(encodeHead(head{seq: 5, count: 10, maxAge: time.Second}))
	f.Add([]byte{0x02, 0x00, 0x00, 0x00})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, v []byte) {
		h, err := decodeHead(v)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error not ErrCorrupt: %v", err)
			}
			return
		}
		if h.count == 0 || h.count > MaxRetainCount || h.maxAge < 0 || h.seq >= maxSeq {
			t.Fatalf("accepted an invalid head %+v", h)
		}
		if got, err := decodeHead(encodeHead(h)); err != nil || got != h {
			t.Fatalf("round trip changed %+v to %+v (%v)", h, got, err)
		}
	})
}

// snap makes a snapshot's retained messages from (seq, rev) pairs.
func snap(headSeq uint64, headRev int64, pairs ...int64) snapshot {
	s := snapshot{rev: headRev + 10, head: head{seq: headSeq, count: 100}, hasHead: headSeq > 0, headRev: headRev}
	for i := 0; i < len(pairs); i += 2 {
		s.msgs = append(s.msgs, stored{rev: pairs[i+1], env: envelope{seq: uint64(pairs[i])}})
	}
	return s
}

func describe(evs []Event) []string {
	var out []string
	for _, e := range evs {
		if e.Gap != nil {
			out = append(out, e.Gap.String())
		} else {
			out = append(out, "msg "+time.Duration(e.Message.Rev).String())
		}
	}
	return out
}

func TestPlan(t *testing.T) {
	gap := func(f, to int64, lost uint64) Event {
		return Event{Gap: &Gap{From: f, To: to, Lost: lost, Reason: GapTrimmed}}
	}
	msg := func(rev int64) Event { return Event{Message: &Message{Rev: rev}} }
	for _, tc := range []struct {
		name             string
		s                snapshot
		afterSeq         uint64
		afterRev, lo, hi int64
		want             []Event
	}{
		{"all retained", snap(3, 30, 1, 10, 2, 20, 3, 30), 0, 0, 1, 40, []Event{msg(10), msg(20), msg(30)}},
		{"window", snap(3, 30, 1, 10, 2, 20, 3, 30), 0, 0, 15, 25, []Event{msg(20)}},
		{"leading loss, known start", snap(5, 50, 4, 40, 5, 50), 0, 5, 6, 60, []Event{gap(6, 39, 3), msg(40), msg(50)}},
		{"leading loss clipped: count unknown", snap(5, 50, 4, 40, 5, 50), 0, 0, 15, 60, []Event{gap(15, 39, 0), msg(40), msg(50)}},
		{"reader has the message before the loss", snap(5, 50, 4, 40, 5, 50), 1, 15, 16, 60, []Event{gap(16, 39, 2), msg(40), msg(50)}},
		{"reader is past the loss", snap(5, 50, 4, 40, 5, 50), 3, 35, 36, 60, []Event{msg(40), msg(50)}},
		{"window ends before the newest", snap(5, 50, 4, 40, 5, 50), 3, 35, 36, 45, []Event{msg(40)}},
		{"middle hole (age trim)", snap(3, 30, 1, 10, 3, 30), 0, 0, 1, 40, []Event{msg(10), gap(11, 29, 1), msg(30)}},
		{"trailing hole", snap(3, 30, 1, 10), 0, 0, 1, 40, []Event{msg(10), gap(11, 30, 2)}},
		{"nothing new", snap(3, 30, 1, 10, 2, 20, 3, 30), 3, 30, 31, 40, nil},
		{"restarted numbering", snap(2, 80, 1, 70, 2, 80), 9, 60, 61, 90, []Event{msg(70), msg(80)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := plan("t", tc.s, tc.afterSeq, tc.afterRev, tc.lo, tc.hi, GapTrimmed)
			assert.Equal(t, describe(tc.want), describe(got))
		})
	}
}
