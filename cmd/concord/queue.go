package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/concordkit/concord/queue"
)

func openQueue(ctx context.Context, s *session, name string) (*queue.Queue, error) {
	cli, err := s.client(ctx)
	if err != nil {
		return nil, err
	}
	// New does no I/O; inspection and admin calls start no goroutine. A bad
	// name is reported by the first call.
	return queue.New(cli, name), nil
}

func queueStats(ctx context.Context, s *session, args []string) error {
	q, err := openQueue(ctx, s, args[0])
	if err != nil {
		return err
	}
	defer q.Close()
	st, err := q.Stats(ctx)
	if err != nil {
		return err
	}
	if s.opts.json {
		return s.printJSON(map[string]any{
			"queue": q.Name(), "ready": st.Ready, "delayed": st.Delayed, "running": st.Running,
			"done": st.Done, "canceled": st.Canceled, "dead": st.Dead, "paused": st.Paused,
		})
	}
	state := "running"
	if st.Paused {
		state = "paused: no task is handed out until resumed"
	}
	return s.fields(
		[2]string{"queue", q.Name()},
		[2]string{"state", state},
		[2]string{"ready", strconv.Itoa(st.Ready)},
		[2]string{"delayed", strconv.Itoa(st.Delayed)},
		[2]string{"running", strconv.Itoa(st.Running)},
		[2]string{"done", strconv.Itoa(st.Done)},
		[2]string{"canceled", strconv.Itoa(st.Canceled)},
		[2]string{"dead", strconv.Itoa(st.Dead)},
	)
}

func queueList(ctx context.Context, s *session, args []string) error {
	q, err := openQueue(ctx, s, args[0])
	if err != nil {
		return err
	}
	defer q.Close()
	entries, err := q.List(ctx, s.opts.limit)
	if err != nil {
		return err
	}
	if s.opts.json {
		type entry struct {
			ID       string    `json:"id"`
			State    string    `json:"state"`
			Priority int       `json:"priority"`
			ReadyAt  time.Time `json:"ready_at"`
		}
		list := make([]entry, 0, len(entries))
		for _, e := range entries {
			list = append(list, entry{e.ID, string(e.State), e.Priority, e.ReadyAt})
		}
		return s.printJSON(map[string]any{"queue": q.Name(), "tasks": list})
	}
	if len(entries) == 0 {
		_, err := fmt.Fprintf(s.stdout, "queue %s: no unfinished task\n", q.Name())
		return err
	}
	rows := make([][]string, 0, len(entries))
	for _, e := range entries {
		rows = append(rows, []string{e.ID, string(e.State), strconv.Itoa(e.Priority), when(e.ReadyAt)})
	}
	return s.table([]string{"ID", "STATE", "PRIORITY", "READY AT"}, rows)
}

func queueStatus(ctx context.Context, s *session, args []string) error {
	q, err := openQueue(ctx, s, args[0])
	if err != nil {
		return err
	}
	defer q.Close()
	if s.opts.watch {
		return queueStatusWatch(ctx, s, q, args[1])
	}
	st, err := q.Status(ctx, args[1])
	if errors.Is(err, queue.ErrNotFound) {
		return fmt.Errorf("queue %s: task %q: not found (never enqueued, or finished longer ago than the retention)", q.Name(), args[1])
	}
	if err != nil {
		return err
	}
	if s.opts.json {
		return s.printJSON(statusJSON(q, st))
	}
	pairs := [][2]string{
		{"task", st.ID},
		{"state", string(st.State)},
		{"priority", strconv.Itoa(st.Priority)},
		{"attempt", strconv.Itoa(st.Attempt)},
	}
	if st.Group != "" {
		pairs = append(pairs, [2]string{"group", printable(st.Group, 200)})
	}
	if st.Worker != "" {
		pairs = append(pairs, [2]string{"worker", st.Worker})
	}
	if st.Token != 0 {
		pairs = append(pairs, [2]string{"token", strconv.FormatInt(st.Token, 10)})
	}
	if !st.ReadyAt.IsZero() && (st.State == queue.StateQueued || st.State == queue.StateDelayed) {
		pairs = append(pairs, [2]string{"ready at", when(st.ReadyAt)})
	}
	if showProgress(st) {
		progress := fmt.Sprintf("%s %3.0f%%", bar(st.Fraction, 20), st.Fraction*100)
		if st.Message != "" {
			progress += "  " + printable(st.Message, 200)
		}
		pairs = append(pairs, [2]string{"progress", progress})
	}
	if st.HasCheckpoint {
		pairs = append(pairs, [2]string{"checkpoint", "saved (the next attempt resumes from it)"})
	}
	if st.LastError != "" {
		pairs = append(pairs, [2]string{"last error", printable(st.LastError, 200)})
	}
	if !st.UpdatedAt.IsZero() {
		pairs = append(pairs, [2]string{"updated", when(st.UpdatedAt)})
	}
	return s.fields(pairs...)
}

