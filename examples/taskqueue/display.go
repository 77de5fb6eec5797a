package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"
)

// display shows what happens: on a terminal, one progress bar per running
// task under a bar of all tasks, with the story printed above them; anywhere
// else (a pipe, a file, a test), plain time-stamped lines.
type display struct {
	start time.Time
	mu    sync.Mutex // serializes plain output
	out   io.Writer
	p     *mpb.Progress // nil: plain lines
	all   *mpb.Bar
}

func newDisplay(out io.Writer, total int, plain bool) *display {
	d := &display{start: time.Now(), out: out}
	if f, ok := out.(*os.File); ok && !plain && term.IsTerminal(int(f.Fd())) {
		d.p = mpb.New(mpb.WithOutput(out), mpb.WithWidth(40), mpb.WithRefreshRate(100*time.Millisecond))
		d.all = d.p.AddBar(int64(total),
			mpb.PrependDecorators(decor.Name("all tasks        ", decor.WC{W: 28, C: decor.DindentRight})),
			mpb.AppendDecorators(decor.CountersNoUnit("%d / %d finished")))
	}
	return d
}

// say prints one line of the story.
func (d *display) say(format string, args ...any) {
	line := fmt.Sprintf("%6.2fs  %s\n", time.Since(d.start).Seconds(), fmt.Sprintf(format, args...))
	if d.p != nil {
		_, _ = d.p.Write([]byte(line))
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	_, _ = io.WriteString(d.out, line)
}

// taskView is the progress of one attempt at one task.
type taskView struct {
	d           *display
	worker      string
	task        string
	steps, last int
	bar         *mpb.Bar
}

func (d *display) attempt(worker, task string, steps, from int) *taskView {
	v := &taskView{d: d, worker: worker, task: task, steps: steps, last: from}
	if d.p != nil {
		v.bar = d.p.AddBar(int64(steps), mpb.BarRemoveOnComplete(),
			mpb.PrependDecorators(decor.Name(fmt.Sprintf("%s  %s", worker, task), decor.WC{W: 28, C: decor.DindentRight})),
			mpb.AppendDecorators(decor.Percentage()))
		v.bar.SetCurrent(int64(from))
	}
	return v
}

// step reports that steps up to n are done. Plain output shows each
// quarter, so that a log stays short.
func (v *taskView) step(n int) {
	if v.bar != nil {
		v.bar.SetCurrent(int64(n))
		return
	}
	quarter := func(i int) int { return i * 4 / v.steps }
	if n < v.steps && quarter(n) > quarter(v.last) {
		v.d.say("%s  %-16s %s %3d%%  (step %d of %d)", v.worker, v.task, bar(n, v.steps, 20), n*100/v.steps, n, v.steps)
	}
	v.last = n
}

// end removes the attempt's bar; finished counts it as one task done (or
// dead) in the bar of all tasks.
func (v *taskView) end(finished bool) {
	if v.bar != nil && !v.bar.Completed() {
		v.bar.Abort(true)
	}
	if finished && v.d.all != nil {
		v.d.all.Increment()
	}
}

func (d *display) close() {
	if d.p != nil {
		d.p.Shutdown()
	}
}

func bar(n, total, width int) string {
	k := n * width / total
	return "[" + strings.Repeat("#", k) + strings.Repeat(".", width-k) + "]"
}
