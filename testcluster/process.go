package testcluster

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

// process is one etcd member running as a child process of the test binary.
//
// A test binary that is killed (a `go test -timeout` panic, SIGKILL, a
// crash) must not leave etcd processes behind: each child gets the parent
// death signal (Linux PR_SET_PDEATHSIG), which the kernel sends when the
// thread that started the child exits. The starting goroutine therefore
// keeps its OS thread locked for the child's whole life, so the Go runtime
// can neither reuse that thread for anything else nor end it early.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed when the process has exited; err is set before
	err    error

	mu     sync.Mutex // protects paused
	paused bool
}

func startProcess(bin string, args []string, logPath string) (*process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	p := &process{exited: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer logf.Close()
		cmd := exec.Command(bin, args...)
		cmd.Stdout = logf
		cmd.Stderr = logf
		cmd.SysProcAttr = deathSignal()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		p.cmd = cmd
		started <- nil
		p.err = cmd.Wait()
		close(p.exited)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

func (p *process) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

func (p *process) signal(sig syscall.Signal) {
	if p.running() {
		_ = p.cmd.Process.Signal(sig)
	}
}

// stop ends the process: SIGKILL if hard, otherwise SIGTERM (etcd then
// hands leadership over and closes cleanly), with SIGKILL after grace.
func (p *process) stop(hard bool, grace time.Duration) {
	if hard {
		p.signal(syscall.SIGKILL)
	} else {
		p.signal(syscall.SIGTERM)
	}
	// A stopped process handles neither signal until it runs again (SIGKILL
	// excepted).
	p.setPaused(false)
	p.signal(syscall.SIGCONT)
	select {
	case <-p.exited:
		return
	case <-time.After(grace):
	}
	p.signal(syscall.SIGKILL)
	<-p.exited
}

func (p *process) pause() {
	p.setPaused(true)
	p.signal(syscall.SIGSTOP)
}

func (p *process) resume() {
	p.setPaused(false)
	p.signal(syscall.SIGCONT)
}

func (p *process) setPaused(v bool) {
	p.mu.Lock()
	p.paused = v
	p.mu.Unlock()
}

func (p *process) isPaused() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.paused
}

// logTail returns the last n lines of a member's log, for error messages.
func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

var versionLine = regexp.MustCompile(`(?m)^etcd Version: (\S+)$`)

// binaryVersion runs `etcd --version` and returns the server version, such as
// "3.6.17".
func binaryVersion(ctx context.Context, bin string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "--version")
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("testcluster: %s --version: %w: %s", bin, err, firstLine(out.String()))
	}
	m := versionLine.FindStringSubmatch(out.String())
	if m == nil {
		return "", fmt.Errorf("testcluster: %s --version printed no etcd version: %s", bin, firstLine(out.String()))
	}
	return m[1], nil
}

func firstLine(s string) string {
	sc := bufio.NewScanner(strings.NewReader(s))
	if sc.Scan() {
		return sc.Text()
	}
	return ""
}

var errProcessOnly = errors.New("testcluster: member pause needs process mode (CONCORD_ETCD or WithBinary): an embedded member shares the test's process and cannot be stopped alone")
