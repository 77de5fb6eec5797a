package election

import (
	"context"
	"errors"
	"fmt"

	"github.com/concordkit/concord/internal/retry"
)

// Run campaigns with value, runs fn under the term's context when elected,
// resigns when fn returns, and campaigns again — after fn returns nil or
// after the term was lost — until ctx ends. It returns ctx's cause then, or
// the first error of fn that is not caused by the term ending (after
// resigning), or an error no retry can fix (an invalid name, a value too
// large, permission denied).
//
// fn's context ends when the term is lost (cause: ErrLost) or ctx ends; fn
// should return promptly then. A term loss is not an error of Run: it
// campaigns again, with backoff, as Curator's LeaderSelector with
// autoRequeue does.
func (e *Election) Run(ctx context.Context, value string, fn func(ctx context.Context, t *Term) error) error {
	if fn == nil {
		return errors.New("election: Run: nil fn")
	}
	bo := retry.RecoverPolicy.New()
	for {
		t, err := e.Campaign(ctx, value)
		if err != nil {
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			if errors.Is(err, ErrLost) || retry.Retriable(err) {
				if werr := bo.Wait(ctx); werr != nil {
					return werr
				}
				continue
			}
			return err
		}
		bo.Reset()
		ferr := runTerm(ctx, t, fn)
		// Read before resigning: Resign replaces no cause, but a loss must be
		// told apart from fn failing on its own.
		lost := errors.Is(t.Err(), ErrLost)
		if ctx.Err() != nil && e.handover != nil && !lost {
			// A graceful stop: hand over (it resigns itself when it cannot).
			_ = t.Handover(ctx, e.handover)
		}
		resignUntilDone(ctx, t)
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if ferr != nil && !lost {
			return fmt.Errorf("election: Run: %w", ferr)
		}
	}
}

// resignUntilDone resigns t, trying again until it succeeds, the term is lost
// (its key then goes with the lease) or ctx ends. A term left standing would
// keep this candidate leader with nothing running, and hold the Election's
// slot so that it could not campaign again.
func resignUntilDone(ctx context.Context, t *Term) {
	bo := retry.RecoverPolicy.New()
	for t.Resign(ctx) != nil {
		select {
		case <-t.Done():
			return
		default:
		}
		if bo.Wait(ctx) != nil {
			return
		}
	}
}

// runTerm runs fn under a context that ends with the term or with ctx.
func runTerm(ctx context.Context, t *Term, fn func(context.Context, *Term) error) error {
	fctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(t.Context(), func() { cancel(context.Cause(t.Context())) })
	defer stop()
	return fn(fctx, t)
}
