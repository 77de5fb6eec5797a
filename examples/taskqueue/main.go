// Command taskqueue runs a durable work queue end to end: two producers
// enqueue tasks, three workers take them and report their progress with a
// checkpoint after every step. Midway, the worker running the long
// transcode task is killed; its claim dies with its lease, and another
// worker resumes the task from the last checkpoint instead of starting over.
// A poison task fails on every attempt and lands in the dead letters. A
// task enqueued with a timeout hangs on its first attempt: when the timeout
// passes, its worker is told and its claim released, and another worker
// runs it at once, without waiting for the hung worker's lease, which a
// live worker keeps renewing. An operator cancels a long rebuild while it
// runs: its worker is told at once and stops, and the task ends canceled.
//
// On a terminal the progress shows as bars; otherwise as plain lines.
//
//	go run ./examples/taskqueue            # on an embedded 3-member cluster
//	go run ./examples/taskqueue -trace     # and print the spans
//	go run ./examples/taskqueue -endpoints https://etcd:2379 -cacert ca.pem -cert me.pem -key me-key.pem -user me
//
// On a cluster given with -endpoints the kill cuts the worker's own
// connections (see exampleenv), so the story is the same on any etcd.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/examples/internal/exampleenv"
	"github.com/concordkit/concord/internal/retry"
	"github.com/concordkit/concord/leasekeeper"
	"github.com/concordkit/concord/queue"
)

func main() {
	var o exampleenv.Options
	fs := flag.NewFlagSet("taskqueue", flag.ExitOnError)
	o.Register(fs)
	_ = fs.Parse(os.Args[1:])
	if err := run(context.Background(), os.Stdout, o); err != nil {
		fmt.Fprintln(os.Stderr, "taskqueue:", err)
		os.Exit(1)
	}
}

const (
	queueName   = "examples/taskqueue"
	workers     = 3
	maxAttempts = 3
	stepTime    = 40 * time.Millisecond // what one step of simulated work takes

	longTask   = "transcode-video"
	longSteps  = 20
	killAtStep = 8
	poisonTask = "corrupt-archive"

	// The hung task's first attempt blocks at step hangAtStep until its
	// timeout, shorter than any lease TTL exampleenv picks.
	hungTask    = "export-ledger"
	hungTimeout = time.Second
	hangAtStep  = 2

	// Canceled by an operator once its worker reports step cancelAtStep.
	cancelTask   = "rebuild-index"
	cancelSteps  = 50
	cancelAtStep = 3
)

// payload is what a producer enqueues: a task name and its number of steps.
func payload(name string, steps int) []byte { return fmt.Appendf(nil, "%s:%d", name, steps) }

func parsePayload(p []byte) (string, int, error) {
	name, n, ok := strings.Cut(string(p), ":")
	steps, err := strconv.Atoi(n)
	if !ok || err != nil || steps <= 0 {
		return "", 0, fmt.Errorf("bad payload %q", p)
	}
	return name, steps, nil
}

// lockedWriter lets workers, the story and the span exporter share one
// output.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// outcome is what a worker reports for one task it finished, or (canceled)
// stopped because an operator canceled it.
type outcome struct {
	task     string
	worker   string
	canceled bool
}

// killed is the worker to kill, and the step of the long task it has done.
type killed struct {
	w    *worker
	step int
}

// worker is one consumer process: its own client, lease and queue handle.
type worker struct {
	name   string
	env    *exampleenv.Env
	cli    *clientv3.Client
	k      *leasekeeper.Keeper
	q      *queue.Queue
	cancel context.CancelFunc
	done   chan struct{}
}

