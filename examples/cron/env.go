package main

// Every example has a copy of this file (less what it does not use), so
// that each stays one folder to read: it connects to an embedded 3-member
// cluster (the default) or to the etcd given by -endpoints, and prints spans
// with -trace.

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

// options are the flags every example takes. The zero value runs on an
// embedded cluster without tracing.
type options struct {
	endpoints string // empty: start an embedded 3-member cluster
	cacert    string
	cert      string
	key       string
	user      string // name:password, or name with the password in CONCORD_PASSWORD
	trace     bool   // print spans to the output
}

func (o *options) register(fs *flag.FlagSet) {
	fs.StringVar(&o.endpoints, "endpoints", "", "comma-separated etcd client URLs (default: start an embedded 3-member cluster)")
	fs.StringVar(&o.cacert, "cacert", "", "with -endpoints: PEM file of the members' CA")
	fs.StringVar(&o.cert, "cert", "", "with -endpoints: PEM file of a client certificate")
	fs.StringVar(&o.key, "key", "", "with -endpoints: PEM file of the client certificate's key")
	fs.StringVar(&o.user, "user", "", "with -endpoints: etcd user as name:password, or name with CONCORD_PASSWORD")
	fs.BoolVar(&o.trace, "trace", false, "print OpenTelemetry spans to stdout")
}

// env is where an example runs.
type env struct {
	tc      *testcluster.Cluster // nil with -endpoints
	cfg     clientv3.Config      // with -endpoints
	mu      sync.Mutex           // protects clients
	clients []*clientv3.Client
	admin   *clientv3.Client
	tp      *sdktrace.TracerProvider
	prevTP  trace.TracerProvider
}

func setup(ctx context.Context, out io.Writer, o options) (*env, error) {
	e := &env{}
	if o.trace {
		exp, err := stdouttrace.New(stdouttrace.WithWriter(out))
		if err != nil {
			return nil, err
		}
		// Recipes use the global provider unless told otherwise.
		e.tp = sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
		e.prevTP = otel.GetTracerProvider()
		otel.SetTracerProvider(e.tp)
	}
	if o.endpoints == "" {
		c, err := testcluster.Start(ctx)
		if err != nil {
			e.close()
			return nil, err
		}
		e.tc = c
		e.admin = c.Admin()
		return e, nil
	}
	cfg := clientv3.Config{
		Endpoints:   strings.Split(o.endpoints, ","),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	}
	if o.cacert != "" || o.cert != "" || o.key != "" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if o.cacert != "" {
			pem, err := os.ReadFile(o.cacert)
			if err != nil {
				return nil, err
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("-cacert %s: no PEM certificate", o.cacert)
			}
		}
		if (o.cert == "") != (o.key == "") {
			return nil, fmt.Errorf("-cert and -key go together")
		}
		if o.cert != "" {
			pair, err := tls.LoadX509KeyPair(o.cert, o.key)
			if err != nil {
				return nil, fmt.Errorf("-cert %s / -key %s: %w", o.cert, o.key, err)
			}
			tc.Certificates = []tls.Certificate{pair}
		}
		cfg.TLS = tc
	}
	if o.user != "" {
		name, pw, ok := strings.Cut(o.user, ":")
		if !ok {
			pw = os.Getenv("CONCORD_PASSWORD")
		}
		if name == "" || pw == "" {
			return nil, fmt.Errorf("-user %s: give name:password, or the password in CONCORD_PASSWORD", name)
		}
		cfg.Username, cfg.Password = name, pw
	}
	e.cfg = cfg
	admin, err := e.newClient()
	if err != nil {
		e.close()
		return nil, err
	}
	// clientv3.New does not wait for a connection: check that one answers.
	sctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	if _, err := admin.Status(sctx, cfg.Endpoints[0]); err != nil {
		e.close()
		return nil, fmt.Errorf("etcd at %s did not answer: %w", o.endpoints, err)
	}
	e.admin = admin
	return e, nil
}

// newClient returns a client of its own, so that it can be cut off alone.
func (e *env) newClient() (*clientv3.Client, error) {
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

// embedded reports whether the example runs on its own embedded cluster.
func (e *env) embedded() bool { return e.tc != nil }

// cutOff makes the server expire lease as a network cut would: on the
// embedded cluster, cli is cut off from every member (the process lives on
// and learns of the loss from its keeper); on a real cluster, which cannot
// be partitioned from here, the lease is revoked on the server instead.
func (e *env) cutOff(ctx context.Context, cli *clientv3.Client, lease clientv3.LeaseID) error {
	if e.tc != nil {
		e.tc.CutClient(cli)
		return nil
	}
	_, err := e.admin.Revoke(ctx, lease)
	return err
}

// restore undoes cutOff on the embedded cluster.
func (e *env) restore(cli *clientv3.Client) {
	if e.tc != nil {
		e.tc.RestoreClient(cli)
	}
}

func (e *env) close() {
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
