package cron

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/concordkit/concord/internal/codec"
)

// claim is the value of N/.cron/claim/<job>: the latest scheduled time
// claimed for the job (the job's watermark: no time at or before it is ever
// claimed again).
type claim struct {
	Time    int64     `json:"time"`           // scheduled time, Unix nanoseconds
	Token   int64     `json:"token"`          // the claiming term's token
	Attempt int       `json:"attempt"`        // 1, or more for a retry of the same time
	At      int64     `json:"at"`             // when it was claimed, Unix nanoseconds
	Open    []openRun `json:"open,omitempty"` // claimed scheduled times whose runs have not finished, oldest first
}

// openRun is a claimed time whose run has not finished: if its leader's
// term ends, the next leader reruns it (WithRerun).
type openRun struct {
	Time    int64 `json:"time"`
	Attempt int   `json:"attempt"`
}

// maxOpen bounds the open runs a claim record lists; beyond it the oldest
// are forgotten (they are then not rerun).
const maxOpen = 256

func decodeClaim(b []byte) (claim, error) {
	var c claim
	if err := codec.Strict(b, &c); err != nil {
		return claim{}, fmt.Errorf("%w: claim: %w", ErrCorrupt, err)
	}
	if c.Time <= 0 || c.Token <= 0 || c.Attempt < 1 {
		return claim{}, fmt.Errorf("%w: claim: time %d, token %d, attempt %d out of range", ErrCorrupt, c.Time, c.Token, c.Attempt)
	}
	if len(c.Open) > maxOpen {
		return claim{}, fmt.Errorf("%w: claim: %d open runs, more than %d", ErrCorrupt, len(c.Open), maxOpen)
	}
	if len(c.Open) == 0 {
		c.Open = nil // "open":[] and no open runs are the same record
	}
	for _, o := range c.Open {
		if o.Time <= 0 || o.Time > c.Time || o.Attempt < 1 {
			return claim{}, fmt.Errorf("%w: claim: open run (time %d, attempt %d) out of range", ErrCorrupt, o.Time, o.Attempt)
		}
	}
	return c, nil
}

// doneRecord is the value of N/.cron/done/<job>/<kind><time>: which run
// committed the effects of that time (Run.Commit).
type doneRecord struct {
	Token   int64 `json:"token"`
	Attempt int   `json:"attempt"`
	At      int64 `json:"at"` // when it committed, Unix nanoseconds
}

func decodeDone(b []byte) (doneRecord, error) {
	var d doneRecord
	if err := codec.Strict(b, &d); err != nil {
		return doneRecord{}, fmt.Errorf("%w: commit record: %w", ErrCorrupt, err)
	}
	if d.Token <= 0 || d.Attempt < 1 || d.At <= 0 {
		return doneRecord{}, fmt.Errorf("%w: commit record: token %d, attempt %d, at %d out of range", ErrCorrupt, d.Token, d.Attempt, d.At)
	}
	return d, nil
}

// Outcome of a job's last run.
type Outcome string

const (
	Running Outcome = "running" // fn has started and not returned (or the leader died while it ran)
	OK      Outcome = "ok"      // fn returned nil
	Failed  Outcome = "error"   // fn returned an error (after any retries)
	Skipped Outcome = "skipped" // not run: the previous run was still going (SkipIfRunning)
	Lost    Outcome = "lost"    // leadership was lost while fn ran
	// Dispatched: enqueued for a worker (AddDispatch); the task's state is
	// the queue's (JobStatus.Task).
	Dispatched Outcome = "dispatched"
)

func (o Outcome) valid() bool {
	switch o {
	case "", Running, OK, Failed, Skipped, Lost, Dispatched:
		return true
	}
	return false
}

// JobStatus is what Status reports for one job.
type JobStatus struct {
	Job      string        `json:"job"`
	Spec     string        `json:"spec"`
	LastTime time.Time     `json:"last_time"`         // scheduled (or trigger) time of the last run
	Start    time.Time     `json:"start"`             // when the last run started
	Outcome  Outcome       `json:"outcome"`           // of the last run
	Error    string        `json:"error,omitempty"`   // fn's error, for Failed
	Duration time.Duration `json:"duration"`          // of the last finished run
	Next     time.Time     `json:"next"`              // the next scheduled time, as the leader computed it
	Token    int64         `json:"token"`             // the term that ran it
	Attempt  int           `json:"attempt"`           // of the last run
	Trigger  bool          `json:"trigger,omitempty"` // the last run was a Trigger
	Paused   bool          `json:"paused"`            // from the pause key, not from the status record
	Pending  bool          `json:"pending,omitempty"` // a Trigger waits to be run

	Task    string `json:"task,omitempty"`    // the task of the last run, for Dispatched
	Defined bool   `json:"defined,omitempty"` // defined at runtime (Define), not added in code
	Handler string `json:"handler,omitempty"` // a defined job's handler
	// Problem says why the leader does not run the job as meant: a defined
	// job whose handler its binary lacks or whose definition is invalid, a
	// definition named like a job added in code.
	Problem string `json:"problem,omitempty"`
}

func decodeStatus(b []byte) (JobStatus, error) {
	var s JobStatus
	if err := codec.Strict(b, &s); err != nil {
		return JobStatus{}, fmt.Errorf("%w: status: %w", ErrCorrupt, err)
	}
	if !s.Outcome.valid() || s.Duration < 0 || s.Attempt < 0 || s.Token < 0 {
		return JobStatus{}, fmt.Errorf("%w: status: fields out of range", ErrCorrupt)
	}
	return s, nil
}

// control is the value of N/.cron/ctl/<job>/paused and .../trigger.
type control struct {
	At int64 `json:"at"` // when it was requested, Unix nanoseconds
}

func decodeControl(b []byte) (control, error) {
	var c control
	if err := codec.Strict(b, &c); err != nil {
		return control{}, fmt.Errorf("%w: control: %w", ErrCorrupt, err)
	}
	if c.At <= 0 {
		return control{}, fmt.Errorf("%w: control: time %d out of range", ErrCorrupt, c.At)
	}
	return c, nil
}

func encode(v any) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", fmt.Errorf("cron: encode %T: %w", v, err)
	}
	return string(b), nil
}
