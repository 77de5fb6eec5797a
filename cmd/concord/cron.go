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
		rows = append(rows, []string{j.Job, printable(j.Spec, 30), state, last, outcome, token, next})
	}
	return s.table([]string{"JOB", "SPEC", "STATE", "LAST RUN", "OUTCOME", "TOKEN", "NEXT"}, rows)
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
