package proxy

import (
	"context"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
)

type benchTestService struct {
	testgrpc.UnimplementedTestServiceServer
}

func (benchTestService) UnaryCall(_ context.Context, in *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	return &testgrpc.SimpleResponse{Payload: &testgrpc.Payload{Body: make([]byte, 64)}}, nil
}

// BenchmarkProxyGRPC measures a unary gRPC call through one in-process proxy to a grpc-go server.
func BenchmarkProxyGRPC(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(srv, benchTestService{})
	go srv.Serve(ln)
	defer srv.Stop()

	cfg := Config{Service: ServiceConfig{Name: "bench"}, Upstreams: []UpstreamConfig{{
		Name: "api", Listen: "127.0.0.1:0", Protocol: ProtocolGRPC, Endpoints: []string{ln.Addr().String()}}}}
	p, _ := startProxy(b, cfg)
	conn, err := grpc.NewClient(p.Addrs()["upstream/api"], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	client := testgrpc.NewTestServiceClient(conn)
	req := &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: make([]byte, 64)}}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := client.UnaryCall(context.Background(), req); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
