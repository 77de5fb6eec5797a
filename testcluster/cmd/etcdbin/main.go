// Command etcdbin builds a real etcd server (or etcdctl) of a given version
// from the Go module proxy, so that testcluster's process mode, the bench and
// CI can run against the etcd users run without installing anything:
//
//	go run ./testcluster/cmd/etcdbin v3.6.17            # prints the etcd binary's path
//	go run ./testcluster/cmd/etcdbin -etcdctl v3.5.36   # the matching etcdctl
//	CONCORD_ETCD=$(go run ./testcluster/cmd/etcdbin v3.6.17) go test ./lock
//
// The binary is built once into the user cache folder
// ($XDG_CACHE_HOME/concord/etcd/VERSION, or -dir) and reused afterwards; the
// build takes about a minute with a cold module cache.
//
// `go install go.etcd.io/etcd/server/v3@VERSION` is refused because etcd's
// module carries replace directives, which go install does not allow. Built as
// a dependency of a scratch module instead, the server module's own main
// package compiles from the versions its go.mod requires. etcd 3.4 has no
// server/v3 module: use a distribution's package for it (Debian's
// etcd-server).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctl := flag.Bool("etcdctl", false, "build etcdctl instead of the etcd server")
	dir := flag.String("dir", "", "cache folder (default: the user cache folder's concord/etcd)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: etcdbin [-etcdctl] [-dir DIR] VERSION   (VERSION like v3.6.17)")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	path, err := build(ctx, flag.Arg(0), *dir, *ctl)
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcdbin: %v\n", err)
		os.Exit(1)
	}
	fmt.Println(path)
}

var versionRE = regexp.MustCompile(`^v?3\.(\d+)\.(\d+)$`)

// build returns the path of the binary, building it first if the cache has
// none.
func build(ctx context.Context, version, dir string, ctl bool) (string, error) {
	m := versionRE.FindStringSubmatch(version)
	if m == nil {
		return "", fmt.Errorf("version %q: want a release such as v3.6.17", version)
	}
	version = "v" + strings.TrimPrefix(version, "v")
	if m[1] == "0" || m[1] == "1" || m[1] == "2" || m[1] == "3" || m[1] == "4" {
		return "", fmt.Errorf("version %s: only etcd 3.5 and later have the go.etcd.io/etcd/server/v3 module this builds from; install etcd 3.4 from a distribution package (Debian: etcd-server)", version)
	}
	if dir == "" {
		cache, err := os.UserCacheDir()
		if err != nil {
			return "", fmt.Errorf("no cache folder (%v): pass -dir", err)
		}
		dir = filepath.Join(cache, "concord", "etcd")
	}
	name, pkg, mod := "etcd", "go.etcd.io/etcd/server/v3", "go.etcd.io/etcd/server/v3"
	if ctl {
		name, pkg, mod = "etcdctl", "go.etcd.io/etcd/etcdctl/v3", "go.etcd.io/etcd/etcdctl/v3"
	}
	out := filepath.Join(dir, version, name)
	if ok, err := usable(ctx, out, version, ctl); err != nil || ok {
		return out, err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return "", err
	}
	// Builds of one version by concurrent callers (test packages that go
	// test runs in parallel) take turns; the second finds the first's binary.
	unlock, err := lockFile(ctx, out+".lock")
	if err != nil {
		return "", err
	}
	defer unlock()
	if ok, err := usable(ctx, out, version, ctl); err != nil || ok {
		return out, err
	}

	scratch, err := os.MkdirTemp("", "concord-etcdbin-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(scratch)
	gomod := "module concord.invalid/etcdbin\n\ngo 1.22\n"
	if err := os.WriteFile(filepath.Join(scratch, "go.mod"), []byte(gomod), 0o644); err != nil {
		return "", err
	}
	tmp := out + ".tmp"
	steps := [][]string{
		{"get", mod + "@" + version},
		{"build", "-trimpath", "-o", tmp, pkg},
	}
	for _, args := range steps {
		if err := goCmd(ctx, scratch, args...); err != nil {
			_ = os.Remove(tmp)
			return "", err
		}
	}
	if ok, err := usable(ctx, tmp, version, ctl); !ok {
		_ = os.Remove(tmp)
		if err == nil {
			err = errors.New("the built binary does not report its version")
		}
		return "", fmt.Errorf("built %s %s: %w", name, version, err)
	}
	// Rename is atomic: a reader sees no binary or a whole one.
	if err := os.Rename(tmp, out); err != nil {
		return "", err
	}
	return out, nil
}

// usable reports whether path is an executable that says it is version.
func usable(ctx context.Context, path, version string, ctl bool) (bool, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	vctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	arg := "--version"
	if ctl {
		arg = "version"
	}
	outb, err := exec.CommandContext(vctx, path, arg).CombinedOutput()
	if err != nil {
		return false, nil // rebuilt below
	}
	// etcd prints "etcd Version: 3.6.17"; etcdctl "etcdctl version: 3.6.17".
	return strings.Contains(strings.ToLower(string(outb)), "version: "+strings.TrimPrefix(version, "v")+"\n"), nil
}

func goCmd(ctx context.Context, dir string, args ...string) error {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	// CGO off: etcd's own releases are static, and the binary then runs on
	// any Linux without a C toolchain. GOWORK off: a go.work above the
	// scratch folder must not reach into this build. GOFLAGS is cleared so
	// that a caller's -mod=vendor or -tags do not change what is built.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=")
	cmd.Stdout = os.Stderr
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

// lockFile takes an exclusive flock on path, waiting until ctx ends.
func lockFile(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() {
				_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				_ = f.Close()
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			_ = f.Close()
			return nil, err
		}
		select {
		case <-ctx.Done():
			_ = f.Close()
			return nil, fmt.Errorf("waiting for another build of %s: %w", filepath.Dir(path), ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
