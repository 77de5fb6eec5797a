package chaos

import (
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
)

// A counter history for porcupine. An increment is one operation from
// before its read to after its write: under a lock, read-then-write is
// atomic, so each increment must return the value before it plus one. A
// read returns the value. An increment whose write failed in transit may
// have been applied, or not, at any time after its call.

type counterInput struct {
	inc bool
}

type counterOutput struct {
	value   int64
	unknown bool // the write's outcome is unknown
}

var counterModel = (&porcupine.NondeterministicModel{
	Init: func() []any { return []any{int64(0)} },
	Step: func(state, input, output any) []any {
		s, in, out := state.(int64), input.(counterInput), output.(counterOutput)
		switch {
		case !in.inc:
			if out.value == s {
				return []any{s}
			}
			return nil
		case out.unknown:
			return []any{s, s + 1}
		case out.value == s+1:
			return []any{s + 1}
		}
		return nil
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(counterInput), output.(counterOutput)
		switch {
		case !in.inc:
			return fmt.Sprintf("read → %d", out.value)
		case out.unknown:
			return "inc → ?"
		}
		return fmt.Sprintf("inc → %d", out.value)
	},
}).ToModel()

// history records operations with times relative to its start.
type history struct {
	start time.Time
	mu    sync.Mutex // protects ops
	ops   []porcupine.Operation
}

func newHistory() *history { return &history{start: time.Now()} }

func (h *history) now() int64 { return int64(time.Since(h.start)) }

func (h *history) add(client int, in counterInput, out counterOutput, call, ret int64) {
	if out.unknown {
		ret = math.MaxInt64 // it may take effect at any time after its call
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Output: out, Call: call, Return: ret})
}

// check runs porcupine on the history and records a violation if it is not
// linearizable. It returns the result and the number of operations.
func (h *history) check(r *report, timeout time.Duration) (porcupine.CheckResult, int) {
	h.mu.Lock()
	ops := append([]porcupine.Operation(nil), h.ops...)
	h.mu.Unlock()
	res := porcupine.CheckOperationsTimeout(counterModel, ops, timeout)
	if res == porcupine.Illegal {
		r.violate("linearizability: the counter history of %d operations is not linearizable", len(ops))
	}
	return res, len(ops)
}
