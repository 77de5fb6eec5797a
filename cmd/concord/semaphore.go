package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/concordkit/concord/semaphore"
)

type semEntryJSON struct {
	Value   string    `json:"value"`
	Permits int       `json:"permits"`
	Token   int64     `json:"token"`
	Since   time.Time `json:"since"`
	Key     string    `json:"key"`
	Lease   string    `json:"lease"`
}

func semEntries(es []semaphore.Entry) []semEntryJSON {
	out := make([]semEntryJSON, 0, len(es))
	for _, e := range es {
		out = append(out, semEntryJSON{e.Value, e.N, e.Token, e.Since, e.Key, fmt.Sprintf("%x", int64(e.Lease))})
	}
	return out
}

// semaphoreShow prints a semaphore's limit, the permits held and the
// requests waiting, in the order they will be granted.
func semaphoreShow(ctx context.Context, s *session, args []string) error {
	name := args[0]
	cli, err := s.client(ctx)
	if err != nil {
		return err
	}
	info, err := semaphore.Inspect(ctx, cli, name)
	if err != nil {
		return err
	}
	if s.opts.json {
		return s.printJSON(map[string]any{
			"semaphore": name, "limit": info.Limit, "in_use": info.InUse,
			"holders": semEntries(info.Holders), "waiters": semEntries(info.Waiters), "revision": info.Revision,
		})
	}
	limit := strconv.Itoa(info.Limit)
	if info.Limit == 0 {
		limit = "none stored"
	}
	if _, err := fmt.Fprintf(s.stdout, "semaphore %s: %d of %s permits in use, %d holder(s), %d waiting (revision %d)\n",
		name, info.InUse, limit, len(info.Holders), len(info.Waiters), info.Revision); err != nil {
		return err
	}
	if len(info.Holders)+len(info.Waiters) == 0 {
		return nil
	}
	row := func(role string, e semaphore.Entry) []string {
		v := e.Value
		if v == "" {
			v = "-"
		}
		return []string{role, printable(v, 60), strconv.Itoa(e.N), strconv.FormatInt(e.Token, 10), when(e.Since), fmt.Sprintf("%x", int64(e.Lease))}
	}
	var rows [][]string
	for _, h := range info.Holders {
		rows = append(rows, row("holder", h))
	}
	for i, w := range info.Waiters {
		rows = append(rows, row(fmt.Sprintf("waiter %d", i+1), w))
	}
	return s.table([]string{"ROLE", "VALUE", "PERMITS", "TOKEN", "SINCE", "LEASE"}, rows)
}
