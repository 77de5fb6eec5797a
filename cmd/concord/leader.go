package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/concordkit/concord/election"
)

type leaderJSON struct {
	Election string `json:"election"`
	Leader   bool   `json:"leader"`
	Value    string `json:"value,omitempty"`
	Token    int64  `json:"token,omitempty"`
	Key      string `json:"key,omitempty"`
	Lease    string `json:"lease,omitempty"`
	Revision int64  `json:"revision"`
}

func leaderJSONOf(name string, l election.Leader) leaderJSON {
	j := leaderJSON{Election: name, Leader: l.Exists(), Revision: l.Rev}
	if l.Exists() {
		j.Value, j.Token, j.Key, j.Lease = l.Value, l.Token, l.Key, fmt.Sprintf("%x", int64(l.Lease))
	}
	return j
}

// leaderShow prints an election's leader; with --watch, the current state
// and then every change (--count: that many lines in all) until interrupted.
func leaderShow(ctx context.Context, s *session, args []string) error {
	name := args[0]
	cli, err := s.client(ctx)
	if err != nil {
		return err
	}

	if !s.opts.watch {
		l, err := election.LeaderOf(ctx, cli, name)
		if err != nil && !errors.Is(err, election.ErrNoLeader) {
			return err
		}
		if s.opts.json {
			return s.printJSON(leaderJSONOf(name, l))
		}
		if !l.Exists() {
			_, err := fmt.Fprintf(s.stdout, "election %s: no leader\n", name)
			return err
		}
		return s.fields(
			[2]string{"election", name},
			[2]string{"leader", printable(l.Value, 200)},
			[2]string{"token", strconv.FormatInt(l.Token, 10)},
			[2]string{"key", printable(l.Key, 0)},
			[2]string{"lease", fmt.Sprintf("%x", int64(l.Lease))},
		)
	}

	if s.opts.count < 0 {
		return usageError("--count must not be negative")
	}
	octx, cancel := context.WithCancel(ctx)
	defer cancel()
	changes, why := election.ObserveOf(octx, cli, name)
	n := 0
	for l := range changes {
		if s.opts.json {
			err = s.printJSON(leaderJSONOf(name, l))
		} else if l.Exists() {
			_, err = fmt.Fprintf(s.stdout, "%-8d leader %s (token %d)\n", l.Rev, printable(l.Value, 200), l.Token)
		} else {
			_, err = fmt.Fprintf(s.stdout, "%-8d no leader\n", l.Rev)
		}
		if err != nil {
			return err
		}
		if n++; s.opts.count > 0 && n >= s.opts.count {
			cancel()
			for range changes { // Observe's goroutine ends once drained
			}
			return nil
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("election %s: observing ended: %w", name, why())
}
