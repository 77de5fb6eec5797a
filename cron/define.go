package cron

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/codec"
	"github.com/concordkit/concord/internal/guard"
	"github.com/concordkit/concord/internal/names"
)

// ErrNotDefined reports an Update or Remove of a job that has no
// definition in etcd (jobs added in code with Add have none).
var ErrNotDefined = errors.New("cron: job not defined")

// ErrDefined reports a Define of a job that is defined already, or whose
// name a job added in code uses (it has records under the scheduler).
var ErrDefined = errors.New("cron: job already defined")

// ErrRemoved is the cause a run's context ends with when its job's
// definition is removed, and what its Commit returns then.
var ErrRemoved = errors.New("cron: job removed")

// Definition is a job defined at runtime (Define, Update), stored in etcd
// under the scheduler's name, rather than added in code. Its Handler names
// the code that runs it: a func each replica registers with
// Scheduler.Handle.
type Definition struct {
	Spec    string `json:"spec"`    // as for Add
	Handler string `json:"handler"` // the name given to Scheduler.Handle

	// Paused pauses the job (its pause record, as Pause writes, goes in
	// the same transaction). Define without it drops a pause or trigger
	// recorded before the job existed; Update without it leaves the job's
	// pause as it is (Resume resumes).
	Paused bool `json:"-"`

	Overlap Overlap `json:"overlap,omitempty"`  // WithOverlap
	CatchUp CatchUp `json:"catch_up,omitempty"` // WithCatchUp's policy
	// CatchUpWindow is WithCatchUp's window; 0 means DefaultCatchUpWindow
	// (a window of a second runs only times due now).
	CatchUpWindow time.Duration `json:"catch_up_window,omitempty"`
	Retries       int           `json:"retries,omitempty"`       // WithRetries
	RetryBackoff  time.Duration `json:"retry_backoff,omitempty"` // WithRetries
	Reruns        int           `json:"reruns,omitempty"`        // WithRerun
}

// defRecord is the value of N/.cron/def/<job>.
type defRecord struct {
	Definition
	At int64 `json:"at"` // when it was defined or last updated, Unix nanoseconds
}

// MaxHandlerLen is the longest handler name accepted, in bytes.
const MaxHandlerLen = 256

func validateHandler(h string) error {
	return names.ValidateSegment("cron", "handler name", h, MaxHandlerLen)
}

// build checks d and returns the job it defines. The job has no func: the
// leader looks its handler up.
func (d Definition) build(jobName string) (*job, error) {
	if err := validateHandler(d.Handler); err != nil {
		return nil, err
	}
	sched, err := parseSpec(d.Spec)
	if err != nil {
		return nil, err
	}
	window := d.CatchUpWindow
	if window == 0 {
		window = DefaultCatchUpWindow
	}
	o := jobOptions{overlap: d.Overlap, catchUp: d.CatchUp, window: window,
		retries: d.Retries, backoff: d.RetryBackoff, reruns: d.Reruns}
	if err := o.check(jobName); err != nil {
		return nil, err
	}
	return &job{name: jobName, spec: d.Spec, sched: sched, opts: o, handler: d.Handler, defined: true}, nil
}

func decodeDef(b []byte) (defRecord, error) {
	var r defRecord
	if err := codec.Strict(b, &r); err != nil {
		return defRecord{}, fmt.Errorf("%w: definition: %w", ErrCorrupt, err)
	}
	if r.At <= 0 {
		return defRecord{}, fmt.Errorf("%w: definition: time %d out of range", ErrCorrupt, r.At)
	}
	return r, nil
}

// Define defines job in the scheduler called name, from any process: the
// leader picks the definition up from its watch and runs the job with the
// func its replica registered for d.Handler (Scheduler.Handle). A leader
// whose binary has no such handler does not run the job and says so in its
// Status (Problem). Cost: one transaction, which fails with ErrDefined if
// the job is defined already or a job added in code (Add) has records
// under its name. A job added in code under the same name that has none
// yet (it never ran) takes precedence once a leader has both; Status
// reports the clash, and Remove then deletes only the definition.
func Define(ctx context.Context, cli *clientv3.Client, name, jobName string, d Definition) error {
	return putDef(ctx, cli, name, jobName, d, false)
}

// Update replaces the definition of job: its schedule, handler and options,
// and pauses it if Definition.Paused is set. The leader follows it on its
// watch: a time due under the old definition before the leader sees the
// change (a watch delay) may still run under it; the new schedule starts
// from the next time after the leader saw it (times of the new schedule
// that passed before are not caught up). Runs in progress go on. Cost: one transaction, which
// fails with ErrNotDefined if the job is not defined.
func Update(ctx context.Context, cli *clientv3.Client, name, jobName string, d Definition) error {
	return putDef(ctx, cli, name, jobName, d, true)
}

