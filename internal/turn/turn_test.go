package turn_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/concordkit/concord/internal/turn"
)

// A free turn is taken even with an ended ctx, every time.
func TestFreeTurnTakenWithEndedContext(t *testing.T) {
	tn := turn.New()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for range 100 {
		require.NoError(t, tn.Take(ctx))
		require.True(t, tn.Held())
		tn.Done()
	}
	require.False(t, tn.Held())
}

// A caller behind a held turn returns its ctx's cause when ctx ends, and
// takes the turn once it is given back.
func TestWaitEndsWithContext(t *testing.T) {
	tn := turn.New()
	require.NoError(t, tn.Take(context.Background()))
	errStop := errors.New("stop")
	ctx, cancel := context.WithCancelCause(context.Background())
	done := make(chan error, 1)
	go func() { done <- tn.Take(ctx) }()
	cancel(errStop)
	select {
	case err := <-done:
		require.ErrorIs(t, err, errStop)
	case <-time.After(5 * time.Second):
		t.Fatal("Take behind a held turn did not return when its ctx ended")
	}

	go func() { done <- tn.Take(context.Background()) }()
	tn.Done()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Take did not get the turn given back")
	}
	tn.Done()
}
