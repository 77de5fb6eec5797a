package queue

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"unicode/utf8"

	"github.com/concordkit/concord/internal/codec"
)

const recordVersion = 1

// taskMeta is the JSON head of a task record; the payload follows it after a
// newline, raw, so that it costs no encoding overhead.
type taskMeta struct {
	V      int    `json:"v"`
	Prio   int32  `json:"p"`
	Enq    int64  `json:"e"`
	Dedup  string `json:"d,omitempty"`
	MaxAtt int    `json:"m"`
	Ready  int64  `json:"r,omitempty"` // Unix ns the task was delayed to, if it was
	// How long a worker may hold the task, in ns (WithTimeout); 0: the
	// consumer's default.
	Timeout int64 `json:"to,omitempty"`
	// Trace is the producer's W3C trace context (traceparent, tracestate)
	// when Enqueue's context carried a span.
	Trace map[string]string `json:"tc,omitempty"`
	// Group is the task's group (WithGroup), if any.
	Group string `json:"g,omitempty"`
	// Bounded: the task was admitted under a bound (WithMaxSize) and
	// counts out when it leaves.
	Bounded bool `json:"b,omitempty"`
}

func encodeTask(m taskMeta, payload []byte) []byte {
	m.V = recordVersion
	head, _ := json.Marshal(m) // plain struct: cannot fail
	out := make([]byte, 0, len(head)+1+len(payload))
	out = append(out, head...)
	out = append(out, '\n')
	return append(out, payload...)
}

func decodeTask(b []byte) (taskMeta, []byte, error) {
	var m taskMeta
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return m, nil, fmt.Errorf("%w: task record has no header", ErrCorrupt)
	}
	if err := codec.Strict(b[:i], &m); err != nil {
		return m, nil, fmt.Errorf("%w: task header: %v", ErrCorrupt, err)
	}
	if m.V != recordVersion {
		return m, nil, fmt.Errorf("%w: task record version %d", ErrCorrupt, m.V)
	}
	if m.MaxAtt < 1 {
		return m, nil, fmt.Errorf("%w: task record max attempts %d", ErrCorrupt, m.MaxAtt)
	}
	if m.Timeout < 0 {
		return m, nil, fmt.Errorf("%w: task record timeout %d", ErrCorrupt, m.Timeout)
	}
	if len(m.Group) > MaxGroupLen || !utf8.ValidString(m.Group) {
		return m, nil, fmt.Errorf("%w: task record group of %d bytes", ErrCorrupt, len(m.Group))
	}
	if len(m.Trace) == 0 {
		m.Trace = nil // "tc":{} and no trace context are the same record
	}
	return m, b[i+1:], nil
}

// statusRecord is the value of s/<id>: where the task is and how its last
// attempt ended. It is first written when the task leaves its enqueued
// position (Nack, dead letters, a released claim): until then the task
// record says where it is, which keeps Enqueue to two keys. Running is not
// stored here: it is the existence of the claim key.
type statusRecord struct {
	V       int    `json:"v"`
	State   State  `json:"s"`
	Pos     string `json:"pos,omitempty"` // index key below the queue prefix, while queued or delayed
	Attempt int    `json:"a,omitempty"`   // attempts made so far
	Err     string `json:"err,omitempty"` // last error (Nack, Fail, lost claim)
	At      int64  `json:"at"`            // Unix ns of the change
	Prio    int32  `json:"p"`
	Dedup   string `json:"d,omitempty"`
	Token   int64  `json:"tok,omitempty"` // claim that made the change, if any
	Worker  string `json:"w,omitempty"`
	// Taken: the last attempt's claim was taken from a live worker (its
	// timeout passed), which may still be running it.
	Taken bool `json:"tk,omitempty"`
	// The last Progress, kept in the finished record (the progress key is
	// deleted with the task).
	Fraction float64 `json:"f,omitempty"`
	Message  string  `json:"m,omitempty"`
}

func encodeStatus(s statusRecord) []byte {
	s.V = recordVersion
	b, _ := json.Marshal(s)
	return b
}

func decodeStatus(b []byte) (statusRecord, error) {
	var s statusRecord
	if err := codec.Strict(b, &s); err != nil {
		return s, fmt.Errorf("%w: status: %v", ErrCorrupt, err)
	}
	if s.V != recordVersion {
		return s, fmt.Errorf("%w: status record version %d", ErrCorrupt, s.V)
	}
	switch s.State {
	case StateQueued, StateDelayed:
		if s.Pos == "" {
			return s, fmt.Errorf("%w: status %s without a position", ErrCorrupt, s.State)
		}
	case StateDone, StateDead, StateCanceled:
	default:
		return s, fmt.Errorf("%w: status state %q", ErrCorrupt, s.State)
	}
	if s.Attempt < 0 {
		return s, fmt.Errorf("%w: status attempt %d", ErrCorrupt, s.Attempt)
	}
	if s.Fraction < 0 || s.Fraction > 1 {
		return s, fmt.Errorf("%w: status fraction %v", ErrCorrupt, s.Fraction)
	}
	return s, nil
}

// progressRecord is the value of p/<id>: a JSON head, a newline, and the
// checkpoint bytes raw.
type progressRecord struct {
	V        int     `json:"v"`
	Fraction float64 `json:"f"`
	Message  string  `json:"m,omitempty"`
	Worker   string  `json:"w,omitempty"`
	Attempt  int     `json:"a"`
	Token    int64   `json:"t"`
	At       int64   `json:"at"`
}

