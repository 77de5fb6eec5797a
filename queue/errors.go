package queue

import "errors"

var (
	// ErrEmpty is returned by TryDequeue when no task is ready.
	ErrEmpty = errors.New("queue: no task ready")
	// ErrPaused is returned by TryDequeue while the queue is paused.
	ErrPaused = errors.New("queue: paused")
	// ErrLost is the cause of a task context's cancellation when its claim
	// can no longer be trusted, and the error of Ack, Nack, Fail and Progress
	// on a task whose claim was lost (lease expired or revoked, claim key
	// deleted): another worker may have the task now.
	ErrLost = errors.New("queue: lost")
	// ErrFinished is returned when a task already acknowledged, requeued or
	// failed by this worker is finished in a different way.
	ErrFinished = errors.New("queue: task already finished")
	// ErrNotFound reports a task ID the queue does not know (never enqueued,
	// or finished longer ago than the retention).
	ErrNotFound = errors.New("queue: task not found")
	// ErrClosed is returned by Dequeue on a closed Queue.
	ErrClosed = errors.New("queue: closed")
	// ErrNotDead is returned by Requeue and Purge for a task that is not a
	// dead letter.
	ErrNotDead = errors.New("queue: task is not a dead letter")
	// ErrTimeout is in the cause of a task context's cancellation, and in
	// the errors of later calls on the task, when the task ran past its
	// timeout (WithTimeout, WithTaskTimeout): its claim was released for
	// another worker. Such an error also errors.Is ErrLost.
	ErrTimeout = errors.New("queue: task timed out")
	// ErrCanceled is in the cause of a task context's cancellation, and in
	// the errors of later calls on the task, when the task was canceled
	// (Cancel) while it ran. Such an error also errors.Is ErrLost.
	ErrCanceled = errors.New("queue: task canceled")
	// ErrFull is returned by Enqueue, EnqueueBatch and Requeue when the
	// queue holds as many unfinished tasks as its bound (WithMaxSize)
	// allows, and by an enqueue that waited for room (WithWaitIfFull)
	// until its context ended.
	ErrFull = errors.New("queue: full")
)

// ErrCorrupt reports a value under the queue's keys that this package did
// not write, or cannot read.
var ErrCorrupt = errors.New("queue: corrupt value")
