package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"text/tabwriter"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordkit/concord/internal/connect"
)

// session is what a command runs with: the options, the output streams and,
// once asked for, a client that has been seen to reach the cluster.
type session struct {
	opts   *options
	stdout io.Writer
	stderr io.Writer
	cli    *clientv3.Client
}

func (s *session) close() {
	if s.cli != nil {
		s.cli.Close()
		s.cli = nil
	}
}

// client connects to the cluster, or says clearly why it cannot, within the
// dial timeout.
func (s *session) client(ctx context.Context) (*clientv3.Client, error) {
	if s.cli != nil {
		return s.cli, nil
	}
	cfg, err := clientConfig(s.opts)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.opts.dialTimeout)
	defer cancel()
	// gRPC reports an endpoint that never answers as a bare deadline; in
	// the meantime each endpoint is dialed directly (TCP, then TLS when in
	// use), so that the error can say why: refused, unknown authority, ...
	reasons := diagnoseAll(ctx, cfg.Endpoints, cfg.TLS)
	fail := func(err error) error {
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("no member answered within %v (--dial-timeout): %w", s.opts.dialTimeout, err)
		}
		cancel()
		if why := reasons(); len(why) > 0 {
			err = fmt.Errorf("%w (%s)", err, strings.Join(why, "; "))
		}
		return fmt.Errorf("connect to %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	// With --user, New authenticates and so already waits for an answer.
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fail(err)
	}
	if err := probe(ctx, cli); err != nil {
		cli.Close()
		return nil, fail(err)
	}
	cancel()
	reasons()
	s.cli = cli
	return cli, nil
}

// probe asks every endpoint for its status at once and returns when the
// first answers, or when none answered before ctx ends. clientv3.New does
// not wait for a connection, so without this a command against a dead
// cluster would wait on its own context alone. Status needs no permission
// beyond a valid user, so it works for users restricted to a prefix.
func probe(ctx context.Context, cli *clientv3.Client) error {
	ctx, cancel := context.WithCancel(ctx)
	eps := cli.Endpoints()
	errs := make(chan error, len(eps))
	var wg sync.WaitGroup
	defer func() {
		cancel() // the endpoints that have not answered yet
		wg.Wait()
	}()
	for _, ep := range eps {
		wg.Go(func() {
			_, err := cli.Status(ctx, ep)
			errs <- err
		})
	}
	var last error
	for range eps {
		if last = <-errs; last == nil {
			return nil
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return last
}

// diagnoseAll dials every endpoint in the background until ctx ends; the
// function it returns waits for that and returns what went wrong, one line
// per endpoint that failed.
func diagnoseAll(ctx context.Context, eps []string, tlsCfg *tls.Config) func() []string {
	why := make([]error, len(eps))
	var wg sync.WaitGroup
	for i, ep := range eps {
		wg.Go(func() { why[i] = diagnose(ctx, ep, tlsCfg) })
	}
	return func() []string {
		wg.Wait()
		var out []string
		for i, err := range why {
			if err != nil {
				out = append(out, fmt.Sprintf("%s: %v", eps[i], err))
			}
		}
		return out
	}
}

// diagnose dials ep directly and returns why a connection to it fails, or
// nil if it can be made (or this cannot tell, as for unix sockets).
func diagnose(ctx context.Context, ep string, tlsCfg *tls.Config) error {
	scheme, host, found := strings.Cut(ep, "://")
	if !found {
		scheme, host = "", ep
	}
	switch scheme {
	case "", "http", "https":
	default:
		return nil
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		if ctx.Err() != nil {
			return nil // nothing learned beyond the deadline itself
		}
		return err
	}
	defer conn.Close()
	if scheme == "http" || (scheme == "" && tlsCfg == nil) {
		return nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if tlsCfg != nil {
		cfg = tlsCfg.Clone()
	}
	if h, _, err := net.SplitHostPort(host); err == nil && cfg.ServerName == "" {
		cfg.ServerName = h
	}
	cfg.NextProtos = []string{"h2"}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil && ctx.Err() == nil {
		return fmt.Errorf("TLS: %w", err)
	}
	return nil
}

// clientConfig turns the flags into a client configuration. It never puts a
// password or key material into an error.
func clientConfig(o *options) (clientv3.Config, error) {
	var eps []string
	for ep := range strings.SplitSeq(o.endpoints, ",") {
		if ep = strings.TrimSpace(ep); ep != "" {
			eps = append(eps, ep)
		}
	}
	if len(eps) == 0 {
		return clientv3.Config{}, usageError("--endpoints: no endpoint given")
	}
	if o.dialTimeout <= 0 {
		return clientv3.Config{}, usageError("--dial-timeout must be positive, got %v", o.dialTimeout)
	}
	cfg, err := connect.Settings{
		Endpoints: eps, CACert: o.cacert, Cert: o.cert, Key: o.key, User: o.user, DialTimeout: o.dialTimeout,
	}.Config("--")
	if errors.Is(err, connect.ErrUsage) {
		_, msg, _ := strings.Cut(err.Error(), ": ")
		return clientv3.Config{}, usageError("%s", msg)
	}
	return cfg, err
}

// table prints rows aligned in columns, with a header.
func (s *session) table(header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(s.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// fields prints name/value pairs, one per line, aligned.
func (s *session) fields(pairs ...[2]string) error {
	tw := tabwriter.NewWriter(s.stdout, 0, 4, 2, ' ', 0)
	for _, p := range pairs {
		fmt.Fprintf(tw, "%s:\t%s\n", p[0], p[1])
	}
	return tw.Flush()
}

// printJSON prints v as one line of JSON.
func (s *session) printJSON(v any) error {
	return json.NewEncoder(s.stdout).Encode(v)
}
