// Command taskqueue runs a durable work queue end to end: two producers
// enqueue tasks, three workers take them and report their progress with a
// checkpoint after every step. Midway, the worker running the long
// transcode task is killed; its claim dies with its lease, and another
// worker resumes the task from the last checkpoint instead of starting over.
// A poison task fails on every attempt and lands in the dead letters.
//
// On a terminal the progress shows as bars; otherwise as plain lines.
//
//	go run ./examples/taskqueue            # on an embedded 3-member cluster
//	go run ./examples/taskqueue -trace     # and print the spans
//	go run ./examples/taskqueue -endpoints https://etcd:2379 -cacert ca.pem -user me
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
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/examples/internal/exampleenv"
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
	leaseTTL    = 2 * time.Second

	longTask   = "transcode-video"
	longSteps  = 20
	killAtStep = 8
	poisonTask = "corrupt-archive"
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

// outcome is what a worker reports for one task.
type outcome struct {
	task   string
	worker string
	dead   bool
}

// worker is one consumer process: its own client, lease and queue handle.
type worker struct {
	name   string
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
	total := 2 + len(producerTasks[0]) + len(producerTasks[1])
	var d *display
	if o.Trace {
		d = newDisplay(shared, total, true) // spans and bars do not mix
	} else {
		d = newDisplay(out, total, false)
	}
	defer d.close()
	if e.Embedded() {
		d.say("started an embedded 3-member etcd cluster")
	}

	opts := []queue.Option{queue.WithMaxAttempts(maxAttempts), queue.WithRetryBackoff(50*time.Millisecond, 200*time.Millisecond), queue.WithRetention(0)}
	admin, err := queue.New(e.Admin, queueName, opts...)
	if err != nil {
		return err
	}
	defer admin.Close()
	if err := admin.Destroy(ctx); err != nil { // start from an empty queue
		return err
	}

	// The long task and the poison task go first, at a higher priority, so
	// that the kill happens while the other tasks are still being produced.
	if _, err := admin.Enqueue(ctx, payload(longTask, longSteps), queue.Priority(10)); err != nil {
		return err
	}
	if _, err := admin.Enqueue(ctx, payload(poisonTask, 4), queue.Priority(5)); err != nil {
		return err
	}
	d.say("enqueued %s (%d steps, checkpointed after each) and %s (fails every time)", longTask, longSteps, poisonTask)

	var (
		mu        sync.Mutex // protects stepsDone
		stepsDone = map[int][]string{}
		outcomes  = make(chan outcome, total*maxAttempts)
		kill      = make(chan *worker, 1)
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
			kctx, kcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			w.k.Close(kctx)
			kcancel()
		}
	}()
	for i := range ws {
		w := &worker{name: fmt.Sprintf("worker-%d", i+1), done: make(chan struct{})}
		if w.cli, err = e.NewClient(); err != nil {
			return err
		}
		if w.k, err = leasekeeper.New(ctx, w.cli, leasekeeper.WithTTL(leaseTTL)); err != nil {
			return err
		}
		if w.q, err = queue.New(w.cli, queueName, append(opts, queue.WithWorkerName(w.name))...); err != nil {
			return err
		}
		var wctx context.Context
		wctx, w.cancel = context.WithCancel(ctx)
		ws[i] = w
		go func() {
			defer close(w.done)
			w.loop(wctx, d, outcomes, kill, func(step int) {
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
			q, err := queue.New(cli, queueName, opts...)
			if err != nil {
				perr <- err
				return
			}
			defer q.Close()
			for _, n := range names {
				if _, err := q.Enqueue(ctx, payload(n, 6)); err != nil {
					perr <- err
					return
				}
			}
			d.say("producer-%d enqueued %d tasks", i+1, len(names))
		})
	}

	var killed *worker
	finished, dead := 0, 0
	for finished+dead < total {
		select {
		case w := <-kill:
			killed = w
			lease := w.k.Current().ID()
			if err := e.CutOff(ctx, w.cli, lease); err != nil {
				return err
			}
			w.cancel() // the process is gone: it acks nothing, releases nothing
			<-w.done
			if e.Embedded() {
				d.say("KILLED %s midway through %s (step %d of %d): its claim lives on until its lease expires on the server", w.name, longTask, killAtStep, longSteps)
			} else {
				d.say("KILLED %s midway through %s (step %d of %d); its lease was revoked on the server", w.name, longTask, killAtStep, longSteps)
			}
		case oc := <-outcomes:
			if oc.dead {
				dead++
			} else {
				finished++
			}
		case err := <-perr:
			return err
		case <-ctx.Done():
			return fmt.Errorf("waiting for the tasks: %w", context.Cause(ctx))
		}
	}
	producers.Wait()
	if killed == nil {
		return errors.New("the long task finished before its worker could be killed")
	}

	st, err := admin.Stats(ctx)
	if err != nil {
		return err
	}
	letters, err := admin.DeadLetters(ctx, 10)
	if err != nil {
		return err
	}
	d.say("queue now: %d ready, %d running, %d dead", st.Ready, st.Running, st.Dead)
	for _, l := range letters {
		d.say("dead letter %s after %d attempts: %s", l.ID, l.Attempt, l.Reason)
	}
	mu.Lock()
	var lost, twice []int
	for s := 1; s <= longSteps; s++ {
		switch len(stepsDone[s]) {
		case 0:
			lost = append(lost, s)
		case 1:
		default:
			twice = append(twice, s)
		}
	}
	first, last := stepsDone[1], stepsDone[longSteps]
	mu.Unlock()
	if len(lost) > 0 || len(twice) > 0 || len(first) == 0 || len(last) == 0 {
		return fmt.Errorf("%s: steps lost %v, steps done twice %v", longTask, lost, twice)
	}
	d.say("%d tasks done, %d dead letter; %s ran steps 1-%d on %s and %d-%d on %s: no step lost, none done twice",
		finished, dead, longTask, killAtStep, first[0], killAtStep+1, longSteps, last[0])
	return admin.Destroy(ctx)
}