func run(ctx context.Context, out io.Writer, o exampleenv.Options) error {
	ctx, cancel := context.WithTimeout(ctx, 55*time.Second)
	defer cancel()
	shared := &lockedWriter{w: out}
	e, err := exampleenv.Setup(ctx, shared, o)
	if err != nil {
		return err
	}
	defer e.Close()

	producerTasks := [][]string{
		{"resize-image-1", "resize-image-2", "resize-image-3", "resize-image-4", "resize-image-5"},
		{"send-report-1", "send-report-2", "send-report-3", "send-report-4", "send-report-5"},
	}
	total := 4 + len(producerTasks[0]) + len(producerTasks[1])
	var d *display
	if o.Trace {
		d = newDisplay(shared, total, true) // spans and bars do not mix
	} else {
		d = newDisplay(out, total, false)
	}
	defer d.close()
	if s := e.Started(); s != "" {
		d.say("%s", s)
	}
	// Each worker's lease outlives an etcd leader failover (see
	// exampleenv.LeaseTTL): only the kill below ends one.
	leaseTTL := e.LeaseTTL()

	opts := []queue.Option{queue.WithMaxAttempts(maxAttempts), queue.WithRetryBackoff(50*time.Millisecond, 200*time.Millisecond), queue.WithRetention(0)}
	admin := queue.New(e.Admin, queueName, opts...)
	defer admin.Close()
	if err := e.Retry(ctx, admin.Delete); err != nil { // start from an empty queue
		return err
	}

	// The long task and the poison task go first, at a higher priority, so
	// that the kill happens while the other tasks are still being produced.
	// Each task has a dedup ID, so that an Enqueue sent again after a lost
	// answer does not enqueue it twice.
	enqueue := func(ctx context.Context, q *queue.Queue, name string, steps int, opts ...queue.EnqueueOption) (string, error) {
		var id string
		err := e.Retry(ctx, func(ctx context.Context) error {
			var err error
			id, err = q.Enqueue(ctx, payload(name, steps), append(opts, queue.WithDedupID(name))...)
			return err
		})
		return id, err
	}
	if _, err := enqueue(ctx, admin, longTask, longSteps, queue.WithPriority(10)); err != nil {
		return err
	}
	poisonID, err := enqueue(ctx, admin, poisonTask, 4, queue.WithPriority(5))
	if err != nil {
		return err
	}
	// The queue itself tells when the poison task is dead: a worker sees
	// it fail on the last attempt only if it holds that attempt's claim to
	// the end, and a claim can be lost (its lease, or its worker, gone).
	sctx, stopStatus := context.WithCancel(ctx)
	defer stopStatus()
	poisonStatus, err := admin.WatchStatus(sctx, poisonID)
	if err != nil {
		return err
	}
	d.say("enqueued %s (%d steps, checkpointed after each) and %s (fails every time)", longTask, longSteps, poisonTask)
	cancelID, err := enqueue(ctx, admin, cancelTask, cancelSteps)
	if err != nil {
		return err
	}
	d.say("enqueued %s (%d steps)", cancelTask, cancelSteps)
	// A worker says when the rebuild reached cancelAtStep: then the
	// operator cancels it.
	cancelNow := make(chan string, 1)

	var (
		mu        sync.Mutex // protects stepsDone
		stepsDone = map[int][]string{}
		outcomes  = make(chan outcome, total*maxAttempts)
		kill      = make(chan killed, 1)
		killOnce  atomic.Bool // set by the worker that is to be killed
	)
	ws := make([]*worker, workers)
	defer func() {
		for _, w := range ws {
			if w == nil {
				continue
			}
			w.cancel()
			<-w.done
			w.q.Close()
			e.Restore(w.cli)
			kctx, kcancel := context.WithTimeout(context.WithoutCancel(ctx), leaseTTL)
			w.k.Close(kctx)
			kcancel()
		}
	}()
	for i := range ws {
		w := &worker{name: fmt.Sprintf("worker-%d", i+1), env: e, done: make(chan struct{})}
		if w.cli, err = e.NewClient(); err != nil {
			return err
		}
		if w.k, err = leasekeeper.New(ctx, w.cli, leasekeeper.WithTTL(leaseTTL)); err != nil {
			return err
		}
		w.q = queue.New(w.cli, queueName, append(opts, queue.WithWorkerName(w.name))...)
		var wctx context.Context
		wctx, w.cancel = context.WithCancel(ctx)
		ws[i] = w
		go func() {
			defer close(w.done)
			w.loop(wctx, d, outcomes, kill, cancelNow, &killOnce, func(step int) {
				mu.Lock()
				stepsDone[step] = append(stepsDone[step], w.name)
				mu.Unlock()
			})
		}()
	}
	d.say("started %d workers, each with its own client and a %v lease", workers, leaseTTL)

	var producers sync.WaitGroup
	perr := make(chan error, len(producerTasks))
	for i, names := range producerTasks {
		producers.Go(func() {
			cli, err := e.NewClient()
			if err != nil {
				perr <- err
				return
			}
			q := queue.New(cli, queueName, opts...)
			defer q.Close()
			for _, n := range names {
				if _, err := enqueue(ctx, q, n, 6); err != nil {
					perr <- err
					return
				}
			}
			d.say("producer-%d enqueued %d tasks", i+1, len(names))
		})
	}

	var victim *killed
	finished, dead, canceled := 0, 0, 0
	for finished+dead+canceled < total {
		select {
		case who := <-cancelNow:
			// An operator's cancel, from a process that runs no worker.
			d.say("CANCEL %s, which %s runs: an operator cancels it, in one transaction", cancelTask, who)
			if err := e.Retry(ctx, func(ctx context.Context) error { return admin.Cancel(ctx, cancelID) }); err != nil {
				return err
			}
		case k := <-kill:
			victim = &k
			// The process is gone: it acks nothing, releases nothing, and
			// its lease expires on the server a TTL after its last renewal.
			e.CutOff(k.w.cli)
			k.w.cancel()
			<-k.w.done
			d.say("KILLED %s midway through %s (step %d of %d): its claim lives on until its lease expires on the server", k.w.name, longTask, k.step, longSteps)
			// Enqueued after the kill, so that no claim of it dies with the
			// killed worker's batch (which would spend its first attempt).
			if _, err := enqueue(ctx, admin, hungTask, 4, queue.WithPriority(5), queue.WithTimeout(hungTimeout)); err != nil {
				return err
			}
			d.say("enqueued %s with a %v timeout", hungTask, hungTimeout)
		case o := <-outcomes:
			if o.canceled {
				canceled++
			} else {
				finished++
			}
		case st, open := <-poisonStatus:
			if !open {
				if ctx.Err() != nil {
					return fmt.Errorf("waiting for the tasks: %w", context.Cause(ctx))
				}
				return fmt.Errorf("following %s's status ended", poisonTask)
			}
			if st.State == queue.StateDead {
				dead++
				poisonStatus = nil // done with it
			}
		case err := <-perr:
			return err
		case <-ctx.Done():
			return fmt.Errorf("waiting for the tasks: %w", context.Cause(ctx))
		}
	}
	stopStatus()
	producers.Wait()
	if victim == nil {
		return errors.New("the long task finished before its worker could be killed")
	}

	var st queue.Stats
	var letters []queue.DeadLetter
	if err := e.Retry(ctx, func(ctx context.Context) error {
		st, err = admin.Stats(ctx)
		return err
	}); err != nil {
		return err
	}
	if err := e.Retry(ctx, func(ctx context.Context) error {
		letters, err = admin.DeadLetters(ctx, 10)
		return err
	}); err != nil {
		return err
	}
	var cst queue.Status
	if err := e.Retry(ctx, func(ctx context.Context) error {
		cst, err = admin.Status(ctx, cancelID)
		return err
	}); err != nil {
		return err
	}
	if cst.State != queue.StateCanceled {
		return fmt.Errorf("%s is %s, not canceled", cancelTask, cst.State)
	}
	d.say("queue now: %d ready, %d running, %d dead, %d canceled (%s: %s at %.0f%%)", st.Ready, st.Running, st.Dead, st.Canceled,
		cancelTask, cst.State, 100*cst.Fraction)
	for _, l := range letters {
		d.say("dead letter %s after %d attempts: %s", l.ID, l.Attempt, l.Reason)
	}
	mu.Lock()
	var lost, twice []int
	var runs []string // who ran which steps, in order
	for s, from := 1, 1; s <= longSteps; s++ {
		switch len(stepsDone[s]) {
		case 0:
			lost = append(lost, s)
		case 1:
		default:
			twice = append(twice, s)
		}
		if s == longSteps || len(stepsDone[s]) == 0 || len(stepsDone[s+1]) == 0 || stepsDone[s+1][0] != stepsDone[s][0] {
			if len(stepsDone[s]) > 0 {
				runs = append(runs, fmt.Sprintf("%d-%d on %s", from, s, stepsDone[s][0]))
			}
			from = s + 1
		}
	}
	mu.Unlock()
	if len(lost) > 0 || len(twice) > 0 {
		return fmt.Errorf("%s: steps lost %v, steps done twice %v", longTask, lost, twice)
	}
	d.say("%d tasks done (%s on its second attempt), %d dead letter; %s ran steps %s: no step lost, none done twice",
		finished, hungTask, dead, longTask, strings.Join(runs, ", "))
	return e.Retry(ctx, admin.Delete)
}