func encodeProgress(p progressRecord, checkpoint []byte) []byte {
	p.V = recordVersion
	head, _ := json.Marshal(p)
	out := make([]byte, 0, len(head)+1+len(checkpoint))
	out = append(out, head...)
	out = append(out, '\n')
	return append(out, checkpoint...)
}

func decodeProgress(b []byte) (progressRecord, []byte, error) {
	var p progressRecord
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return p, nil, fmt.Errorf("%w: progress record has no header", ErrCorrupt)
	}
	if err := codec.Strict(b[:i], &p); err != nil {
		return p, nil, fmt.Errorf("%w: progress header: %v", ErrCorrupt, err)
	}
	if p.V != recordVersion {
		return p, nil, fmt.Errorf("%w: progress record version %d", ErrCorrupt, p.V)
	}
	if !(p.Fraction >= 0 && p.Fraction <= 1) {
		return p, nil, fmt.Errorf("%w: progress fraction %v", ErrCorrupt, p.Fraction)
	}
	var cp []byte
	if rest := b[i+1:]; len(rest) > 0 {
		cp = bytes.Clone(rest)
	}
	return p, cp, nil
}

// claimRecord is the value of i/c/<id>. Every consumer process receives it
// through its index watch, so it stays small.
type claimRecord struct {
	Worker string `json:"w"`
	Nonce  string `json:"n"`
	Lease  int64  `json:"l"`
	At     int64  `json:"at"`
}

func encodeClaim(c claimRecord) []byte {
	b, _ := json.Marshal(c)
	return b
}

func decodeClaim(b []byte) (claimRecord, error) {
	if c, ok := parseClaimExact(b); ok {
		return c, nil
	}
	var c claimRecord
	if err := codec.Strict(b, &c); err != nil {
		return c, fmt.Errorf("%w: claim: %v", ErrCorrupt, err)
	}
	if c.Worker == "" || c.Nonce == "" {
		return c, fmt.Errorf("%w: claim without worker or nonce", ErrCorrupt)
	}
	return c, nil
}

// parseClaimExact reads a claim in exactly the form encodeClaim writes it,
// strings without escapes, and reports false for anything else, which
// decodeClaim then decodes in full. Every consumer process decodes every
// claim of the queue from its watch, so this path avoids a reflective JSON
// decoder per event; what it accepts, codec.Strict accepts with the same
// result.
func parseClaimExact(b []byte) (claimRecord, bool) {
	var c claimRecord
	rest, ok := bytes.CutPrefix(b, []byte(`{"w":"`))
	if !ok {
		return c, false
	}
	if c.Worker, rest, ok = cutPlainString(rest); !ok {
		return c, false
	}
	if rest, ok = bytes.CutPrefix(rest, []byte(`,"n":"`)); !ok {
		return c, false
	}
	if c.Nonce, rest, ok = cutPlainString(rest); !ok {
		return c, false
	}
	if rest, ok = bytes.CutPrefix(rest, []byte(`,"l":`)); !ok {
		return c, false
	}
	if c.Lease, rest, ok = cutInt(rest); !ok {
		return c, false
	}
	if rest, ok = bytes.CutPrefix(rest, []byte(`,"at":`)); !ok {
		return c, false
	}
	if c.At, rest, ok = cutInt(rest); !ok {
		return c, false
	}
	if string(rest) != "}" || c.Worker == "" || c.Nonce == "" {
		return c, false
	}
	return c, true
}

// cutPlainString reads a JSON string body up to its closing quote; it
// reports false for an escape, a control character or invalid UTF-8, which
// only the full decoder handles.
func cutPlainString(b []byte) (string, []byte, bool) {
	for i, ch := range b {
		switch {
		case ch == '"':
			if !utf8.Valid(b[:i]) {
				return "", nil, false
			}
			return string(b[:i]), b[i+1:], true
		case ch == '\\' || ch < 0x20:
			return "", nil, false
		}
	}
	return "", nil, false
}

// cutInt reads a JSON integer that fits an int64.
func cutInt(b []byte) (int64, []byte, bool) {
	i := 0
	if i < len(b) && b[i] == '-' {
		i++
	}
	start := i
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	if i == start || (b[start] == '0' && i > start+1) {
		return 0, nil, false
	}
	n, err := strconv.ParseInt(string(b[:i]), 10, 64)
	if err != nil {
		return 0, nil, false
	}
	return n, b[i:], true
}

// deadRecord is the value of x/<id>.
type deadRecord struct {
	V       int    `json:"v"`
	Reason  string `json:"r"`
	Attempt int    `json:"a"`
	At      int64  `json:"at"`
	Prio    int32  `json:"p"`
	Token   int64  `json:"tok,omitempty"`
}

func encodeDead(d deadRecord) []byte {
	d.V = recordVersion
	b, _ := json.Marshal(d)
	return b
}

func decodeDead(b []byte) (deadRecord, error) {
	var d deadRecord
	if err := codec.Strict(b, &d); err != nil {
		return d, fmt.Errorf("%w: dead letter: %v", ErrCorrupt, err)
	}
	if d.V != recordVersion {
		return d, fmt.Errorf("%w: dead letter version %d", ErrCorrupt, d.V)
	}
	return d, nil
}
