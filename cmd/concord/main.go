// Command concord inspects and administers what concord's recipes hold in
// etcd: lock holders and waiters, leaders, semaphore permits, queue depth and
// progress, scheduler state, and the raw keys under a prefix.
//
//	concord [flags] <command> [args]
//
// Inspection:
//
//	concord lock <name> [--rw]          holders, fencing tokens, since, waiters
//	concord leader <name> [--watch]     the current leader (and each change)
//	concord semaphore <name>            permits held and waiting
//	concord queue stats <name>          depth: ready, delayed, running, done, canceled, dead
//	concord queue ls <name>             the tasks in a queue
//	concord queue status <name> <id>    one task: state, attempts, progress [--watch]
//	concord queue dead <name>           the dead letters
//	concord cron status <name>          leader, jobs, last and next runs
//	concord watch <prefix> [--count N]  every change under a prefix
//
// Administration:
//
//	concord lock release <name> [--rw]  force: delete the holders' keys
//	concord queue requeue <name> [id…]  move dead letters (all, or those) back to ready
//	concord queue purge <name> [id…]    delete dead letters (all, or those) for good
//	concord queue cancel <name> <id>…   cancel tasks (queued: removed; running: ended)
//	concord cron pause|resume|trigger <name> <job>
//
// Running a command under a holding:
//
//	concord run --lock <name> -- <command> [arg…]
//	concord run --leader <name> -- <command> [arg…]
//	concord run --semaphore <name> --permits N -- <command> [arg…]
//
// run waits for the holding, then starts the command in a process group of
// its own with CONCORD_FENCING_TOKEN, CONCORD_KEY and CONCORD_LEASE (hex) in
// its environment. When the command exits, what it left running in its
// group gets SIGTERM (SIGKILL after --kill-after), the holding is released
// and the command's status is concord's (128 + the signal, if a signal
// ended it). When the holding ends first (lost, or the lease could not be
// renewed in time), the group gets SIGTERM, then SIGKILL after
// --kill-after, and the status is the command's, or 1 if it exited 0. The
// holding's lease keeps a margin of --kill-after + 0.5 s before its safe
// deadline, so the group is gone before etcd can expire the lease and grant
// the holding to anyone else; --ttl must be over twice that margin. SIGINT
// or SIGTERM to concord stops the command the same way.
//
// What this cannot cover: a paused concord process (its lease runs out
// meanwhile), a revoked lease (the next holder may start at once), and a
// concord killed with SIGKILL (the command gets SIGKILL too, but what it
// started does not): the command should check CONCORD_FENCING_TOKEN where
// it writes (package fence). When stdin is a terminal the command stays in
// concord's process group, so that it can read the terminal; signals then
// reach the command alone, not what it started.
//
// Flags may come before or after the command. The password of --user may
// be given as user:password or, to keep it out of the process list, in the
// CONCORD_PASSWORD environment variable. A cluster that does not answer is
// reported within --dial-timeout.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