// loop takes tasks until ctx ends. It reports each finished task, and asks
// to be killed when it is the first to get past killAtStep of the long task.
//
// A worker never walks away from a task whose claim it still holds: nobody
// else could take the task until the worker's lease ended, which a live
// worker's keeper never lets happen. So a Progress, Ack or Nack that failed
// for a transient reason (etcd electing a new leader) is sent again, until
// it is done or the claim is lost; they are all safe to repeat.
func (w *worker) loop(ctx context.Context, d *display, outcomes chan<- outcome, kill chan<- killed, cancelNow chan<- string, killOnce *atomic.Bool, stepDone func(int)) {
	bo := retry.RequestPolicy.New()
	for {
		t, err := w.q.Dequeue(ctx, w.k)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, queue.ErrClosed) {
				return
			}
			d.say("%s: dequeue: %v; tries again", w.name, err)
			if bo.Wait(ctx) != nil {
				return
			}
			continue
		}
		bo.Reset()
		name, steps, err := parsePayload(t.Payload)
		if err != nil {
			_ = w.env.Retry(ctx, func(ctx context.Context) error { return t.Fail(ctx, err.Error()) })
			continue
		}
		if name == poisonTask {
			reason := "cannot open archive: checksum mismatch"
			if err := w.env.Retry(ctx, func(ctx context.Context) error { return t.Nack(ctx, 50*time.Millisecond) }); err != nil {
				d.say("%s: %s: nack: %v", w.name, name, err)
				continue
			}
			if t.Attempt < maxAttempts {
				d.say("%s  %-16s attempt %d of %d failed (%s): retried later", w.name, name, t.Attempt, maxAttempts, reason)
				continue
			}
			d.say("%s  %-16s attempt %d of %d failed (%s): sent to the dead letters", w.name, name, t.Attempt, maxAttempts, reason)
			continue
		}

		from := 0
		if cp := t.Checkpoint(); cp != nil {
			from, _ = strconv.Atoi(string(cp))
			d.say("%s resumes %s from its checkpoint: step %d of %d done (attempt %d, token %d)", w.name, name, from, steps, t.Attempt, t.Token())
		} else {
			d.say("%s  %-16s started (attempt %d, token %d)", w.name, name, t.Attempt, t.Token())
		}
		view := d.attempt(w.name, name, steps, from)
		ok := w.work(ctx, t, name, steps, from, view, kill, cancelNow, killOnce, stepDone)
		if !ok {
			view.end(false)
			if ctx.Err() != nil {
				return
			}
			if errors.Is(context.Cause(t.Context()), queue.ErrCanceled) {
				// Told by its queue's watch, or by a refused Progress,
				// whichever came first.
				d.say("%s  %-16s CANCELED by an operator: stops, acks nothing", w.name, name)
				outcomes <- outcome{task: name, worker: w.name, canceled: true}
			}
			continue
		}
		// Ack is idempotent: sent again after a lost answer, it returns nil
		// if the first one committed. A lost claim (ErrLost) means the task
		// runs again elsewhere.
		if err := w.env.Retry(ctx, func(ctx context.Context) error { return t.Ack(ctx) }); err != nil {
			d.say("%s: %s: ack: %v", w.name, name, err)
			view.end(false)
			continue
		}
		view.end(true)
		if name == longTask {
			d.say("%s  %-16s done", w.name, name)
		}
		outcomes <- outcome{task: name, worker: w.name}
	}
}

