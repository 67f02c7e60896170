package proxy

import (
	"io"
	"net"
	"testing"
)

// BenchmarkTCPTransfer measures one 1 GiB transfer per iteration through a TCP upstream of an in-process proxy,
// from a loopback client to a loopback sink (the path that splices between two TCP connections). Run it with
// -benchtime Nx; b.SetBytes makes the figure MB/s.
func BenchmarkTCPTransfer(b *testing.B) {
	const size = 1 << 30
	sink, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	go func() {
		for {
			c, err := sink.Accept()
			if err != nil {
				return
			}
			go func() {
				io.Copy(io.Discard, c)
				c.Close()
			}()
		}
	}()
	cfg := Config{Service: ServiceConfig{Name: "bench"}, Upstreams: []UpstreamConfig{{
		Name: "raw", Listen: "127.0.0.1:0", Protocol: ProtocolTCP, Endpoints: []string{sink.Addr().String()}}}}
	p, _ := startProxy(b, cfg)
	addr := p.Addrs()["upstream/raw"]
	buf := make([]byte, 256<<10)
	b.SetBytes(size)
	b.ResetTimer()
	for range b.N {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		for sent := 0; sent < size; sent += len(buf) {
			if _, err := c.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		c.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, c) // the sink closes after reading everything: the transfer is complete
		c.Close()
	}
}
