package election

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/names"
	"github.com/concordkit/concord/internal/retry"
)

// handoverKind names the prefix of the markers Handover leaves for the
// candidates it passes over: N/.handover/<candidate id>. It lies outside
// N/.election/, so readers of the candidates never meet a marker.
const handoverKind = "handover"

// errPassedOver reports that a Handover deleted this candidate's key to let
// a newer candidate lead: the candidate enqueues again, at the back.
var errPassedOver = errors.New("passed over by a handover")

// maxPassedOver bounds the candidates one Handover passes over: its
// transaction writes two operations for each, and etcd refuses a
// transaction of more than --max-txn-ops (default 128) operations. Past
// it, Handover resigns.
const maxPassedOver = 60

// handoverTries bounds how often Handover reads the candidates again when
// they changed before its transaction; it then resigns.
const handoverTries = 3

// Newest chooses, for Handover, the candidate that campaigned last: in a
// rolling deploy, the replica started most recently, which runs the newest
// build, so leadership moves once rather than at each replica's restart.
func Newest(waiting []Leader) string {
	if len(waiting) == 0 {
		return ""
	}
	return waiting[len(waiting)-1].Key
}

// Handover ends the term and makes the candidate that choose picks the
// leader at once, without waiting for a lease, even if it is not next in
// line. choose gets the candidates waiting, in the order they would lead,
// and returns the key of one of them ("" or any other key: plain Resign).
//
// Cost: one read of the candidates, then one transaction guarded by the
// term, by the chosen candidate's key and by the keys of the candidates
// ahead of it. It deletes the term's key and the keys ahead of the chosen
// one and leaves each of those candidates a marker under N/.handover/, on
// the candidate's own lease: their Campaign sees the marker and enqueues
// again, at the back, instead of failing with ErrLost. The chosen
// candidate is elected by that one revision (its Campaign then confirms
// with one linearizable read). If the candidates changed between the read
// and the transaction, Handover reads again, up to three times, and then
// resigns; it also resigns rather than pass over more than 60 candidates
// (etcd's default --max-txn-ops is 128). Passed-over candidates campaign
// again, with a new token.
//
// After Handover, as after Resign, the term's context ends with
// ErrResigned. Errors and the lost case are Resign's.
func (t *Term) Handover(ctx context.Context, choose func(waiting []Leader) string) error {
	if choose == nil {
		return errors.New("election: handover: nil choose")
	}
	if !t.beginResign() {
		return nil
	}
	for range handoverTries {
		if t.Err() != nil {
			break // lost meanwhile: Resign tidies up
		}
		waiting, err := t.waiting(ctx)
		if err != nil {
			break
		}
		at := -1
		if key := choose(waiting); key != "" {
			for i, w := range waiting {
				if w.Key == key {
					at = i
				}
			}
		}
		if at <= 0 || at > maxPassedOver {
			break // nobody, or the next in line (a resignation elects it), or too far behind
		}
		cmps := make([]clientv3.Cmp, 0, at+1)
		ops := make([]clientv3.Op, 0, 2*at)
		for i, w := range waiting[:at+1] {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(w.Key), "=", w.Token))
			if i < at {
				ops = append(ops,
					clientv3.OpDelete(w.Key),
					clientv3.OpPut(t.e.markerKey(w.Key), strconv.FormatInt(w.Token, 10), clientv3.WithLease(w.Lease)))
			}
		}
		ok, lost, err := t.Core.ReleaseIf(ctx, cmps, ops)
		if err != nil {
			t.resignFailed()
			return fmt.Errorf("election: handover %q: %w", t.e.name, err)
		}
		if ok || lost {
			t.resignedNow(lost)
			return nil
		}
	}
	return t.Resign(ctx)
}

// waiting reads the candidates behind the term's own key, detached from
// ctx's cancellation like Resign (a graceful stop calls it with a context
// that ended), tried again within the TTL.
func (t *Term) waiting(ctx context.Context) ([]Leader, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), t.e.k.TTL())
	defer cancel()
	var cands []Leader
	err := retry.Attempts(ctx, retry.RequestPolicy, retry.Attempt(t.e.k.TTL()), func(ctx context.Context) (err error) {
		cands, err = Candidates(ctx, t.e.cli, t.e.name)
		return err
	})
	if err != nil {
		return nil, err
	}
	for i, c := range cands {
		if c.Key == t.Key() {
			return cands[i+1:], nil
		}
	}
	return nil, fmt.Errorf("election: handover %q: own key not among the candidates", t.e.name)
}

// markerKey is the handover marker for the candidate whose key is key.
func (e *Election) markerKey(key string) string {
	return names.Prefix(e.name, handoverKind) + strings.TrimPrefix(key, e.prefix)
}

// passedOver reports whether this candidate's key, created at rev, was
// deleted by a Handover: its marker names that incarnation. The marker is
// deleted once read. Any failure to read it reads as "no": the campaign
// then fails with ErrLost as for any other deletion.
func (e *Election) passedOver(ctx context.Context, rev int64) bool {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), retry.Attempt(e.k.TTL()))
	defer cancel()
	mk := e.markerKey(e.key)
	resp, err := e.cli.Get(ctx, mk)
	if err != nil || len(resp.Kvs) == 0 || string(resp.Kvs[0].Value) != strconv.FormatInt(rev, 10) {
		return false
	}
	// Guarded by its revision: a later Handover's marker stays.
	_, _ = e.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(mk), "=", resp.Kvs[0].ModRevision)).
		Then(clientv3.OpDelete(mk)).Commit()
	return true
}
