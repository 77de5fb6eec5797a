package cron

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/guard"
	"github.com/concordkit/concord/internal/names"
)

func checkNames(name, job string) error {
	if err := names.Validate("cron", name); err != nil {
		return err
	}
	return validateJob(job)
}

// Pause stops job of the scheduler called name from running at its
// scheduled times until Resume; times that pass meanwhile are not caught
// up. A run in progress is not interrupted. Any process can call it; the
// leader sees it on its watch. Cost: one put.
func Pause(ctx context.Context, cli *clientv3.Client, name, job string) error {
	if err := checkNames(name, job); err != nil {
		return err
	}
	if err := guard.CheckClient("cron", cli); err != nil {
		return err
	}
	val, err := encode(control{At: time.Now().UnixNano()})
	if err != nil {
		return err
	}
	k := keysOf(name)
	// Put only if absent: pausing twice keeps the first pause's time.
	if _, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k.paused(job)), "=", 0)).
		Then(clientv3.OpPut(k.paused(job), val)).Commit(); err != nil {
		return fmt.Errorf("cron: pause %s/%s: %w", name, job, err)
	}
	return nil
}

// Resume undoes Pause; the job runs again from its next scheduled time.
// Cost: one delete.
func Resume(ctx context.Context, cli *clientv3.Client, name, job string) error {
	if err := checkNames(name, job); err != nil {
		return err
	}
	if err := guard.CheckClient("cron", cli); err != nil {
		return err
	}
	if _, err := cli.Delete(ctx, keysOf(name).paused(job)); err != nil {
		return fmt.Errorf("cron: resume %s/%s: %w", name, job, err)
	}
	return nil
}

// Trigger asks the leader to run job once now, outside its schedule (also
// while paused). Triggers made before the leader consumed the previous one
// coalesce into one run. The run has Trigger set and Time the request time.
// Cost: one put; the leader consumes it with one fenced transaction.
func Trigger(ctx context.Context, cli *clientv3.Client, name, job string) error {
	if err := checkNames(name, job); err != nil {
		return err
	}
	if err := guard.CheckClient("cron", cli); err != nil {
		return err
	}
	val, err := encode(control{At: time.Now().UnixNano()})
	if err != nil {
		return err
	}
	if _, err := cli.Put(ctx, keysOf(name).trigger(job), val); err != nil {
		return fmt.Errorf("cron: trigger %s/%s: %w", name, job, err)
	}
	return nil
}

// Status returns the status of every job of the scheduler called name that
// is defined (Define), has run, was scheduled by a leader, or has a pause or
// trigger recorded, sorted by job name. Cost: one read.
func Status(ctx context.Context, cli *clientv3.Client, name string) ([]JobStatus, error) {
	if err := names.Validate("cron", name); err != nil {
		return nil, err
	}
	if err := guard.CheckClient("cron", cli); err != nil {
		return nil, err
	}
	k := keysOf(name)
	resp, err := cli.Get(ctx, k.prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("cron: status of %s: %w", name, err)
	}
	byJob := map[string]*JobStatus{}
	get := func(job string) *JobStatus {
		if s := byJob[job]; s != nil {
			return s
		}
		s := &JobStatus{Job: job}
		byJob[job] = s
		return s
	}
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		switch {
		case strings.HasPrefix(key, k.prefix+"status/"):
			job := strings.TrimPrefix(key, k.prefix+"status/")
			st, err := decodeStatus(kv.Value)
			if err != nil || validateJob(job) != nil {
				return nil, fmt.Errorf("cron: status of %s: %w (key %s)", name, err, key)
			}
			s := get(job)
			kept := *s
			*s = st
			s.Job, s.Paused, s.Pending = job, kept.Paused, kept.Pending
			if kept.Defined && st.Defined {
				// The definition, not the leader's last word, says what the
				// job is now. (A leader that runs a job in code of the same
				// name wrote Defined false: what it runs is the job in code.)
				s.Defined, s.Spec, s.Handler = true, kept.Spec, kept.Handler
				if kept.Problem != "" {
					s.Problem = kept.Problem
				}
			}
		case strings.HasPrefix(key, k.defs()):
			job, ok := k.parseDef(key)
			if !ok {
				return nil, fmt.Errorf("cron: status of %s: %w: unexpected key %s", name, ErrCorrupt, key)
			}
			rec, err := decodeDef(kv.Value)
			if err != nil {
				return nil, fmt.Errorf("cron: status of %s: %w (key %s)", name, err, key)
			}
			s := get(job)
			s.Defined, s.Spec, s.Handler = true, rec.Spec, rec.Handler
			if _, err := rec.build(job); err != nil {
				s.Problem = "invalid definition: " + strings.TrimPrefix(err.Error(), "cron: ")
			}
		case strings.HasPrefix(key, k.prefix+"claim/"):
			if _, err := decodeClaim(kv.Value); err != nil {
				return nil, fmt.Errorf("cron: status of %s: %w (key %s)", name, err, key)
			}
		case strings.HasPrefix(key, k.prefix+"done/"):
			if _, _, _, ok := k.parseDone(key); !ok {
				return nil, fmt.Errorf("cron: status of %s: %w: unexpected key %s", name, ErrCorrupt, key)
			}
			if _, err := decodeDone(kv.Value); err != nil {
				return nil, fmt.Errorf("cron: status of %s: %w (key %s)", name, err, key)
			}
		case strings.HasPrefix(key, k.ctl()):
			job, what, ok := k.parseCtl(key)
			if !ok {
				return nil, fmt.Errorf("cron: status of %s: %w: unexpected key %s", name, ErrCorrupt, key)
			}
			if _, err := decodeControl(kv.Value); err != nil {
				return nil, fmt.Errorf("cron: status of %s: %w (key %s)", name, err, key)
			}
			if what == "paused" {
				get(job).Paused = true
			} else {
				get(job).Pending = true
			}
		default:
			return nil, fmt.Errorf("cron: status of %s: %w: unexpected key %s", name, ErrCorrupt, key)
		}
	}
	out := make([]JobStatus, 0, len(byJob))
	for _, s := range byJob {
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Job < out[j].Job })
	return out, nil
}

// Delete deletes every record of the scheduler called name: definitions,
// claims (watermarks and open runs), commit records, statuses, pauses and
// triggers. Call it only when no replica
// runs: a running leader would claim times again from scratch. The leader
// election's keys are the election's and go with their leases. Cost: one
// delete.
func Delete(ctx context.Context, cli *clientv3.Client, name string) error {
	if err := names.Validate("cron", name); err != nil {
		return err
	}
	if err := guard.CheckClient("cron", cli); err != nil {
		return err
	}
	if _, err := cli.Delete(ctx, keysOf(name).prefix, clientv3.WithPrefix()); err != nil {
		return fmt.Errorf("cron: delete %s: %w", name, err)
	}
	return nil
}
