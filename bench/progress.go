package main

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// progress prints where a run is on stderr, so a run of many minutes shows
// what it is doing (and where it stopped, if it fails), while stdout keeps
// only the figures for -json readers.
type progress struct {
	out   io.Writer
	start time.Time

	mu   sync.Mutex // protects name, gi, gn and writes to out
	name string     // the group running
	gi   int
	gn   int
}

func newProgress(out io.Writer) *progress { return &progress{out: out, start: time.Now()} }

// group says that group i of n starts.
func (p *progress) group(name string, i, n int) {
	p.mu.Lock()
	p.name, p.gi, p.gn = name, i+1, n
	p.mu.Unlock()
	p.printf("%s: start", name)
}

// round says that round r (from 0) of n of the figures labelled label
// starts; attempt > 0 is a retry.
func (p *progress) round(label string, r, n, attempt int) {
	if attempt > 0 {
		p.printf("%s round %d/%d, retry %d", label, r+1, n, attempt)
		return
	}
	p.printf("%s round %d/%d", label, r+1, n)
}

func (p *progress) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	el := time.Since(p.start).Truncate(time.Second)
	if p.gn > 0 {
		fmt.Fprintf(p.out, "bench: %8v [%d/%d %s] %s\n", el, p.gi, p.gn, p.name, fmt.Sprintf(format, args...))
		return
	}
	fmt.Fprintf(p.out, "bench: %8v %s\n", el, fmt.Sprintf(format, args...))
}