func statusJSON(q *queue.Queue, st queue.Status) map[string]any {
	return map[string]any{
		"queue": q.Name(), "id": st.ID, "state": string(st.State), "priority": st.Priority,
		"attempt": st.Attempt, "worker": st.Worker, "token": st.Token, "ready_at": st.ReadyAt,
		"progress": st.Fraction, "message": st.Message, "has_checkpoint": st.HasCheckpoint,
		"last_error": st.LastError, "updated_at": st.UpdatedAt, "group": st.Group,
	}
}

// queueStatusWatch prints one line per change of a task's status until the
// task is done or dead, the context ends, or --count lines were printed.
// A reader that falls behind sees the latest status, not every one.
func queueStatusWatch(ctx context.Context, s *session, q *queue.Queue, id string) error {
	if s.opts.count < 0 {
		return usageError("--count must not be negative")
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	changes, err := q.WatchStatus(wctx, id)
	if errors.Is(err, queue.ErrNotFound) {
		return fmt.Errorf("queue %s: task %q: not found (never enqueued, or finished longer ago than the retention)", q.Name(), id)
	}
	if err != nil {
		return err
	}
	drain := func() {
		cancel()
		for range changes { // WatchStatus's goroutine ends once drained
		}
	}
	n := 0
	for st := range changes {
		if s.opts.json {
			err = s.printJSON(statusJSON(q, st))
		} else {
			line := fmt.Sprintf("%-8s attempt %d", st.State, st.Attempt)
			if showProgress(st) {
				line += fmt.Sprintf("  %s %3.0f%%", bar(st.Fraction, 20), st.Fraction*100)
			}
			if st.Worker != "" {
				line += "  " + printable(st.Worker, 40)
			}
			if st.Message != "" {
				line += "  " + printable(st.Message, 120)
			}
			if st.LastError != "" {
				line += "  (last error: " + printable(st.LastError, 120) + ")"
			}
			_, err = fmt.Fprintln(s.stdout, line)
		}
		if err != nil {
			drain()
			return err
		}
		n++
		if st.State == queue.StateDone || st.State == queue.StateDead || st.State == queue.StateCanceled || (s.opts.count > 0 && n >= s.opts.count) {
			drain()
			return nil
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("queue %s: task %q: watch ended", q.Name(), id)
}

func queueDead(ctx context.Context, s *session, args []string) error {
	q, err := openQueue(ctx, s, args[0])
	if err != nil {
		return err
	}
	defer q.Close()
	dead, err := q.DeadLetters(ctx, s.opts.limit)
	if err != nil {
		return err
	}
	if s.opts.json {
		type letter struct {
			ID       string    `json:"id"`
			Reason   string    `json:"reason"`
			Attempts int       `json:"attempts"`
			Priority int       `json:"priority"`
			At       time.Time `json:"at"`
		}
		list := make([]letter, 0, len(dead))
		for _, d := range dead {
			list = append(list, letter{d.ID, d.Reason, d.Attempt, d.Priority, d.At})
		}
		return s.printJSON(map[string]any{"queue": q.Name(), "dead": list})
	}
	if len(dead) == 0 {
		_, err := fmt.Fprintf(s.stdout, "queue %s: no dead letters\n", q.Name())
		return err
	}
	rows := make([][]string, 0, len(dead))
	for _, d := range dead {
		rows = append(rows, []string{d.ID, strconv.Itoa(d.Attempt), when(d.At), printable(d.Reason, 120)})
	}
	return s.table([]string{"ID", "ATTEMPTS", "DIED", "REASON"}, rows)
}

// deadIDs returns the given task IDs, or every dead letter's (up to the
// limit) when none is given.
func deadIDs(ctx context.Context, s *session, q *queue.Queue, ids []string) ([]string, error) {
	if len(ids) > 0 {
		return ids, nil
	}
	dead, err := q.DeadLetters(ctx, s.opts.limit)
	if err != nil {
		return nil, err
	}
	for _, d := range dead {
		ids = append(ids, d.ID)
	}
	return ids, nil
}

func queueRequeue(ctx context.Context, s *session, args []string) error {
	return queueAdmin(ctx, s, args, "requeued", (*queue.Queue).Requeue)
}

// queueCancel cancels the tasks named in args[1:] (queued, delayed or
// running); it goes on past a task that fails and returns an error naming
// each failure.
func queueCancel(ctx context.Context, s *session, args []string) error {
	q, err := openQueue(ctx, s, args[0])
	if err != nil {
		return err
	}
	defer q.Close()
	return reportEach(s, q.Name(), "canceled", "task(s)", args[1:], func(id string) error { return q.Cancel(ctx, id) }, ctx)
}

// queueResult prints the result an acked task stored (AckResult): its raw
// bytes, or with --json as a string (base64 when it is not UTF-8).
func queueResult(ctx context.Context, s *session, args []string) error {
	q, err := openQueue(ctx, s, args[0])
	if err != nil {
		return err
	}
	defer q.Close()
	res, err := q.Result(ctx, args[1])
	if err != nil {
		return err
	}
	if s.opts.json {
		out := map[string]any{"queue": q.Name(), "id": args[1]}
		if utf8.Valid(res) {
			out["result"] = string(res)
		} else {
			out["result_base64"] = res
		}
		return s.printJSON(out)
	}
	_, err = s.stdout.Write(res)
	return err
}

// queuePause pauses a queue, or with resume resumes it.
func queuePause(resume bool) func(ctx context.Context, s *session, args []string) error {
	return func(ctx context.Context, s *session, args []string) error {
		q, err := openQueue(ctx, s, args[0])
		if err != nil {
			return err
		}
		defer q.Close()
		do, what := q.Pause, "paused: workers get no task until it is resumed; enqueues go on"
		if resume {
			do, what = q.Resume, "resumed: workers take tasks again"
		}
		if err := do(ctx); err != nil {
			return err
		}
		if s.opts.json {
			return s.printJSON(map[string]any{"queue": q.Name(), "paused": !resume})
		}
		_, err = fmt.Fprintf(s.stdout, "queue %s %s\n", q.Name(), what)
		return err
	}
}

func queuePurge(ctx context.Context, s *session, args []string) error {
	return queueAdmin(ctx, s, args, "purged", (*queue.Queue).Purge)
}

// queueAdmin applies do to each dead letter named in args[1:], or to all of
// them, and reports what it did.
func queueAdmin(ctx context.Context, s *session, args []string, did string, do func(*queue.Queue, context.Context, string) error) error {
	q, err := openQueue(ctx, s, args[0])
	if err != nil {
		return err
	}
	defer q.Close()
	ids, err := deadIDs(ctx, s, q, args[1:])
	if err != nil {
		return err
	}
	return reportEach(s, q.Name(), did, "dead letter(s)", ids, func(id string) error { return do(q, ctx, id) }, ctx)
}

// reportEach applies do to each of ids and reports which it did; it goes on
// past a task that fails, until ctx ends, and returns an error naming each
// failure.
func reportEach(s *session, queueName, did, what string, ids []string, do func(id string) error, ctx context.Context) error {
	var done []string
	var failed []error
	for _, id := range ids {
		if err := do(id); err != nil {
			failed = append(failed, fmt.Errorf("task %q: %w", id, err))
			if ctx.Err() != nil {
				break
			}
			continue
		}
		done = append(done, id)
	}
	if s.opts.json {
		if done == nil {
			done = []string{}
		}
		if err := s.printJSON(map[string]any{"queue": queueName, did: done}); err != nil {
			return err
		}
	} else {
		line := fmt.Sprintf("queue %s: %s %d %s", queueName, did, len(done), what)
		if len(done) > 0 {
			line += ": " + strings.Join(done, " ")
		}
		if _, err := fmt.Fprintln(s.stdout, line); err != nil {
			return err
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("queue %s: %w", queueName, errors.Join(failed...))
	}
	return nil
}

// showProgress reports whether a task's progress says anything.
func showProgress(st queue.Status) bool {
	return st.Fraction > 0 || st.Message != "" || st.State == queue.StateRunning || st.State == queue.StateQueued
}

// when formats a time for a table: UTC to the millisecond, and how long ago
// or from now.
func when(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Until(t).Round(time.Second)
	rel := "now"
	switch {
	case d > 0:
		rel = "in " + d.String()
	case d < 0:
		rel = (-d).String() + " ago"
	}
	return t.UTC().Format("2006-01-02T15:04:05.000Z") + " (" + rel + ")"
}

// bar draws a fraction in [0, 1] as a bar of width cells.
func bar(f float64, width int) string {
	f = max(0, min(1, f))
	n := int(f*float64(width) + 0.5)
	return "[" + strings.Repeat("#", n) + strings.Repeat(".", width-n) + "]"
}