// work runs a task's steps from the checkpoint on, saving a checkpoint after
// each, and reports whether it got to the end.
func (w *worker) work(ctx context.Context, t *queue.Task, name string, steps, from int, view *taskView,
	kill chan<- killed, cancelNow chan<- string, killOnce *atomic.Bool, stepDone func(int)) bool {
	// Checkpoints are sent until the claim is lost or the worker stops.
	held, cancel := context.WithCancelCause(t.Context())
	defer cancel(nil)
	stop := context.AfterFunc(ctx, func() { cancel(context.Cause(ctx)) })
	defer stop()
	tick := time.NewTicker(stepTime)
	defer tick.Stop()
	for s := from + 1; s <= steps; s++ {
		if name == hungTask && t.Attempt == 1 && s == hangAtStep {
			// A call that hangs, as one to a stuck service does: only the
			// task's context gets the worker out.
			<-held.Done()
			if errors.Is(context.Cause(t.Context()), queue.ErrTimeout) {
				view.d.say("%s  %-16s hung at step %d: TIMED OUT after %v; its claim is released for another worker", w.name, name, s, hungTimeout)
			}
			return false
		}
		select {
		case <-tick.C: // the step's simulated work
		case <-held.Done():
			return false // claim lost (someone else may have the task now), canceled, or the worker stops
		}
		// The checkpoint is fenced: a worker that lost the task cannot
		// overwrite its new owner's progress. The same checkpoint sent
		// twice is harmless.
		if err := w.env.Retry(held, func(ctx context.Context) error {
			return t.Progress(ctx, float64(s)/float64(steps), fmt.Sprintf("step %d of %d", s, steps), []byte(strconv.Itoa(s)))
		}); err != nil {
			if held.Err() == nil && !errors.Is(err, queue.ErrLost) {
				// Refused for good while the claim stands: give the task
				// back rather than hold it.
				view.d.say("%s: %s: progress: %v; gives the task back", w.name, name, err)
				_ = w.env.Retry(ctx, func(ctx context.Context) error { return t.Nack(ctx, 0) })
			}
			return false
		}
		if name == longTask {
			stepDone(s)
		}
		view.step(s)
		if name == cancelTask && s == cancelAtStep {
			select {
			case cancelNow <- w.name:
			default: // asked already (a second attempt)
			}
		}
		// The first worker past killAtStep is killed, on whichever attempt:
		// normally the first, but an attempt that lost its claim on its own
		// (a lease lost under heavy load) must not keep the kill from
		// happening.
		if name == longTask && s >= killAtStep && killOnce.CompareAndSwap(false, true) {
			kill <- killed{w, s}
			<-ctx.Done() // killed here
			return false
		}
	}
	return true
}
