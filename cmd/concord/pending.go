package main

import (
	"context"
	"fmt"
)

func pending(pkg string) func(context.Context, *session, []string) error {
	return func(context.Context, *session, []string) error {
		return fmt.Errorf("not available in this build: the %s recipe has not landed", pkg)
	}
}

var (
	semaphoreShow = pending("semaphore")
)
