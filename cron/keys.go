package cron

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/concordkit/concord/internal/names"
)

const kind = "cron"

type keys struct{ prefix string }

func keysOf(name string) keys { return keys{prefix: names.Prefix(name, kind)} }

func (k keys) claim(job string) string   { return k.prefix + "claim/" + job }
func (k keys) status(job string) string  { return k.prefix + "status/" + job }
func (k keys) ctl() string               { return k.prefix + "ctl/" }
func (k keys) doneDir(job string) string { return k.prefix + "done/" + job + "/" }
func (k keys) ctlDir(job string) string  { return k.prefix + "ctl/" + job + "/" }
func (k keys) defs() string              { return k.prefix + "def/" }
func (k keys) def(job string) string     { return k.prefix + "def/" + job }

// parseDef returns the job of a key under defs().
func (k keys) parseDef(key string) (string, bool) {
	job, ok := strings.CutPrefix(key, k.defs())
	return job, ok && validateJob(job) == nil
}

// followEnd ends the range the leader watches, from ctl() on: the control
// records and the definitions, which sort next to each other ("ctl/" <
// "def/" < "def0"), and nothing else of the scheduler's.
func (k keys) followEnd() string { return k.prefix + "def0" }

// done is the commit record of a scheduled time (or, with trigger set, of a
// trigger's time). The time is written as 19 digits, so that keys sort in
// time order and a range below a time's key holds exactly the earlier times.
func (k keys) done(job string, t time.Time, trigger bool) string {
	kind := "s"
	if trigger {
		kind = "t"
	}
	return fmt.Sprintf("%s%s%019d", k.doneDir(job), kind, t.UnixNano())
}

// parseDone splits a key under done/ into its job, time and kind.
func (k keys) parseDone(key string) (job string, t time.Time, trigger, ok bool) {
	rest, ok := strings.CutPrefix(key, k.prefix+"done/")
	if !ok {
		return "", time.Time{}, false, false
	}
	i := strings.LastIndexByte(rest, '/')
	if i <= 0 || len(rest)-i-1 != 20 {
		return "", time.Time{}, false, false
	}
	job, ts := rest[:i], rest[i+1:]
	if validateJob(job) != nil || ts[0] != 's' && ts[0] != 't' {
		return "", time.Time{}, false, false
	}
	for _, c := range ts[1:] {
		if c < '0' || c > '9' {
			return "", time.Time{}, false, false
		}
	}
	ns, err := strconv.ParseInt(ts[1:], 10, 64)
	if err != nil || ns <= 0 {
		return "", time.Time{}, false, false
	}
	return job, time.Unix(0, ns), ts[0] == 't', true
}
func (k keys) paused(job string) string  { return k.ctlDir(job) + "paused" }
func (k keys) trigger(job string) string { return k.ctlDir(job) + "trigger" }

// parseCtl splits a key under ctl() into its job and kind ("paused" or
// "trigger").
func (k keys) parseCtl(key string) (job, what string, ok bool) {
	rest, ok := strings.CutPrefix(key, k.ctl())
	if !ok {
		return "", "", false
	}
	i := strings.LastIndexByte(rest, '/')
	if i <= 0 {
		return "", "", false
	}
	job, what = rest[:i], rest[i+1:]
	if what != "paused" && what != "trigger" || validateJob(job) != nil {
		return "", "", false
	}
	return job, what, true
}

// MaxJobLen is the longest job name accepted, in bytes.
const MaxJobLen = 256

func validateJob(job string) error {
	return names.ValidateSegment("cron", "job name", job, MaxJobLen)
}