func putDef(ctx context.Context, cli *clientv3.Client, name, jobName string, d Definition, update bool) error {
	verb := "define"
	if update {
		verb = "update"
	}
	if err := checkNames(name, jobName); err != nil {
		return err
	}
	if err := guard.CheckClient("cron", cli); err != nil {
		return err
	}
	if _, err := d.build(jobName); err != nil {
		return err // it names the field, and the job where that helps
	}
	now := time.Now().UnixNano()
	val, err := encode(defRecord{Definition: d, At: now})
	if err != nil {
		return err
	}
	k := keysOf(name)
	ops := []clientv3.Op{clientv3.OpPut(k.def(jobName), val)}
	switch {
	case d.Paused:
		ctl, err := encode(control{At: now})
		if err != nil {
			return err
		}
		ops = append(ops, clientv3.OpPut(k.paused(jobName), ctl))
	case !update:
		ops = append(ops, clientv3.OpDelete(k.paused(jobName)))
	}
	if !update {
		// A trigger recorded before the job existed was for no job: it
		// must not fire at the next leader's start.
		ops = append(ops, clientv3.OpDelete(k.trigger(jobName)))
	}
	// A new definition needs a name without records: a job added in code
	// that ran under it has some (Remove deletes a defined job's).
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(k.def(jobName)), "=", 0),
		clientv3.Compare(clientv3.CreateRevision(k.claim(jobName)), "=", 0),
		clientv3.Compare(clientv3.CreateRevision(k.status(jobName)), "=", 0)}
	if update {
		cmps = []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(k.def(jobName)), ">", 0)}
	}
	resp, err := cli.Txn(ctx).If(cmps...).Then(ops...).Else(clientv3.OpGet(k.def(jobName), clientv3.WithCountOnly())).Commit()
	switch {
	case err != nil:
		return fmt.Errorf("cron: %s %s/%s: %w", verb, name, jobName, err)
	case resp.Succeeded:
		return nil
	case update:
		return fmt.Errorf("%w: %s/%s", ErrNotDefined, name, jobName)
	case resp.Responses[0].GetResponseRange().Count == 0:
		return fmt.Errorf("%w: %s/%s is the name of a job added in code (it has records)", ErrDefined, name, jobName)
	}
	return fmt.Errorf("%w: %s/%s", ErrDefined, name, jobName)
}

// Remove deletes the definition of job and, in the same transaction, every
// record of it: its watermark and open runs, commit records, status, pause
// and pending trigger. Runs in progress on the leader get a canceled
// context (cause ErrRemoved) once the leader sees the removal; until then
// their writes into the scheduler's records, and their Commits, fail: every
// write the leader makes for a defined job is fenced by the definition's
// create revision. A dispatched run (HandleDispatch) already enqueued is
// the queue's: a worker still runs it and its Ack lands. A job defined
// again later starts afresh. If a job added in code of the same name is
// what the leader runs (its status says so), only the definition goes, and
// that job's records stay. Cost: one read and one transaction, which fails
// with ErrNotDefined if the job is not defined.
func Remove(ctx context.Context, cli *clientv3.Client, name, jobName string) error {
	if err := checkNames(name, jobName); err != nil {
		return err
	}
	if err := guard.CheckClient("cron", cli); err != nil {
		return err
	}
	k := keysOf(name)
	// The status tells whose records these are; the transaction holds only
	// if it did not change meanwhile. A job running every second changes
	// it that often: a few tries.
	for range 10 {
		g, err := cli.Get(ctx, k.status(jobName))
		if err != nil {
			return fmt.Errorf("cron: remove %s/%s: %w", name, jobName, err)
		}
		var statusRev int64
		inCode := false
		if len(g.Kvs) > 0 {
			statusRev = g.Kvs[0].ModRevision
			st, err := decodeStatus(g.Kvs[0].Value)
			if err != nil {
				return fmt.Errorf("cron: remove %s/%s: %w (key %s)", name, jobName, err, k.status(jobName))
			}
			inCode = !st.Defined
		}
		ops := []clientv3.Op{clientv3.OpDelete(k.def(jobName))}
		if !inCode {
			ops = append(ops,
				clientv3.OpDelete(k.claim(jobName)),
				clientv3.OpDelete(k.status(jobName)),
				clientv3.OpDelete(k.ctlDir(jobName), clientv3.WithPrefix()),
				clientv3.OpDelete(k.doneDir(jobName), clientv3.WithPrefix()))
		}
		resp, err := cli.Txn(ctx).If(
			clientv3.Compare(clientv3.CreateRevision(k.def(jobName)), ">", 0),
			clientv3.Compare(clientv3.ModRevision(k.status(jobName)), "=", statusRev),
		).Then(ops...).Else(clientv3.OpGet(k.def(jobName), clientv3.WithCountOnly())).Commit()
		switch {
		case err != nil:
			return fmt.Errorf("cron: remove %s/%s: %w", name, jobName, err)
		case resp.Succeeded:
			return nil
		case resp.Responses[0].GetResponseRange().Count == 0:
			return fmt.Errorf("%w: %s/%s", ErrNotDefined, name, jobName)
		}
	}
	return fmt.Errorf("cron: remove %s/%s: its status kept changing; try again", name, jobName)
}
