// Package exampleenv is where concord's examples run: an embedded 3-member
// cluster by default, or the etcd given by -endpoints (with TLS and user
// flags), with spans printed by -trace.
package exampleenv

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/concordkit/concord/testcluster"
)

// Options are the flags every example takes. The zero value runs on an
// embedded cluster without tracing.
type Options struct {
	Endpoints string // empty: start an embedded 3-member cluster
	CACert    string
	Cert      string
	Key       string
	User      string // name:password, or name with the password in CONCORD_PASSWORD
	Trace     bool   // print spans to the output
}

// Register defines the flags on fs.
func (o *Options) Register(fs *flag.FlagSet) {
	fs.StringVar(&o.Endpoints, "endpoints", "", "comma-separated etcd client URLs (default: start an embedded 3-member cluster)")
	fs.StringVar(&o.CACert, "cacert", "", "with -endpoints: PEM file of the members' CA")
	fs.StringVar(&o.Cert, "cert", "", "with -endpoints: PEM file of a client certificate")
	fs.StringVar(&o.Key, "key", "", "with -endpoints: PEM file of the client certificate's key")
	fs.StringVar(&o.User, "user", "", "with -endpoints: etcd user as name:password, or name with CONCORD_PASSWORD")
	fs.BoolVar(&o.Trace, "trace", false, "print OpenTelemetry spans to stdout")
}

// Env is where an example runs.
type Env struct {
	// Admin is a client no fault touches, for setting up and reading back.
	Admin *clientv3.Client

	tc      *testcluster.Cluster // nil with -endpoints
	cfg     clientv3.Config      // with -endpoints
	mu      sync.Mutex           // protects clients
	clients []*clientv3.Client
	tp      *sdktrace.TracerProvider
	prevTP  trace.TracerProvider
}

// Setup connects as o says; the caller must Close the Env.
func Setup(ctx context.Context, out io.Writer, o Options) (*Env, error) {
	e := &Env{}
	if o.Trace {
		exp, err := stdouttrace.New(stdouttrace.WithWriter(out))
		if err != nil {
			return nil, err
		}
		// Recipes use the global provider unless told otherwise.
		e.tp = sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
		e.prevTP = otel.GetTracerProvider()
		otel.SetTracerProvider(e.tp)
	}
	if o.Endpoints == "" {
		c, err := testcluster.Start(ctx)
		if err != nil {
			e.Close()
			return nil, err
		}
		e.tc = c
		e.Admin = c.Admin()
		return e, nil
	}
	cfg := clientv3.Config{
		Endpoints:   strings.Split(o.Endpoints, ","),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	}
	if o.CACert != "" || o.Cert != "" || o.Key != "" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if o.CACert != "" {
			pem, err := os.ReadFile(o.CACert)
			if err != nil {
				return nil, err
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("-cacert %s: no PEM certificate", o.CACert)
			}
		}
		if (o.Cert == "") != (o.Key == "") {
			return nil, fmt.Errorf("-cert and -key go together")
		}
		if o.Cert != "" {
			pair, err := tls.LoadX509KeyPair(o.Cert, o.Key)
			if err != nil {
				return nil, fmt.Errorf("-cert %s / -key %s: %w", o.Cert, o.Key, err)
			}
			tc.Certificates = []tls.Certificate{pair}
		}
		cfg.TLS = tc
	}
	if o.User != "" {
		name, pw, ok := strings.Cut(o.User, ":")
		if !ok {
			pw = os.Getenv("CONCORD_PASSWORD")
		}
		if name == "" || pw == "" {
			return nil, fmt.Errorf("-user %s: give name:password, or the password in CONCORD_PASSWORD", name)
		}
		cfg.Username, cfg.Password = name, pw
	}
	e.cfg = cfg
	admin, err := e.NewClient()
	if err != nil {
		e.Close()
		return nil, err
	}
	// clientv3.New does not wait for a connection: check that one answers.
	sctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	if _, err := admin.Status(sctx, cfg.Endpoints[0]); err != nil {
		e.Close()
		return nil, fmt.Errorf("etcd at %s did not answer: %w", o.Endpoints, err)
	}
	e.Admin = admin
	return e, nil
}

// NewClient returns a client of its own, so that it can be cut off alone.
func (e *Env) NewClient() (*clientv3.Client, error) {
	var cli *clientv3.Client
	var err error
	if e.tc != nil {
		cli, err = e.tc.NewClient()
	} else {
		cli, err = clientv3.New(e.cfg)
	}
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.clients = append(e.clients, cli)
	e.mu.Unlock()
	return cli, nil
}

// Embedded reports whether the example runs on its own embedded cluster.
func (e *Env) Embedded() bool { return e.tc != nil }

// CutOff makes the server expire lease as a network cut would: on the
// embedded cluster, cli is cut off from every member (the process lives on
// and learns of the loss from its keeper); on a real cluster, which cannot
// be partitioned from here, the lease is revoked on the server instead.
func (e *Env) CutOff(ctx context.Context, cli *clientv3.Client, lease clientv3.LeaseID) error {
	if e.tc != nil {
		e.tc.CutClient(cli)
		return nil
	}
	_, err := e.Admin.Revoke(ctx, lease)
	return err
}

// Restore undoes CutOff on the embedded cluster.
func (e *Env) Restore(cli *clientv3.Client) {
	if e.tc != nil {
		e.tc.RestoreClient(cli)
	}
}

// Close closes every client it made, the embedded cluster and the tracer.
func (e *Env) Close() {
	e.mu.Lock()
	clients := e.clients
	e.clients = nil
	e.mu.Unlock()
	for _, cli := range clients {
		if e.tc != nil {
			e.tc.RestoreClient(cli)
		}
		cli.Close()
	}
	if e.tc != nil {
		e.tc.Close()
	}
	if e.tp != nil {
		_ = e.tp.Shutdown(context.Background())
		otel.SetTracerProvider(e.prevTP)
	}
}
