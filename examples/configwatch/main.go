// Command configwatch shows a service that reads its configuration from
// etcd as a typed, validated value and reloads it without restarting. It
// starts before any configuration exists and runs on its defaults; then an
// operator writes a configuration, changes it, writes two bad ones (a value
// out of range, a misspelt field) and finally fixes it. The service applies
// each good version the moment it is written, rejects each bad one with the
// reason, and keeps serving with the last good version meanwhile.
//
//	go run ./examples/configwatch           # on an embedded 3-member cluster
//	go run ./examples/configwatch -trace    # spans, if any (the cache records none)
//	go run ./examples/configwatch -endpoints https://etcd:2379 -cacert ca.pem -cert me.pem -key me-key.pem -user me
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/concordkit/concord/cache"
	"github.com/concordkit/concord/examples/internal/exampleenv"
)

func main() {
	var o exampleenv.Options
	fs := flag.NewFlagSet("configwatch", flag.ExitOnError)
	o.Register(fs)
	_ = fs.Parse(os.Args[1:])
	if err := run(context.Background(), os.Stdout, o); err != nil {
		fmt.Fprintln(os.Stderr, "configwatch:", err)
		os.Exit(1)
	}
}

const configKey = "examples/configwatch/service.json"

// Config is the service's configuration as stored in etcd (JSON).
type Config struct {
	Greeting       string `json:"greeting"`
	MaxConnections int    `json:"max_connections"`
	TimeoutMS      int    `json:"timeout_ms"`
}

func (c Config) String() string {
	return fmt.Sprintf("greeting %q, max_connections %d, timeout %v", c.Greeting, c.MaxConnections, time.Duration(c.TimeoutMS)*time.Millisecond)
}

// validate is the service's own check: a config that decodes can still be
// wrong for it.
func validate(c Config) error {
	var errs []error
	if c.Greeting == "" {
		errs = append(errs, errors.New("greeting must not be empty"))
	}
	if c.MaxConnections < 1 || c.MaxConnections > 10000 {
		errs = append(errs, fmt.Errorf("max_connections must be within 1..10000, got %d", c.MaxConnections))
	}
	if c.TimeoutMS <= 0 {
		errs = append(errs, fmt.Errorf("timeout_ms must be positive, got %d", c.TimeoutMS))
	}
	return errors.Join(errs...)
}

var defaults = Config{Greeting: "hello", MaxConnections: 10, TimeoutMS: 1000}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func run(ctx context.Context, out io.Writer, o exampleenv.Options) error {
	ctx, cancel := context.WithTimeout(ctx, 55*time.Second)
	defer cancel()
	out = &lockedWriter{w: out}
	start := time.Now()
	say := func(format string, args ...any) {
		fmt.Fprintf(out, "%6.2fs  %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}
	e, err := exampleenv.Setup(ctx, out, o)
	if err != nil {
		return err
	}
	defer e.Close()
	if s := e.Started(); s != "" {
		say("%s", s)
	}
	if o.Trace {
		say("-trace: the cache waits on nothing, so it records no spans; its staleness is a metric (concord.cache.staleness)")
	}
	// Requests that are safe to send again are, after a transient error
	// (exampleenv.Retry).
	del := func(ctx context.Context) error {
		_, err := e.Admin.Delete(ctx, configKey)
		return err
	}
	if err := e.Retry(ctx, del); err != nil {
		return err
	}

	// The service: its own client, and a typed view of its config key.
	cli, err := e.NewClient()
	if err != nil {
		return err
	}
	cfg, err := cache.NewValue(ctx, cli, configKey,
		cache.WithValidator(validate), cache.WithDefault(defaults))
	if err != nil {
		return err
	}
	defer cfg.Close()
	st := cfg.Load()
	say("service: no config at %s yet; running on the defaults: %v", configKey, st.Value)

	// The service applies each new state as it comes, and tells the
	// operator (this demo's main flow) which revision it has seen, so that
	// the story prints in order.
	applied := make(chan cache.State[Config], 1)
	sctx, stopService := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		stopService()
		wg.Wait()
	}()
	wg.Go(func() {
		current := st
		for s := range cfg.Changes(sctx) {
			switch {
			case s.Err != nil && (current.Err == nil || s.Err.Error() != current.Err.Error()):
				from := "the defaults"
				if s.Revision != 0 {
					from = fmt.Sprintf("revision %d", s.Revision)
				}
				say("service: REJECTED the new config: %v", s.Err)
				say("service: keeps serving with the last good config (%s): %v", from, s.Value)
				if s.Stale {
					say("service: WARNING: writes it never saw were compacted away; a newer good config may have existed")
				}
			case s.Err == nil && s.Revision != current.Revision:
				say("service: hot-reloaded config revision %d: %v", s.Revision, s.Value)
			}
			current = s
			select {
			case applied <- s:
			default:
				<-applied // the operator only needs the newest
				applied <- s
			}
		}
	})

	steps := []struct {
		what, value string
	}{
		{"writes the first config", `{"greeting": "hello, world", "max_connections": 100, "timeout_ms": 500}`},
		{"raises max_connections", `{"greeting": "hello, world", "max_connections": 250, "timeout_ms": 500}`},
		{"writes max_connections -5 by mistake", `{"greeting": "hello, world", "max_connections": -5, "timeout_ms": 500}`},
		{"misspells a field", `{"greeting": "hello, world", "max_conections": 300, "timeout_ms": 500}`},
		{"fixes it", `{"greeting": "hello again", "max_connections": 300, "timeout_ms": 750}`},
	}
	for _, step := range steps {
		say("operator %s: %s", step.what, step.value)
		var rev int64
		if err := e.Retry(ctx, func(ctx context.Context) error {
			resp, err := e.Admin.Put(ctx, configKey, step.value)
			if err == nil {
				rev = resp.Header.Revision
			}
			return err
		}); err != nil {
			return err
		}
		if err := waitApplied(ctx, applied, rev); err != nil {
			return err
		}
	}
	final := cfg.Load()
	if final.Err != nil || final.Value.MaxConnections != 300 {
		return fmt.Errorf("final config %v (err %v), want the fixed one", final.Value, final.Err)
	}
	say("service ends with config revision %d: %v", final.Revision, final.Value)
	stopService()
	wg.Wait()
	return e.Retry(ctx, del)
}

// waitApplied waits until the service has applied revision rev.
func waitApplied(ctx context.Context, applied <-chan cache.State[Config], rev int64) error {
	for {
		select {
		case s := <-applied:
			if s.CacheRevision >= rev {
				return nil
			}
		case <-ctx.Done():
			return fmt.Errorf("waiting for the service to apply revision %d: %w", rev, context.Cause(ctx))
		}
	}
}
