package connect

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestConfig(t *testing.T) {
	t.Setenv(PasswordEnv, "")
	for _, tc := range []struct {
		name  string
		s     Settings
		usage bool   // ErrUsage expected
		err   string // text the error must hold; "" for none
	}{
		{"plain", Settings{Endpoints: []string{"http://x:2379"}}, false, ""},
		{"cert without key", Settings{Cert: "c.pem"}, true, "--cert needs --key"},
		{"key without cert", Settings{Key: "k.pem"}, true, "--key needs --cert"},
		{"user without password", Settings{User: "alice"}, true, "--user alice: no password"},
		{"empty user name", Settings{User: ":pw"}, true, "--user: empty user name"},
		{"missing CA file", Settings{CACert: "/nonexistent/ca.pem"}, false, "/nonexistent/ca.pem"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := tc.s.Config("--")
			if tc.err == "" {
				require.NoError(t, err)
				assert.Equal(t, tc.s.Endpoints, cfg.Endpoints)
				assert.Positive(t, cfg.DialTimeout)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.err)
			assert.Equal(t, tc.usage, errors.Is(err, ErrUsage))
		})
	}
}

func TestPasswordFromEnvironment(t *testing.T) {
	t.Setenv(PasswordEnv, "secret")
	cfg, err := Settings{User: "alice"}.Config("-")
	require.NoError(t, err)
	assert.Equal(t, "alice", cfg.Username)
	assert.Equal(t, "secret", cfg.Password)
	cfg, err = Settings{User: "bob:given"}.Config("-")
	require.NoError(t, err)
	assert.Equal(t, "given", cfg.Password, "a password in the flag wins")
}

// A file that holds no certificate is refused, and the error does not show
// what the file holds.
func TestBadCA(t *testing.T) {
	p := filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.WriteFile(p, []byte("not a certificate: hunter2"), 0o600))
	_, err := Settings{CACert: p}.Config("-")
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "hunter2")
}
