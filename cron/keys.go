package cron

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/concordkit/concord/internal/names"
)

const kind = "cron"

type keys struct{ prefix string }

func keysOf(name string) keys { return keys{prefix: names.Prefix(name, kind)} }

func (k keys) claim(job string) string   { return k.prefix + "claim/" + job }
func (k keys) status(job string) string  { return k.prefix + "status/" + job }
func (k keys) ctl() string               { return k.prefix + "ctl/" }
func (k keys) paused(job string) string  { return k.prefix + "ctl/" + job + "/paused" }
func (k keys) trigger(job string) string { return k.prefix + "ctl/" + job + "/trigger" }

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
	bad := func(why string) error { return fmt.Errorf("cron: invalid job name %q: %s", job, why) }
	switch {
	case job == "":
		return fmt.Errorf("cron: invalid job name: empty")
	case len(job) > MaxJobLen:
		return fmt.Errorf("cron: invalid job name (%d bytes): longer than %d bytes", len(job), MaxJobLen)
	case !utf8.ValidString(job):
		return bad("not valid UTF-8")
	case strings.ContainsRune(job, '/'):
		return bad("contains '/'")
	}
	for _, r := range job {
		if r < 0x20 || r == 0x7f {
			return bad("contains a control character")
		}
	}
	return nil
}
