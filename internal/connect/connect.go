// Package connect turns the connection settings that concord's command,
// examples and bench share into an etcd client configuration: endpoints,
// TLS files (read by etcd's own transport.TLSInfo, as etcdctl reads them)
// and a user, whose password may come from CONCORD_PASSWORD so that it
// stays out of the process list.
package connect

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// PasswordEnv is the environment variable a user's password is read from
// when User names no password.
const PasswordEnv = "CONCORD_PASSWORD"

// Settings are what a flag set gives.
type Settings struct {
	Endpoints   []string
	CACert      string // PEM file of the members' CA; empty: the system's roots
	Cert, Key   string // client certificate and key, for mutual TLS
	User        string // "name:password", or "name" with the password in PasswordEnv
	DialTimeout time.Duration
}

// ErrUsage marks settings that cannot work whatever the cluster says: a
// certificate without its key, a user without a password. The message
// names the flag (with flag, the caller's spelling: "--" or "-").
var ErrUsage = errors.New("bad connection settings")

// Config returns the client configuration. flag is how the caller spells
// a flag's prefix ("--" for the command, "-" for the examples and bench),
// for error messages. A configuration with TLS files uses TLS; one
// without, and an https endpoint, uses the system's roots.
func (s Settings) Config(flag string) (clientv3.Config, error) {
	cfg := clientv3.Config{
		Endpoints:   s.Endpoints,
		DialTimeout: s.DialTimeout,
		Logger:      zap.NewNop(),
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	switch {
	case s.Cert != "" && s.Key == "":
		return cfg, fmt.Errorf("%w: %scert needs %skey", ErrUsage, flag, flag)
	case s.Key != "" && s.Cert == "":
		return cfg, fmt.Errorf("%w: %skey needs %scert", ErrUsage, flag, flag)
	}
	if s.CACert != "" {
		// etcd's TLSInfo takes a file with no certificate in it for an
		// empty pool, and every handshake would then fail as untrusted.
		pem, err := os.ReadFile(s.CACert)
		if err != nil {
			return cfg, fmt.Errorf("%scacert: %w", flag, err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			return cfg, fmt.Errorf("%w: %scacert %s: no PEM certificate in the file", ErrUsage, flag, s.CACert)
		}
	}
	if s.CACert != "" || s.Cert != "" {
		info := transport.TLSInfo{CertFile: s.Cert, KeyFile: s.Key, TrustedCAFile: s.CACert}
		tc, err := info.ClientConfig()
		if err != nil {
			// The error names what is wrong with the files, never their
			// contents.
			var given []string
			for _, f := range []struct{ name, path string }{{"cacert", s.CACert}, {"cert", s.Cert}, {"key", s.Key}} {
				if f.path != "" {
					given = append(given, flag+f.name+" "+f.path)
				}
			}
			return cfg, fmt.Errorf("%s: %w", strings.Join(given, " / "), err)
		}
		cfg.TLS = tc
	}
	if s.User != "" {
		name, password, ok := strings.Cut(s.User, ":")
		if !ok {
			password = os.Getenv(PasswordEnv)
		}
		if name == "" {
			return cfg, fmt.Errorf("%w: %suser: empty user name", ErrUsage, flag)
		}
		if password == "" {
			return cfg, fmt.Errorf("%w: %suser %s: no password: give %suser %s:PASSWORD or set %s", ErrUsage, flag, name, flag, name, PasswordEnv)
		}
		cfg.Username, cfg.Password = name, password
	}
	return cfg, nil
}
