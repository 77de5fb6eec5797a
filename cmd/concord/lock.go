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

// lockShow prints a lock's holder and its waiters in the order they will
// be granted.
func lockShow(ctx context.Context, s *session, args []string) error {
	name := args[0]
	cli, err := s.client(ctx)
	if err != nil {
		return err
	}
	info, err := lock.Inspect(ctx, cli, name)
	if err != nil {
		return err
	}
	if s.opts.json {
		j := struct {
			Lock     string          `json:"lock"`
			Holder   *lockEntryJSON  `json:"holder"`
			Waiters  []lockEntryJSON `json:"waiters"`
			Revision int64           `json:"revision"`
		}{Lock: name, Waiters: []lockEntryJSON{}, Revision: info.Revision}
		if info.Holder != nil {
			h := lockEntryOf(*info.Holder)
			j.Holder = &h
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
	rows := [][]string{row("holder", *info.Holder)}
	for i, w := range info.Waiters {
		rows = append(rows, row(fmt.Sprintf("waiter %d", i+1), w))
	}
	if _, err := fmt.Fprintf(s.stdout, "lock %s: held, %d waiting (revision %d)\n", name, len(info.Waiters), info.Revision); err != nil {
		return err
	}
	return s.table([]string{"ROLE", "VALUE", "TOKEN", "SINCE", "LEASE"}, rows)
}

// lockRelease forces a lock's release: the holder's key is deleted, the
// next waiter is granted, and the holder's context is canceled.
func lockRelease(ctx context.Context, s *session, args []string) error {
	name := args[0]
	cli, err := s.client(ctx)
	if err != nil {
		return err
	}
	token, err := lock.ForceRelease(ctx, cli, name)
	if errors.Is(err, lock.ErrNotHeld) {
		return fmt.Errorf("lock %s: nobody holds it", name)
	}
	if err != nil {
		return err
	}
	if s.opts.json {
		return s.printJSON(map[string]any{"lock": name, "released_token": token})
	}
	_, err = fmt.Fprintf(s.stdout, "lock %s: released the holder with token %d; the next waiter is granted\n", name, token)
	return err
}
