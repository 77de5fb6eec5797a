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
	lockShow      = pending("lock")
	lockRelease   = pending("lock")
	leaderShow    = pending("election")
	semaphoreShow = pending("semaphore")
	queueStats    = pending("queue")
	queueList     = pending("queue")
	queueStatus   = pending("queue")
	queueDead     = pending("queue")
	queueRequeue  = pending("queue")
	queuePurge    = pending("queue")
	cronStatus    = pending("cron")
	cronPause     = pending("cron")
	cronResume    = pending("cron")
	cronTrigger   = pending("cron")
)
