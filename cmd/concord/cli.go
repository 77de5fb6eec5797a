package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/concordkit/concord/leasekeeper"
)

// errUsage marks an error in the command line itself; run prints the usage
// after it and exits with status 2.
var errUsage = errors.New("usage")

func usageError(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, args...))
}

// options are the flags of every command. One flag set serves them all, so a
// flag may be written before or after the command words.
type options struct {
	endpoints   string
	cacert      string
	cert        string
	key         string
	user        string
	dialTimeout time.Duration
	json        bool

	// Command-specific flags; each command reads only its own.
	watch bool  // leader, queue status
	count int   // watch, --watch
	rev   int64 // watch
	limit int   // queue ls, queue dead
	rw    bool  // lock, lock release: an RWMutex

	// cron define, cron update
	paused           bool
	overlap, catchUp string
	window, backoff  time.Duration
	retries, reruns  int

	// run
	runLock, runLeader, runSemaphore string
	permits                          int
	ttl, killAfter                   time.Duration
}

const defaultEndpoints = "127.0.0.1:2379"

func newFlagSet(o *options) *flag.FlagSet {
	fs := flag.NewFlagSet("concord", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // run prints errors and usage itself
	endpoints := os.Getenv("CONCORD_ENDPOINTS")
	if endpoints == "" {
		endpoints = defaultEndpoints
	}
	fs.StringVar(&o.endpoints, "endpoints", endpoints, "comma-separated etcd client URLs; CONCORD_ENDPOINTS sets the default")
	fs.StringVar(&o.cacert, "cacert", "", "PEM file of the CA that signed the members' certificates")
	fs.StringVar(&o.cert, "cert", "", "PEM file of the client certificate (with --key)")
	fs.StringVar(&o.key, "key", "", "PEM file of the client certificate's private key (with --cert)")
	fs.StringVar(&o.user, "user", "", "etcd user as name:password, or name with the password in CONCORD_PASSWORD")
	fs.DurationVar(&o.dialTimeout, "dial-timeout", 5*time.Second, "how long to wait for the cluster to answer")
	fs.BoolVar(&o.json, "json", false, "print JSON instead of tables")
	fs.BoolVar(&o.watch, "watch", false, "leader, queue status: keep printing each change")
	fs.IntVar(&o.count, "count", 0, "watch, --watch: exit after this many lines (0: until interrupted)")
	fs.Int64Var(&o.rev, "rev", 0, "watch: start at this revision (0: from now)")
	fs.IntVar(&o.limit, "limit", 100, "queue ls/dead: show at most this many tasks")
	fs.BoolVar(&o.rw, "rw", false, "lock, lock release: the RWMutex of that name (its readers or writer)")
	fs.BoolVar(&o.paused, "paused", false, "cron define/update: the job is paused")
	fs.StringVar(&o.overlap, "overlap", "skip", "cron define/update: when a time comes while the last run goes: skip or allow (run alongside)")
	fs.StringVar(&o.catchUp, "catch-up", "latest", "cron define/update: which missed times run: latest or all")
	fs.DurationVar(&o.window, "window", 0, "cron define/update: how far back missed times count (0: 10m)")
	fs.IntVar(&o.retries, "retries", 0, "cron define/update: run a failed time again this many times")
	fs.DurationVar(&o.backoff, "backoff", 0, "cron define/update: pause between retries")
	fs.IntVar(&o.reruns, "rerun", 0, "cron define/update: rerun a time a failover interrupted, up to this many times")
	fs.StringVar(&o.runLock, "lock", "", "run: hold this lock while the command runs")
	fs.StringVar(&o.runLeader, "leader", "", "run: run the command while leader of this election")
	fs.StringVar(&o.runSemaphore, "semaphore", "", "run: hold a permit of this semaphore (of --permits) while the command runs")
	fs.IntVar(&o.permits, "permits", 0, "run: the semaphore's number of permits: at most this many commands at once")
	fs.DurationVar(&o.ttl, "ttl", leasekeeper.DefaultTTL, "run: the holding's lease TTL, whole seconds")
	fs.DurationVar(&o.killAfter, "kill-after", 2*time.Second, "run: SIGKILL the command this long after SIGTERM")
	return fs
}

// parseArgs parses flags wherever they appear and returns the other words in
// order. "--" ends flag parsing.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var words []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, usageError("%v", err)
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return words, nil
		}
		// flag stops at the first word, or after a "--" it consumed.
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			return append(words, rest...), nil
		}
		words = append(words, rest[0])
		args = rest[1:]
	}
}

// command is one leaf of the command tree.
type command struct {
	path  string // the command words, e.g. "queue status"
	args  string // the positional arguments, for the usage text
	nargs int    // how many positional arguments it takes
	help  string
	run   func(ctx context.Context, s *session, args []string) error
}

