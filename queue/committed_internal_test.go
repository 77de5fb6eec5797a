package queue

import (
	"testing"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// elseReads builds the answer of a failed finishing transaction: its three
// Else reads (finished record, status, dead letter), nil for a missing key.
func elseReads(finished, status, dead []byte) *clientv3.TxnResponse {
	rng := func(b []byte) *etcdserverpb.ResponseOp {
		r := &etcdserverpb.RangeResponse{}
		if b != nil {
			r.Kvs = []*mvccpb.KeyValue{{Value: b}}
		}
		return &etcdserverpb.ResponseOp{Response: &etcdserverpb.ResponseOp_ResponseRange{ResponseRange: r}}
	}
	return &clientv3.TxnResponse{Responses: []*etcdserverpb.ResponseOp{rng(finished), rng(status), rng(dead)}}
}

// A retried finishing call whose first try committed (its answer lost)
// recognises its own outcome by the token, for each kind; another worker's
// records, or another outcome, do not count.
func TestCommittedEarlier(t *testing.T) {
	const mine, theirs = 7, 9
	status := func(s State, tok int64) []byte { return encodeStatus(statusRecord{State: s, Pos: "r/x", Token: tok}) }
	dead := func(tok int64) []byte { return encodeDead(deadRecord{Reason: "r", Token: tok}) }
	for _, tc := range []struct {
		name    string
		kind    outcome
		attempt int // of maxAttempts = 3
		resp    *clientv3.TxnResponse
		want    bool
	}{
		{"ack done", acked, 1, elseReads(status(StateDone, mine), nil, nil), true},
		{"ack by another", acked, 1, elseReads(status(StateDone, theirs), nil, nil), false},
		{"nack requeued", nacked, 1, elseReads(nil, status(StateDelayed, mine), nil), true},
		{"nack requeued by another", nacked, 1, elseReads(nil, status(StateQueued, theirs), nil), false},
		{"nack on the last attempt dead-lettered", nacked, 3, elseReads(nil, status(StateDead, mine), dead(mine)), true},
		{"nack on the last attempt, another's dead letter", nacked, 3, elseReads(nil, status(StateDead, theirs), dead(theirs)), false},
		{"nack before the last attempt, dead letter", nacked, 1, elseReads(nil, status(StateDead, mine), dead(mine)), false},
		{"fail", failed, 1, elseReads(nil, status(StateDead, mine), dead(mine)), true},
		{"fail by another", failed, 1, elseReads(nil, nil, dead(theirs)), false},
		{"nothing", nacked, 3, elseReads(nil, nil, nil), false},
	} {
		if got := committedEarlier(tc.kind, tc.attempt, 3, mine, tc.resp); got != tc.want {
			t.Errorf("%s: committedEarlier = %v, want %v", tc.name, got, tc.want)
		}
	}
}
