package grpcwire

import (
	"testing"

	"google.golang.org/grpc/codes"
)

// TestCodesMatchGRPC: Code has grpc-go's values and names (meshlet's metrics label values and errors name them).
func TestCodesMatchGRPC(t *testing.T) {
	for c := uint32(0); c <= 20; c++ {
		if got, want := Code(c).String(), codes.Code(c).String(); got != want {
			t.Errorf("Code(%d).String() = %q, want %q (grpc-go's)", c, got, want)
		}
	}
	for _, tc := range []struct {
		ours   Code
		theirs codes.Code
	}{{OK, codes.OK}, {Canceled, codes.Canceled}, {Unknown, codes.Unknown}, {InvalidArgument, codes.InvalidArgument},
		{DeadlineExceeded, codes.DeadlineExceeded}, {NotFound, codes.NotFound}, {AlreadyExists, codes.AlreadyExists},
		{PermissionDenied, codes.PermissionDenied}, {ResourceExhausted, codes.ResourceExhausted},
		{FailedPrecondition, codes.FailedPrecondition}, {Aborted, codes.Aborted}, {OutOfRange, codes.OutOfRange},
		{Unimplemented, codes.Unimplemented}, {Internal, codes.Internal}, {Unavailable, codes.Unavailable},
		{DataLoss, codes.DataLoss}, {Unauthenticated, codes.Unauthenticated}} {
		if uint32(tc.ours) != uint32(tc.theirs) {
			t.Errorf("%v = %d, grpc-go's %v = %d", tc.ours, tc.ours, tc.theirs, tc.theirs)
		}
	}
}
