package meshlettest

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// StartBackend starts an httptest server on loopback. With h2c it accepts HTTP/1.1 and prior-knowledge h2c.
// newConns, if not nil, counts accepted connections. It is closed when the test ends.
func StartBackend(t testing.TB, h http.Handler, h2c bool, newConns *atomic.Int64) *httptest.Server {
	t.Helper()
	s := httptest.NewUnstartedServer(h)
	if h2c {
		s.Config.Protocols = H2CProtocols()
	}
	if newConns != nil {
		s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
			if st == http.StateNew {
				newConns.Add(1)
			}
		}
	}
	s.Start()
	t.Cleanup(s.Close)
	return s
}

// H2CProtocols is HTTP/1.1 and unencrypted HTTP/2, for servers that take prior-knowledge h2c too.
func H2CProtocols() *http.Protocols {
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	return &p
}

// HostOf returns host:port of an httptest server.
func HostOf(s *httptest.Server) string { return s.Listener.Addr().String() }

// StartGRPC serves grpc.testing.TestService srv, and whatever register adds (may be nil), on a loopback port; the
// server stops when the test ends. It returns the address and the server.
func StartGRPC(t testing.TB, srv testpb.TestServiceServer, register func(*grpc.Server)) (string, *grpc.Server) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	testpb.RegisterTestServiceServer(s, srv)
	if register != nil {
		register(s)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Serve(l)
	}()
	t.Cleanup(func() {
		s.Stop()
		<-done
	})
	return l.Addr().String(), s
}

// CountingDialer returns a DialContext that counts dials in n.
func CountingDialer(n *atomic.Int64) func(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		n.Add(1)
		return d.DialContext(ctx, network, addr)
	}
}

// H1Client is an HTTP/1.1 client with at most one connection per host; dials (may be nil) counts its dials.
func H1Client(dials *atomic.Int64) *http.Client {
	if dials == nil {
		dials = new(atomic.Int64)
	}
	tr := &http.Transport{
		DialContext:         CountingDialer(dials),
		MaxConnsPerHost:     1,
		MaxIdleConnsPerHost: 1,
		DisableCompression:  true,
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// H2CClient is a prior-knowledge HTTP/2 cleartext client; dials (may be nil) counts its dials.
func H2CClient(dials *atomic.Int64) *http.Client {
	if dials == nil {
		dials = new(atomic.Int64)
	}
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{
		Protocols:          &p,
		DialContext:        CountingDialer(dials),
		DisableCompression: true,
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// GetBody does a GET and returns status and body (Do).
func GetBody(t testing.TB, c *http.Client, url string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return Do(t, c, req)
}

// Do sends req with c and returns status and body; a failed request or body read fails the test.
func Do(t testing.TB, c *http.Client, req *http.Request) (int, string) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", req.Method, req.URL, err)
	}
	return resp.StatusCode, string(b)
}

// RawRequest writes req (a complete HTTP/1.1 request) on a new connection to addr and returns the parsed response
// with its body read.
func RawRequest(t testing.TB, addr, req string) (*http.Response, string) {
	t.Helper()
	c := DialHeld(t, addr)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading response to %q: %v", req, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// Answers writes req on c and reads up to most answers to it (bodies read and closed), until a read fails. It returns
// the answers, the reader (for what comes after them) and the error that ended the reading (nil once most were read:
// io.EOF or a reset when meshlet closed the connection, a timeout when it kept it open past c's deadline). The
// write runs beside the reads and its error is ignored on purpose: meshlet may answer, and close, before it has read
// all of req, and the answer still counts.
func Answers(c net.Conn, req string, most int) ([]*http.Response, *bufio.Reader, error) {
	go io.WriteString(c, req)
	br := bufio.NewReader(c)
	var out []*http.Response
	for len(out) < most {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return out, br, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		out = append(out, resp)
	}
	return out, br, nil
}

// RawExchange writes req on a new connection to addr (10 s deadline), reads one answer (nil if the connection
// closed first; no answer within the deadline, a hang, fails the test) and reports whether meshlet closed the
// connection after it: a read then sees EOF or a reset within 3 s, not a timeout.
func RawExchange(t testing.TB, addr, req string) (resp *http.Response, closed bool) {
	t.Helper()
	c := DialHeld(t, addr)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	answers, br, err := Answers(c, req, 1)
	if err != nil {
		if IsTimeout(err) {
			t.Fatalf("no answer within the deadline (hang) to %.80q", req)
		}
		return nil, true
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, err = br.ReadByte()
	return answers[0], err != nil && !IsTimeout(err)
}

// IsTimeout reports whether err is a network timeout (a deadline passed).
func IsTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// DialHeld opens a TCP connection to addr that stays open until the test ends (or the caller closes it).
func DialHeld(t testing.TB, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TLSGet sends `GET path` (Host: api, Connection: close) over a new TLS connection to addr made with cfg (5 s to
// connect, 10 s in all) and returns the answer's status and whether the TLS session was resumed, or the error that
// ended the attempt (TLS 1.3: a refused client shows on the first read).
func TLSGet(addr, path string, cfg *tls.Config) (status int, resumed bool, err error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return 0, false, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n", path); err != nil {
		return 0, c.ConnectionState().DidResume, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, c.ConnectionState().DidResume, err
	}
	resp.Body.Close()
	return resp.StatusCode, c.ConnectionState().DidResume, nil
}

// StartTCPBackend serves TCP on a loopback port: handle gets each connection (30 s deadline) and the connection
// is closed when it returns. Listener and handlers end with the test. It returns the address.
func StartTCPBackend(t testing.TB, handle func(c *net.TCPConn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	return l.Addr().String()
}
