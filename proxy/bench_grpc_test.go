package proxy

import (
	"context"
	"io"
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

// startGRPCBenchBackend serves benchTestService with grpc-go until the benchmark ends; it returns its address.
func startGRPCBenchBackend(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(srv, benchTestService{})
	go srv.Serve(ln)
	b.Cleanup(srv.Stop)
	return ln.Addr().String()
}

// grpcThroughProxy starts an in-process proxy with a gRPC upstream to backend and returns a client of it.
func grpcThroughProxy(b *testing.B, backend string) testgrpc.TestServiceClient {
	cfg := Config{Service: ServiceConfig{Name: "bench"}, Upstreams: []UpstreamConfig{{
		Name: "api", Listen: "127.0.0.1:0", Protocol: ProtocolGRPC, Endpoints: []string{backend}}}}
	p, _ := startProxy(b, cfg)
	conn, err := grpc.NewClient(p.Addrs()["upstream/api"], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return testgrpc.NewTestServiceClient(conn)
}

// BenchmarkProxyGRPC measures a unary gRPC call through one in-process proxy to a grpc-go server.
func BenchmarkProxyGRPC(b *testing.B) {
	client := grpcThroughProxy(b, startGRPCBenchBackend(b))
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

func (benchTestService) StreamingOutputCall(in *testgrpc.StreamingOutputCallRequest, stream testgrpc.TestService_StreamingOutputCallServer) error {
	for _, p := range in.ResponseParameters {
		if err := stream.Send(&testgrpc.StreamingOutputCallResponse{Payload: &testgrpc.Payload{Body: make([]byte, p.Size)}}); err != nil {
			return err
		}
	}
	return nil
}

// BenchmarkProxyGRPCStreaming measures a server-streaming gRPC call (1,000 messages of 1 KiB) through one
// in-process proxy, with the listeners' HTTP/2 served by net/http's server and by h2Conn (issue 16: streaming no
// worse than before): compare the two in one run.
func BenchmarkProxyGRPCStreaming(b *testing.B) {
	backend := startGRPCBenchBackend(b)
	req := &testgrpc.StreamingOutputCallRequest{}
	for range 1000 {
		req.ResponseParameters = append(req.ResponseParameters, &testgrpc.ResponseParameters{Size: 1024})
	}
	defer func(v bool) { useH2Server = v }(useH2Server)
	for _, server := range []struct {
		name string
		own  bool
	}{{"net-http", false}, {"h2Conn", true}} {
		b.Run(server.name, func(b *testing.B) {
			useH2Server = server.own
			client := grpcThroughProxy(b, backend)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				stream, err := client.StreamingOutputCall(context.Background(), req)
				if err != nil {
					b.Fatal(err)
				}
				n := 0
				for {
					if _, err := stream.Recv(); err != nil {
						if err != io.EOF {
							b.Fatal(err)
						}
						break
					}
					n++
				}
				if n != 1000 {
					b.Fatalf("%d messages, want 1000", n)
				}
			}
		})
	}
}
