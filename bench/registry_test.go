package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/concordkit/concord/testcluster"
)

func testEnv(t *testing.T) *Env {
	t.Helper()
	env := &Env{
		Cluster:      testcluster.New(t),
		Rounds:       3,
		RoundTimeout: time.Minute,
		Retries:      2,
		log:          newProgress(io.Discard),
	}
	raft, err := newRaftWatch(env)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(raft.close)
	env.raft = raft
	return env
}

func TestRounds(t *testing.T) {
	env := testEnv(t)
	errBroken := errors.New("broken")
	for _, tc := range []struct {
		name    string
		timeout time.Duration
		fail    func(ctx context.Context, r Round) error // a round's outcome
		want    []Round                                  // attempts made
		wantErr error
		retried int
	}{{
		name: "one transient error: the round runs again",
		fail: func(_ context.Context, r Round) error {
			if r.N == 1 && r.Attempt == 0 {
				return fmt.Errorf("etcd side: %w", rpctypes.ErrTimeout)
			}
			return nil
		},
		want:    []Round{{0, 0}, {1, 0}, {1, 1}, {2, 0}},
		retried: 1,
	}, {
		name: "an error that is not transient ends the run",
		fail: func(_ context.Context, r Round) error {
			if r.N == 1 {
				return errBroken
			}
			return nil
		},
		want:    []Round{{0, 0}, {1, 0}},
		wantErr: errBroken,
	}, {
		name: "retries are bounded",
		fail: func(context.Context, Round) error {
			return rpctypes.ErrNoLeader
		},
		want:    []Round{{0, 0}, {0, 1}, {0, 2}},
		wantErr: rpctypes.ErrNoLeader,
		retried: 2,
	}, {
		name:    "a round out of time runs again",
		timeout: 100 * time.Millisecond,
		fail: func(ctx context.Context, r Round) error {
			if r.N == 0 && r.Attempt == 0 {
				<-ctx.Done() // a request that is never answered
				return ctx.Err()
			}
			return nil
		},
		want:    []Round{{0, 0}, {0, 1}, {1, 0}, {2, 0}},
		retried: 1,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			env.RoundTimeout = time.Minute
			if tc.timeout > 0 {
				env.RoundTimeout = tc.timeout
			}
			var got []Round
			err := Rounds(context.Background(), env, "test", func(ctx context.Context, r Round) error {
				got = append(got, r)
				return tc.fail(ctx, r)
			})
			if !errors.Is(err, tc.wantErr) || (err == nil) != (tc.wantErr == nil) {
				t.Errorf("Rounds = %v, want %v", err, tc.wantErr)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("attempts %v, want %v", got, tc.want)
			}
			if n := env.takeRetried(); n != tc.retried {
				t.Errorf("%d rounds counted as retried, want %d", n, tc.retried)
			}
		})
	}
}

func TestRoundID(t *testing.T) {
	if a, b := (Round{N: 1}).ID(), (Round{N: 1, Attempt: 1}).ID(); a == b {
		t.Errorf("a round and its retry share the ID %q", a)
	}
}
