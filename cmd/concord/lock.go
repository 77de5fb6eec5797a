package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/concordkit/concord/lock"
)

type lockEntryJSON struct {
	Value  string    `json:"value"`
	Token  int64     `json:"token"`
	Since  time.Time `json:"since"`
	Key    string    `json:"key"`
	Lease  string    `json:"lease"`
	Reader bool      `json:"reader,omitempty"`
}

func lockEntryOf(e lock.Entry) lockEntryJSON {
	return lockEntryJSON{e.Value, e.Token, e.Since, e.Key, fmt.Sprintf("%x", int64(e.Lease)), e.Reader}
}

// lockShow prints a lock's holders and its waiters in the order they will
// be granted.
func lockShow(ctx context.Context, s *session, args []string) error {
	name := args[0]
	cli, err := s.client(ctx)
	if err != nil {
		return err
	}
	inspect := lock.Inspect
	if s.opts.rw {
		inspect = lock.InspectRWMutex
	}
	info, err := inspect(ctx, cli, name)
	if err != nil {
		return err
	}
	if s.opts.json {
		j := struct {
			Lock     string          `json:"lock"`
			Holder   *lockEntryJSON  `json:"holder"`
			Holders  []lockEntryJSON `json:"holders"`
			Waiters  []lockEntryJSON `json:"waiters"`
			Revision int64           `json:"revision"`
		}{Lock: name, Holders: []lockEntryJSON{}, Waiters: []lockEntryJSON{}, Revision: info.Revision}
		if info.Holder != nil {
			h := lockEntryOf(*info.Holder)
			j.Holder = &h
		}
		for _, h := range info.Holders {
			j.Holders = append(j.Holders, lockEntryOf(h))
		}
		for _, w := range info.Waiters {
			j.Waiters = append(j.Waiters, lockEntryOf(w))
		}
		return s.printJSON(j)
	}
	if info.Holder == nil {
		_, err := fmt.Fprintf(s.stdout, "lock %s: free (revision %d)\n", name, info.Revision)
		return err
	}
	row := func(role string, e lock.Entry) []string {
		v := e.Value
		if v == "" {
			v = "-"
		}
		if e.Reader {
			role += " (reader)"
		}
		return []string{role, printable(v, 60), strconv.FormatInt(e.Token, 10), when(e.Since), fmt.Sprintf("%x", int64(e.Lease))}
	}
	var rows [][]string
	for _, h := range info.Holders {
		rows = append(rows, row("holder", h))
	}
	for i, w := range info.Waiters {
		rows = append(rows, row(fmt.Sprintf("waiter %d", i+1), w))
	}
	held := "held"
	if len(info.Holders) > 1 {
		held = fmt.Sprintf("held by %d readers", len(info.Holders))
	}
	if _, err := fmt.Fprintf(s.stdout, "lock %s: %s, %d waiting (revision %d)\n", name, held, len(info.Waiters), info.Revision); err != nil {
		return err
	}
	return s.table([]string{"ROLE", "VALUE", "TOKEN", "SINCE", "LEASE"}, rows)
}

// lockRelease forces a lock's release: the holders' keys are deleted, the
// next waiters are granted, and the holders' contexts are canceled.
func lockRelease(ctx context.Context, s *session, args []string) error {
	name := args[0]
	cli, err := s.client(ctx)
	if err != nil {
		return err
	}
	var tokens []int64
	if s.opts.rw {
		tokens, err = lock.ForceReleaseRWMutex(ctx, cli, name)
	} else {
		var token int64
		if token, err = lock.ForceRelease(ctx, cli, name); err == nil {
			tokens = []int64{token}
		}
	}
	if errors.Is(err, lock.ErrNotHeld) {
		return fmt.Errorf("lock %s: nobody holds it", name)
	}
	if err != nil {
		if len(tokens) > 0 {
			return fmt.Errorf("lock %s: released the holders with tokens %v, then: %w", name, tokens, err)
		}
		return err
	}
	if s.opts.json {
		if !s.opts.rw {
			return s.printJSON(map[string]any{"lock": name, "released_token": tokens[0]})
		}
		return s.printJSON(map[string]any{"lock": name, "released_tokens": tokens})
	}
	if len(tokens) == 1 {
		_, err = fmt.Fprintf(s.stdout, "lock %s: released the holder with token %d; the next waiter is granted\n", name, tokens[0])
		return err
	}
	_, err = fmt.Fprintf(s.stdout, "lock %s: released %d holders with tokens %v; the next waiter is granted\n", name, len(tokens), tokens)
	return err
}