// commands lists every command; a path that is a prefix of another path
// (e.g. "lock" and "lock release") is resolved by matching the longest.
func commands() []command {
	return []command{
		{"lock", "<name>", 1, "show a lock's holder, token, since when, and its waiters (--rw: an RWMutex)", lockShow},
		{"lock release", "<name>", 1, "force a lock's release: delete its holder's key (the holder loses it; --rw: every holder of an RWMutex)", lockRelease},
		{"leader", "<name>", 1, "show an election's leader (--watch: and every change, --count)", leaderShow},
		{"semaphore", "<name>", 1, "show a semaphore's permits: holders and waiters", semaphoreShow},
		{"queue stats", "<name>", 1, "show a queue's depth: ready, delayed, running, done, canceled, dead", queueStats},
		{"queue ls", "<name>", 1, "list a queue's tasks (--limit)", queueList},
		{"queue status", "<name> <id>", 2, "show one task: state, attempts, worker, progress (--watch: follow it)", queueStatus},
		{"queue dead", "<name>", 1, "list a queue's dead letters (--limit)", queueDead},
		{"queue requeue", "<name> [id...]", 1, "move dead letters (all, or the given) back to ready", queueRequeue},
		{"queue purge", "<name> [id...]", 1, "delete dead letters (all, or the given) for good", queuePurge},
		{"queue cancel", "<name> <id> [id...]", 2, "cancel tasks: remove queued ones, end running ones (their worker is told)", queueCancel},
		{"queue result", "<name> <id>", 2, "print the result an acknowledged task stored (raw bytes; --json)", queueResult},
		{"queue pause", "<name>", 1, "stop handing out tasks (running ones go on, enqueues are kept)", queuePause(false)},
		{"queue resume", "<name>", 1, "hand out tasks again after a pause", queuePause(true)},
		{"cron status", "<name>", 1, "show a scheduler's leader, jobs, last and next runs", cronStatus},
		{"cron pause", "<name> <job>", 2, "pause a scheduled job", cronPause},
		{"cron resume", "<name> <job>", 2, "resume a paused job", cronResume},
		{"cron trigger", "<name> <job>", 2, "run a job once now, on the scheduler's leader", cronTrigger},
		{"cron define", "<name> <job> <spec> <handler>", 4, "define a job at runtime, run by the handler of that name (--paused, --overlap, --catch-up, --window, --retries, --backoff, --rerun)", cronDefine(false)},
		{"cron update", "<name> <job> <spec> <handler>", 4, "replace a defined job's schedule, handler and options (flags as for define; --paused pauses it, without it a pause is kept)", cronDefine(true)},
		{"cron remove", "<name> <job>", 2, "remove a defined job and all its records", cronRemove},
		{"watch", "<prefix>", 1, "print every change under a key prefix (--count, --rev)", watchPrefix},
		{"run", "-- <command> [arg...]", 1, "run a command while holding a lock (--lock), leadership (--leader) or a permit (--semaphore, --permits); it is stopped when the holding ends", runChild},
	}
}

// more reports whether c takes further arguments after its nargs.
func (c command) more() bool { return strings.HasSuffix(c.args, "...]") }

// findCommand resolves the command words: the longest command path that
// matches and takes the number of arguments left wins, so "lock release x"
// forces a release while "lock release" shows a lock named "release".
func findCommand(words []string) (cmd command, rest []string, err error) {
	var matches []command
	for _, c := range commands() {
		p := strings.Fields(c.path)
		if len(p) <= len(words) && slices.Equal(p, words[:len(p)]) {
			matches = append(matches, c)
		}
	}
	if len(matches) == 0 {
		return command{}, nil, usageError("unknown command %q", strings.Join(words, " "))
	}
	depth := func(c command) int { return len(strings.Fields(c.path)) }
	slices.SortStableFunc(matches, func(a, b command) int { return depth(b) - depth(a) })
	for _, c := range matches {
		if n := len(words) - depth(c); n == c.nargs || (c.more() && n > c.nargs) {
			return c, words[depth(c):], nil
		}
	}
	c := matches[0]
	at := ""
	if c.more() {
		at = " at least"
	}
	return command{}, nil, usageError("concord %s %s: takes%s %d argument(s), got %d",
		c.path, c.args, at, c.nargs, len(words)-depth(c))
}

func usage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintln(w, "usage: concord [flags] <command> [args]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "commands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-34s %s\n", c.path+" "+c.args, c.help)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "flags:")
	fs.VisitAll(func(f *flag.Flag) {
		def := ""
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
			def = fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(w, "  --%-14s %s%s\n", f.Name, f.Usage, def)
	})
}

// run is the whole program: main calls it with the process's arguments and
// streams, tests call it directly. It returns the exit status: 0 on success,
// 1 on an error, 2 on a bad command line.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	fs := newFlagSet(&o)
	words, err := parseArgs(fs, args)
	if errors.Is(err, errUsage) && strings.Contains(err.Error(), flag.ErrHelp.Error()) {
		usage(stdout, fs)
		return 0
	}
	if err == nil && (len(words) == 0 || words[0] == "help") {
		usage(stdout, fs)
		return 0
	}
	var cmd command
	var rest []string
	if err == nil {
		cmd, rest, err = findCommand(words)
	}
	if err == nil {
		s := &session{opts: &o, stdout: stdout, stderr: stderr}
		err = cmd.run(ctx, s, rest)
		s.close()
	}
	var exit exitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit):
		if exit.msg != "" {
			fmt.Fprintf(stderr, "concord: %s\n", exit.msg)
		}
		return exit.code
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "concord: %s\n\n", strings.TrimPrefix(err.Error(), errUsage.Error()+": "))
		usage(stderr, fs)
		return 2
	default:
		fmt.Fprintf(stderr, "concord: %v\n", err)
		return 1
	}
}
