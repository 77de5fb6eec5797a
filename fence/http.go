package fence

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// Header is the HTTP header that carries a fencing token, in decimal.
const Header = "Concord-Fencing-Token"

// RefusedHeader is set on Handler's refusals: "stale" or "no-token", so
// that a client can tell them from its service's own 409 and 400 answers.
const RefusedHeader = "Concord-Fencing-Refused"

// HighestHeader is set on a refusal of a stale token: the highest token the
// resource admitted.
const HighestHeader = "Concord-Fencing-Highest"

// SetToken sets the fencing token on the headers of an outgoing request.
func SetToken(h http.Header, token int64) { h.Set(Header, strconv.FormatInt(token, 10)) }

// TokenFrom reads the fencing token from request headers: ErrNoToken if it
// is missing, repeated, or not a positive decimal integer.
func TokenFrom(h http.Header) (int64, error) { return parseToken(Header, h.Values(Header)) }

// parseToken reads a token from the values of header or metadata key name.
func parseToken(name string, vs []string) (int64, error) {
	if len(vs) != 1 {
		return 0, fmt.Errorf("%w: want one %s, got %d", ErrNoToken, name, len(vs))
	}
	v := strings.TrimSpace(vs[0])
	token, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: %s %q is not a decimal integer", ErrNoToken, name, v)
	}
	if err := checkToken(token); err != nil {
		return 0, err
	}
	return token, nil
}

// Handler fences next with reg: a request runs only if its token (Header)
// is at least the highest admitted for its resource, and runs under that
// resource's mutex (Register.Do). resource names the resource a request
// acts on (nil: one resource for every request). A request without a valid
// token gets 400 Bad Request; a stale one gets 409 Conflict with
// HighestHeader; both carry RefusedHeader, and next does not run. Both answers have a plain-text body
// that starts with "fence:".
func Handler(reg *Register, resource func(*http.Request) string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, err := TokenFrom(r.Header)
		if err != nil {
			w.Header().Set(RefusedHeader, "no-token")
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		res := ""
		if resource != nil {
			res = resource(r)
		}
		err = reg.Do(res, token, func() error {
			next.ServeHTTP(w, r)
			return nil
		})
		if errors.Is(err, ErrStale) {
			w.Header().Set(RefusedHeader, "stale")
			w.Header().Set(HighestHeader, strconv.FormatInt(reg.Highest(res), 10))
			http.Error(w, err.Error(), http.StatusConflict)
		}
	})
}

// ResponseErr returns an error that errors.Is ErrStale if resp is a
// Handler's refusal of a stale token, ErrNoToken if it is a refusal of a
// missing or invalid one, and nil otherwise. It does not read the body.
func ResponseErr(resp *http.Response) error {
	switch resp.Header.Get(RefusedHeader) {
	case "stale":
		return fmt.Errorf("%w: the service admitted token %s already", ErrStale, resp.Header.Get(HighestHeader))
	case "no-token":
		return fmt.Errorf("%w: refused by the service", ErrNoToken)
	}
	return nil
}
