package appcheck

// The gRPC health check's one unary call, grpc.health.v1.Health/Check, spoken over HTTP/2 directly ("gRPC over
// HTTP2" and grpc/health/v1/health.proto): grpc-go was 4.3 MB of meshlet's 17.9 MB binary for this one call,
// and the pages of its own binary that a meshlet maps are most of its idle RSS. The request is one optional
// string field, the answer one enum field; both are encoded here by hand. The errors read as grpc-go's did: the
// status code's name and its message ("NotFound: unknown service").

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"golang.org/x/net/http2"

	"meshlet.dev/meshlet/grpcwire"
)

// healthCheckPath is the method's path: /package.Service/Method.
const healthCheckPath = "/grpc.health.v1.Health/Check"

// maxHealthResponse bounds the answer's message (an enum field: 2 bytes).
const maxHealthResponse = 64 << 10

// servingStatus is grpc.health.v1.HealthCheckResponse.ServingStatus.
type servingStatus int32

const (
	servingStatusUnknown        servingStatus = 0
	servingStatusServing        servingStatus = 1
	servingStatusNotServing     servingStatus = 2
	servingStatusServiceUnknown servingStatus = 3 // only Watch answers it, but a server may
)

// String is the enum value's name in health.proto, or its number for a value the proto does not name (as
// protobuf's generated String does).
func (s servingStatus) String() string {
	switch s {
	case servingStatusUnknown:
		return "UNKNOWN"
	case servingStatusServing:
		return "SERVING"
	case servingStatusNotServing:
		return "NOT_SERVING"
	case servingStatusServiceUnknown:
		return "SERVICE_UNKNOWN"
	}
	return strconv.Itoa(int(s))
}

// callError is a failed call: its gRPC status (the server's grpc-status, or the code a gRPC client gives the
// failure) and message.
type callError struct {
	code grpcwire.Code
	msg  string
}

func (e *callError) Error() string { return e.code.String() + ": " + e.msg }

// healthCheck calls Health/Check for service ("": the server's overall health) at addr on a connection of its
// own, closed before it returns, within ctx. It returns the answered status, or a *callError.
func healthCheck(ctx context.Context, addr, service string) (servingStatus, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+healthCheckPath,
		bytes.NewReader(healthRequest(service)))
	if err != nil {
		return 0, &callError{grpcwire.Internal, err.Error()}
	}
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	req.Header.Set("User-Agent", "meshlet app check")
	if deadline, ok := ctx.Deadline(); ok {
		req.Header.Set(grpcwire.HeaderTimeout, grpcwire.EncodeTimeout(time.Until(deadline)))
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, transportError(ctx, err)
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		conn.SetDeadline(deadline) // the connection's own bound, besides the request's context
	}
	cc, err := (&http2.Transport{}).NewClientConn(conn)
	if err != nil {
		return 0, transportError(ctx, err)
	}
	defer cc.Close()
	resp, err := cc.RoundTrip(req)
	if err != nil {
		return 0, transportError(ctx, err)
	}
	defer resp.Body.Close()
	return readHealthResponse(ctx, resp)
}

// readHealthResponse reads the call's answer: its status (trailers-only, or a message and then the trailers) and
// the HealthCheckResponse in its message.
func readHealthResponse(ctx context.Context, resp *http.Response) (servingStatus, error) {
	if err := responseHeadError(resp); err != nil {
		return 0, err
	}
	if _, ok := resp.Header[grpcwire.HeaderStatus]; ok { // trailers-only: a status and no message
		if err := statusError(resp.Header); err != nil {
			return 0, err
		}
		return 0, &callError{grpcwire.Internal, "received no response message"}
	}
	msg, err := readMessage(resp.Body)
	if err != nil && !errors.Is(err, io.EOF) {
		return 0, transportError(ctx, err)
	}
	// The trailers come after the body's end; a second message would be the server's mistake.
	more, rerr := io.Copy(io.Discard, io.LimitReader(resp.Body, maxHealthResponse))
	if rerr != nil {
		return 0, transportError(ctx, rerr)
	}
	if _, ok := resp.Trailer[grpcwire.HeaderStatus]; !ok {
		return 0, &callError{grpcwire.Internal, "server closed the stream without sending trailers"}
	}
	if err := statusError(resp.Trailer); err != nil {
		return 0, err
	}
	switch {
	case msg == nil:
		return 0, &callError{grpcwire.Internal, "received no response message"}
	case more > 0:
		return 0, &callError{grpcwire.Internal, "received more than one response message"}
	}
	st, err := parseHealthResponse(msg)
	if err != nil {
		return 0, &callError{grpcwire.Internal, "failed to unmarshal the response: " + err.Error()}
	}
	return st, nil
}

// healthRequest is the length-prefixed HealthCheckRequest{service}: field 1, a string, left out when empty.
func healthRequest(service string) []byte {
	b := make([]byte, 5, 5+1+binary.MaxVarintLen64+len(service))
	if service != "" {
		b = append(b, 1<<3|2) // field 1, length-delimited
		b = binary.AppendUvarint(b, uint64(len(service)))
		b = append(b, service...)
	}
	binary.BigEndian.PutUint32(b[1:5], uint32(len(b)-5)) // b[0] = 0: not compressed
	return b
}

