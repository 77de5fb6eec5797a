package main

import (
	"context"
	"fmt"
	"strconv"
	"unicode"
	"unicode/utf8"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/watch"
)

// watchEvent is the JSON form of one change.
type watchEvent struct {
	Type           string `json:"type"`
	Key            string `json:"key"`
	Value          string `json:"value,omitempty"`
	Revision       int64  `json:"revision"`
	CreateRevision int64  `json:"create_revision,omitempty"`
	Version        int64  `json:"version,omitempty"`
	Lease          int64  `json:"lease,omitempty"`
}

// watchPrefix prints every change under a prefix until the context ends or
// --count changes were printed. It starts at --rev, or just after the
// revision of a read it makes first, so that nothing written after it says
// "watching" is missed.
func watchPrefix(ctx context.Context, s *session, args []string) error {
	prefix := args[0]
	if s.opts.count < 0 {
		return usageError("--count must not be negative")
	}
	cli, err := s.client(ctx)
	if err != nil {
		return err
	}
	start := s.opts.rev
	if start == 0 {
		resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return fmt.Errorf("read %q: %w", prefix, err)
		}
		start = resp.Header.Revision + 1
	}
	fmt.Fprintf(s.stderr, "watching prefix %q from revision %d\n", prefix, start)

	// internal/watch resumes the watch after every failure a new watch can
	// get past (a member cut off from its cluster, the auth-token race on
	// a new stream) from the revision after the last event printed, so the
	// command neither goes silent nor skips nor repeats an event. It ends
	// only when etcd refuses the watch or has compacted the history it
	// would resume from.
	w := watch.Open(ctx, cli, prefix, watch.Config{From: start, Options: []clientv3.OpOption{clientv3.WithPrefix()}})
	defer w.Stop()
	n := 0
	for {
		resp, err := w.Next(ctx)
		if err != nil {
			switch {
			case ctx.Err() != nil:
				return nil // interrupted: the normal end of a watch
			case w.CompactRevision() > 0:
				return fmt.Errorf("watch %q: revision %d was compacted (oldest kept: %d): %w", prefix, w.Rev()+1, w.CompactRevision(), err)
			}
			return fmt.Errorf("watch %q: %w", prefix, err)
		}
		for _, ev := range resp.Events {
			if err := s.printEvent(ev); err != nil {
				return err
			}
			n++
			if s.opts.count > 0 && n >= s.opts.count {
				return nil
			}
		}
	}
}

func (s *session) printEvent(ev *clientv3.Event) error {
	typ := "PUT"
	if ev.Type == clientv3.EventTypeDelete {
		typ = "DELETE"
	}
	kv := ev.Kv
	if s.opts.json {
		e := watchEvent{Type: typ, Key: string(kv.Key), Revision: kv.ModRevision}
		if typ == "PUT" {
			e.Value, e.CreateRevision, e.Version, e.Lease = string(kv.Value), kv.CreateRevision, kv.Version, kv.Lease
		}
		return s.printJSON(e)
	}
	line := fmt.Sprintf("%-8d %-6s %s", kv.ModRevision, typ, printable(string(kv.Key), 0))
	if typ == "PUT" {
		line += " = " + printable(string(kv.Value), 200)
		if kv.Lease != 0 {
			line += fmt.Sprintf("  (lease %x)", kv.Lease)
		}
	}
	_, err := fmt.Fprintln(s.stdout, line)
	return err
}

// printable returns s as it is when it is plain text, quoted otherwise, and
// cut to max bytes (0: no limit) with the full length noted.
func printable(s string, max int) string {
	cut := ""
	if max > 0 && len(s) > max {
		cut = fmt.Sprintf("… (%d bytes)", len(s))
		s = s[:max]
		for !utf8.ValidString(s) && len(s) > 0 && len(s) > max-utf8.UTFMax {
			s = s[:len(s)-1]
		}
	}
	plain := utf8.ValidString(s) && s != ""
	for _, r := range s {
		if !unicode.IsPrint(r) {
			plain = false
			break
		}
	}
	if !plain {
		s = strconv.Quote(s)
	}
	return s + cut
}
