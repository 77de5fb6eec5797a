package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/cron"
	"github.com/concordkit/concord/election"
)

// cronStatus prints which replica leads a scheduler and each job's last
// and next run.
func cronStatus(ctx context.Context, s *session, args []string) error {
	name := args[0]
	cli, err := s.client(ctx)
	if err != nil {
		return err
	}
	jobs, err := cron.Status(ctx, cli, name)
	if err != nil {
		return err
	}
	// The scheduler campaigns in the election named like it.
	l, err := election.LeaderOf(ctx, cli, name)
	if err != nil && !errors.Is(err, election.ErrNoLeader) {
		return err
	}
	if s.opts.json {
		if jobs == nil {
			jobs = []cron.JobStatus{}
		}
		return s.printJSON(map[string]any{"scheduler": name, "leader": leaderJSONOf(name, l), "jobs": jobs})
	}
	lead := "none"
	if l.Exists() {
		lead = fmt.Sprintf("%s (token %d)", printable(l.Value, 80), l.Token)
	}
	if _, err := fmt.Fprintf(s.stdout, "scheduler %s: leader %s\n", name, lead); err != nil {
		return err
	}
	if len(jobs) == 0 {
		_, err := fmt.Fprintln(s.stdout, "no job has run or been scheduled yet")
		return err
	}
	rows := make([][]string, 0, len(jobs))
	for _, j := range jobs {
		state := "active"
		if j.Paused {
			state = "paused"
		}
		if j.Pending {
			state += ", trigger pending"
		}
		outcome := string(j.Outcome)
		if outcome == "" {
			outcome = "-"
		}
		if j.Error != "" {
			outcome += ": " + printable(j.Error, 60)
		}
		if j.Task != "" {
			outcome += " (task " + printable(j.Task, 40) + ")"
		}
		last := when(j.LastTime)
		if j.Trigger {
			last += " (trigger)"
		}
		token := "-"
		if j.Token != 0 {
			token = strconv.FormatInt(j.Token, 10)
		}
		next := when(j.Next)
		if j.Paused {
			next = "- (paused)"
		}
		handler := "- (in code)"
		if j.Defined {
			handler = printable(j.Handler, 30)
		}
		rows = append(rows, []string{j.Job, printable(j.Spec, 30), handler, state, last, outcome, token, next})
	}
	if err := s.table([]string{"JOB", "SPEC", "HANDLER", "STATE", "LAST RUN", "OUTCOME", "TOKEN", "NEXT"}, rows); err != nil {
		return err
	}
	for _, j := range jobs {
		if j.Problem != "" {
			if _, err := fmt.Fprintf(s.stdout, "job %s: %s\n", j.Job, printable(j.Problem, 200)); err != nil {
				return err
			}
		}
	}
	return nil
}

// cronDefine defines a job at runtime (cron.Define), or with update
// replaces its definition (cron.Update).
func cronDefine(update bool) func(ctx context.Context, s *session, args []string) error {
	return func(ctx context.Context, s *session, args []string) error {
		name, job := args[0], args[1]
		d := cron.Definition{Spec: args[2], Handler: args[3], Paused: s.opts.paused,
			CatchUpWindow: s.opts.window, Retries: s.opts.retries, RetryBackoff: s.opts.backoff, Reruns: s.opts.reruns}
		switch s.opts.overlap {
		case "skip":
		case "allow":
			d.Overlap = cron.AllowOverlap
		default:
			return usageError("--overlap %q: want skip or allow", s.opts.overlap)
		}
		switch s.opts.catchUp {
		case "latest":
		case "all":
			d.CatchUp = cron.CatchUpAll
		default:
			return usageError("--catch-up %q: want latest or all", s.opts.catchUp)
		}
		cli, err := s.client(ctx)
		if err != nil {
			return err
		}
		do, what := cron.Define, "defined"
		if update {
			do, what = cron.Update, "updated"
		}
		if err := do(ctx, cli, name, job, d); err != nil {
			return err
		}
		if s.opts.json {
			return s.printJSON(map[string]any{"scheduler": name, "job": job, "done": true})
		}
		_, err = fmt.Fprintf(s.stdout, "scheduler %s: job %s %s: %s, handler %s; the leader follows it on its watch\n",
			name, job, what, printable(d.Spec, 60), printable(d.Handler, 60))
		return err
	}
}

func cronRemove(ctx context.Context, s *session, args []string) error {
	return cronControl(ctx, s, args, cron.Remove, "removed, with all its records")
}

func cronPause(ctx context.Context, s *session, args []string) error {
	return cronControl(ctx, s, args, cron.Pause, "paused: its scheduled times pass without running until resumed")
}

func cronResume(ctx context.Context, s *session, args []string) error {
	return cronControl(ctx, s, args, cron.Resume, "resumed: it runs again from its next scheduled time")
}

func cronTrigger(ctx context.Context, s *session, args []string) error {
	return cronControl(ctx, s, args, cron.Trigger, "triggered: the leader runs it once now")
}

func cronControl(ctx context.Context, s *session, args []string,
	do func(context.Context, *clientv3.Client, string, string) error, what string) error {
	name, job := args[0], args[1]
	cli, err := s.client(ctx)
	if err != nil {
		return err
	}
	if err := do(ctx, cli, name, job); err != nil {
		return err
	}
	if s.opts.json {
		return s.printJSON(map[string]any{"scheduler": name, "job": job, "done": true})
	}
	_, err = fmt.Fprintf(s.stdout, "scheduler %s: job %s %s\n", name, job, what)
	return err
}
