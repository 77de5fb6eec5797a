package testcluster

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// Ports for members are reserved, not merely probed. Peer URLs must be known
// before a member starts (they go into InitialCluster), so port 0 cannot be
// used, and "bind, read the port, close" races with every other test binary
// that `go test ./...` runs in parallel. A reservation is an exclusive flock on
// a file named after the port in a shared temp folder, held for the life of the
// cluster: two processes using this package never pick the same port. Ports
// are drawn below the kernel's ephemeral range (32768+ on Linux), so outgoing
// connections of unrelated programs do not take them either; a bind check
// before use catches any other program listening there.

const (
	portLow  = 20000
	portHigh = 32000
)

type portReservation struct {
	port int
	file *os.File
}

func (r *portReservation) release() {
	if r.file != nil {
		_ = syscall.Flock(int(r.file.Fd()), syscall.LOCK_UN)
		_ = r.file.Close()
		r.file = nil
	}
}

func reservePort() (*portReservation, error) {
	dir := filepath.Join(os.TempDir(), "concord-testcluster-ports")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return nil, fmt.Errorf("testcluster: port reservation folder: %w", err)
	}
	for range 200 {
		port := portLow + rand.IntN(portHigh-portLow)
		f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(port)), os.O_CREATE|os.O_RDWR, 0o666)
		if err != nil {
			return nil, fmt.Errorf("testcluster: port reservation: %w", err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			_ = f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				continue
			}
			return nil, fmt.Errorf("testcluster: port reservation: %w", err)
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
			_ = f.Close()
			continue
		}
		_ = ln.Close()
		return &portReservation{port: port, file: f}, nil
	}
	return nil, errors.New("testcluster: no free port found in 200 tries")
}
