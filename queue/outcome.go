package queue

// outcome is how this worker's claim on a task ended, if it has.
type outcome uint8

const (
	pending  outcome = iota // not ended yet
	acked                   // Ack: done
	nacked                  // Nack: back in the queue, or dead on the last attempt
	failed                  // Fail: dead-lettered
	released                // given back unused by the index, not an attempt
	lostIt                  // the claim was gone before this worker ended it
)

// verb names the call that ends a claim this way, for errors ("queue: ack:
// …") and the hold histogram's outcome attribute.
func (o outcome) verb() string {
	switch o {
	case acked:
		return "ack"
	case nacked:
		return "nack"
	case failed:
		return "fail"
	case released:
		return "release"
	case lostIt:
		return "lost"
	}
	return "pending"
}

// String is the past participle, for "task x was acked".
func (o outcome) String() string {
	switch o {
	case acked:
		return "acked"
	case nacked:
		return "nacked"
	case failed:
		return "failed"
	case released:
		return "released"
	case lostIt:
		return "lost"
	}
	return "pending"
}
