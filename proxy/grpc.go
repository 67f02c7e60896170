package proxy

import (
	"net/http"

	"meshlet.dev/meshlet/grpcwire"
)

// notGRPC stands for "no gRPC status" where a gRPC code is expected.
const notGRPC = -1

// grpcCodeSlots is the number of gRPC code values meshlet tells apart: notGRPC and codes 0…16.
const grpcCodeSlots = 18

// grpcCodeName returns the label value of a gRPC code: "" for notGRPC, else the code's name ("OK", "Unavailable").
func grpcCodeName(code int) string {
	if code == notGRPC {
		return ""
	}
	return grpcwire.Code(code).String()
}

// grpcCodeForHTTP maps the HTTP status meshlet would have answered to the gRPC code it answers instead.
func grpcCodeForHTTP(status int) grpcwire.Code {
	switch status {
	case http.StatusGatewayTimeout:
		return grpcwire.DeadlineExceeded
	case http.StatusNotFound, http.StatusMethodNotAllowed:
		return grpcwire.Unimplemented
	case http.StatusBadRequest:
		return grpcwire.Internal
	case http.StatusTooManyRequests:
		return grpcwire.ResourceExhausted
	case http.StatusForbidden:
		return grpcwire.PermissionDenied
	default:
		return grpcwire.Unavailable
	}
}