// loop takes tasks until ctx ends. It reports each finished or dead task,
// and asks to be killed when it reaches killAtStep of the long task's first
// attempt.
func (w *worker) loop(ctx context.Context, d *display, outcomes chan<- outcome, kill chan<- *worker, stepDone func(int)) {
	for {
		t, err := w.q.Dequeue(ctx, w.k)
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, queue.ErrClosed) {
				d.say("%s: dequeue: %v", w.name, err)
			}
			return
		}
		name, steps, err := parsePayload(t.Payload)
		if err != nil {
			_ = t.Fail(ctx, err.Error())
			outcomes <- outcome{task: t.ID, worker: w.name, dead: true}
			continue
		}
		if name == poisonTask {
			reason := "cannot open archive: checksum mismatch"
			if err := t.Nack(ctx, 50*time.Millisecond); err != nil {
				d.say("%s: %s: nack: %v", w.name, name, err)
				continue
			}
			if t.Attempt < maxAttempts {
				d.say("%s  %-16s attempt %d of %d failed (%s): retried later", w.name, name, t.Attempt, maxAttempts, reason)
				continue
			}
			d.say("%s  %-16s attempt %d of %d failed (%s): sent to the dead letters", w.name, name, t.Attempt, maxAttempts, reason)
			outcomes <- outcome{task: name, worker: w.name, dead: true}
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
		ok := w.work(ctx, t, name, steps, from, view, kill, stepDone)
		if !ok {
			view.end(false)
			if ctx.Err() != nil {
				return
			}
			continue
		}
		if err := t.Ack(ctx); err != nil {
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
func (w *worker) work(ctx context.Context, t *queue.Task, name string, steps, from int, view *taskView, kill chan<- *worker, stepDone func(int)) bool {
	tick := time.NewTicker(stepTime)
	defer tick.Stop()
	for s := from + 1; s <= steps; s++ {
		select {
		case <-tick.C: // the step's simulated work
		case <-t.Context().Done():
			return false // claim lost: someone else may have the task now
		case <-ctx.Done():
			return false
		}
		// The checkpoint is fenced: a worker that lost the task cannot
		// overwrite its new owner's progress.
		if err := t.Progress(ctx, float64(s)/float64(steps), fmt.Sprintf("step %d of %d", s, steps), []byte(strconv.Itoa(s))); err != nil {
			return false
		}
		if name == longTask {
			stepDone(s)
		}
		view.step(s)
		if name == longTask && t.Attempt == 1 && s == killAtStep {
			kill <- w
			<-ctx.Done() // killed here
			return false
		}
	}
	return true
}
