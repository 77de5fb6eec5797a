package fence

import (
	"context"
	"strconv"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// MetadataKey is the gRPC metadata key that carries a fencing token, in
// decimal.
const MetadataKey = "concord-fencing-token"

// WithToken returns ctx with the fencing token in its outgoing gRPC
// metadata, for a call to a service fenced by UnaryServerInterceptor or
// StreamServerInterceptor. A token ctx already carried is replaced.
func WithToken(ctx context.Context, token int64) context.Context {
	md, _ := metadata.FromOutgoingContext(ctx)
	md = md.Copy()
	md.Set(MetadataKey, strconv.FormatInt(token, 10))
	return metadata.NewOutgoingContext(ctx, md)
}

// TokenFromContext reads the fencing token from a server call's incoming
// metadata: ErrNoToken if it is missing, repeated, or not a positive
// decimal integer.
func TokenFromContext(ctx context.Context) (int64, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	return parseToken(MetadataKey, md.Get(MetadataKey))
}

// UnaryServerInterceptor fences a gRPC server's unary calls with reg, as
// Handler does for HTTP: a call runs only if its token (MetadataKey) is at
// least the highest admitted for its resource, under that resource's mutex.
// resource names the resource a call acts on (nil: one for every call). A
// call without a valid token fails with codes.InvalidArgument, a stale one
// with codes.FailedPrecondition; the handler does not run.
func UnaryServerInterceptor(reg *Register, resource func(ctx context.Context, method string, req any) string) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		token, err := TokenFromContext(ctx)
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		res := ""
		if resource != nil {
			res = resource(ctx, info.FullMethod, req)
		}
		var (
			resp any
			herr error
			ran  bool
		)
		if err := reg.Do(res, token, func() error {
			ran = true
			resp, herr = handler(ctx, req)
			return nil
		}); !ran {
			return nil, status.Error(codes.FailedPrecondition, err.Error())
		}
		return resp, herr
	}
}

// StreamServerInterceptor fences a gRPC server's streams with reg: the token
// is checked when the stream opens, and the whole stream runs under its
// resource's mutex. resource names the resource from the method alone (nil:
// one for every stream). Refusals are those of UnaryServerInterceptor.
func StreamServerInterceptor(reg *Register, resource func(ctx context.Context, method string) string) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx := ss.Context()
		token, err := TokenFromContext(ctx)
		if err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
		res := ""
		if resource != nil {
			res = resource(ctx, info.FullMethod)
		}
		var herr error
		ran := false
		if err := reg.Do(res, token, func() error {
			ran = true
			herr = handler(srv, ss)
			return nil
		}); !ran {
			return status.Error(codes.FailedPrecondition, err.Error())
		}
		return herr
	}
}

// StatusErr returns an error that errors.Is ErrStale or ErrNoToken if err is
// a refusal by one of the interceptors, and nil otherwise.
func StatusErr(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return nil
	}
	for _, kind := range []error{ErrStale, ErrNoToken} {
		want := codes.FailedPrecondition
		if kind == ErrNoToken {
			want = codes.InvalidArgument
		}
		if st.Code() == want && strings.HasPrefix(st.Message(), kind.Error()) {
			return refusal{msg: st.Message(), kind: kind}
		}
	}
	return nil
}

// refusal is an interceptor's refusal seen by the client: its message is
// the server's, and it errors.Is its kind.
type refusal struct {
	msg  string
	kind error
}

func (r refusal) Error() string { return r.msg }
func (r refusal) Unwrap() error { return r.kind }