// responseHeadError is the error of a response that is not a gRPC answer (not HTTP 200 or not application/grpc),
// with the code a gRPC client gives it from the HTTP status; nil for a gRPC answer.
func responseHeadError(resp *http.Response) error {
	if resp.StatusCode == http.StatusOK && grpcwire.IsGRPC(resp.Header) {
		return nil
	}
	code := grpcwire.Unknown
	switch resp.StatusCode {
	case http.StatusBadRequest:
		code = grpcwire.Internal
	case http.StatusUnauthorized:
		code = grpcwire.Unauthenticated
	case http.StatusForbidden:
		code = grpcwire.PermissionDenied
	case http.StatusNotFound:
		code = grpcwire.Unimplemented
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		code = grpcwire.Unavailable
	}
	if resp.StatusCode != http.StatusOK {
		return &callError{code, fmt.Sprintf("unexpected HTTP status code received from server: %d (%s)",
			resp.StatusCode, http.StatusText(resp.StatusCode))}
	}
	return &callError{code, fmt.Sprintf("unexpected content-type %q", resp.Header.Get("Content-Type"))}
}

// statusError is the error of the grpc-status and grpc-message in h (headers or trailers), nil for OK.
func statusError(h http.Header) error {
	code := grpcwire.ParseStatus(h.Get(grpcwire.HeaderStatus))
	if code == grpcwire.OK {
		return nil
	}
	return &callError{code, grpcwire.DecodeMessage(h.Get(grpcwire.HeaderMessage))}
}

// readMessage reads one length-prefixed message from body: nil and io.EOF at the body's end before one.
func readMessage(body io.Reader) ([]byte, error) {
	var prefix [5]byte
	if _, err := io.ReadFull(body, prefix[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, &callError{grpcwire.Internal, "response ends inside a message's prefix"}
		}
		return nil, err
	}
	if prefix[0] != 0 { // the request offered no compression (no grpc-accept-encoding)
		return nil, &callError{grpcwire.Internal, "compressed response message, none was accepted"}
	}
	n := binary.BigEndian.Uint32(prefix[1:])
	if n > maxHealthResponse {
		return nil, &callError{grpcwire.ResourceExhausted,
			fmt.Sprintf("response message of %d bytes, larger than %d", n, maxHealthResponse)}
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(body, msg); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, &callError{grpcwire.Internal, "response ends inside a message"}
		}
		return nil, err
	}
	return msg, nil
}

// parseHealthResponse decodes HealthCheckResponse: field 1, the status, a varint; other fields are skipped (a
// newer server's), a repeated field 1 counts last, as protobuf decodes it.
func parseHealthResponse(b []byte) (servingStatus, error) {
	var st servingStatus
	for len(b) > 0 {
		tag, n := binary.Uvarint(b)
		if n <= 0 || tag>>3 == 0 {
			return 0, errors.New("malformed field tag")
		}
		b = b[n:]
		switch tag & 7 {
		case 0: // varint
			v, n := binary.Uvarint(b)
			if n <= 0 {
				return 0, errors.New("malformed varint")
			}
			b = b[n:]
			if tag>>3 == 1 {
				st = servingStatus(int32(v))
			}
		case 1: // 64-bit
			if len(b) < 8 {
				return 0, errors.New("truncated fixed64")
			}
			b = b[8:]
		case 2: // length-delimited
			l, n := binary.Uvarint(b)
			if n <= 0 || l > uint64(len(b)-n) {
				return 0, errors.New("malformed length-delimited field")
			}
			b = b[n+int(l):]
		case 5: // 32-bit
			if len(b) < 4 {
				return 0, errors.New("truncated fixed32")
			}
			b = b[4:]
		default:
			return 0, fmt.Errorf("unsupported wire type %d", tag&7)
		}
	}
	return st, nil
}

// transportError is the *callError of a call that got no gRPC status (the connection failed, the stream was
// reset, ctx ended), with the code a gRPC client gives it.
func transportError(ctx context.Context, err error) error {
	var ce *callError
	if errors.As(err, &ce) {
		return ce
	}
	if cerr := ctx.Err(); cerr != nil {
		code := grpcwire.Canceled
		if errors.Is(cerr, context.DeadlineExceeded) {
			code = grpcwire.DeadlineExceeded
		}
		return &callError{code, cerr.Error()}
	}
	var se http2.StreamError
	if errors.As(err, &se) {
		code := grpcwire.Internal
		switch se.Code {
		case http2.ErrCodeRefusedStream:
			code = grpcwire.Unavailable
		case http2.ErrCodeCancel:
			code = grpcwire.Canceled
		case http2.ErrCodeEnhanceYourCalm:
			code = grpcwire.ResourceExhausted
		case http2.ErrCodeInadequateSecurity:
			code = grpcwire.PermissionDenied
		}
		return &callError{code, "stream reset: " + err.Error()}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return &callError{grpcwire.DeadlineExceeded, err.Error()}
	}
	return &callError{grpcwire.Unavailable, err.Error()}
}
