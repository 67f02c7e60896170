package proxy

import (
	"net/http"

	"google.golang.org/grpc/codes"
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
	return codes.Code(code).String()
}

// grpcCodeForHTTP maps the HTTP status meshlet would have answered to the gRPC code it answers instead.
func grpcCodeForHTTP(status int) codes.Code {
	switch status {
	case http.StatusGatewayTimeout:
		return codes.DeadlineExceeded
	case http.StatusNotFound, http.StatusMethodNotAllowed:
		return codes.Unimplemented
	case http.StatusBadRequest:
		return codes.Internal
	case http.StatusTooManyRequests:
		return codes.ResourceExhausted
	case http.StatusForbidden:
		return codes.PermissionDenied
	default:
		return codes.Unavailable
	}
}
