package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"meshlet.dev/meshlet/proxy/h1guard"
)

// The HTTP/1.1 loop (h1serve.go) must answer every byte stream as net/http's server does: the same responses,
// byte for byte (but the Date), the same end of the connection. FuzzH1Agreement sends the same stream to both,
// each behind the guard as on a listener, with handlers that use every part of the response writer and tell the
// guard of a request body that failed, as meshlet's do.

// agreeHandler answers by the path's first segment, so that the fuzzer reaches every kind of response.
func agreeHandler(w http.ResponseWriter, r *http.Request) {
	seg, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
	read := func() []byte {
		b, err := io.ReadAll(r.Body)
		if g := h1guard.Of(r); err != nil && g != nil {
			g.BodyFailed() // as meshlet's handlers: nothing more is read from the connection
		}
		return b
	}
	switch seg {
	case "cl": // a declared length
		b := read()
		w.Header().Set("Content-Length", strconv.Itoa(len(b)+3))
		w.Write([]byte("cl:"))
		w.Write(b)
	case "short": // declares more than it writes
		w.Header().Set("Content-Length", "10")
		w.Write([]byte("abc"))
	case "big": // past the 2 KiB held before the head
		read()
		w.Write(bytes.Repeat([]byte("0123456789abcdef"), 300))
	case "flush": // streams
		w.Write([]byte("first"))
		w.(http.Flusher).Flush()
		w.Write(read())
	case "trailer":
		w.Header().Set("Trailer", "X-Sum")
		b := read()
		w.Write(b)
		w.Header().Set("X-Sum", strconv.Itoa(len(b)))
		w.Header().Set(http.TrailerPrefix+"X-Late", "late")
	case "nocontent":
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusNoContent)
		w.Write([]byte("ignored"))
	case "notmodified":
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", "5")
		w.WriteHeader(http.StatusNotModified)
	case "unread": // leaves the body
		w.Write([]byte("unread"))
	case "early": // writes its head before reading the body (not full duplex)
		w.WriteHeader(http.StatusAccepted)
		w.(http.Flusher).Flush()
		w.Write(read())
	case "duplex":
		http.NewResponseController(w).EnableFullDuplex()
		w.Write([]byte("d"))
		w.(http.Flusher).Flush()
		w.Write(read())
	case "info":
		w.Header().Set("Link", "</a>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Write(read())
	case "close":
		w.Header().Set("Connection", "close")
		w.Write(read())
	case "te":
		w.Header().Set("Transfer-Encoding", "identity")
		w.Write(read())
	case "html":
		w.Write([]byte("<html><body>sniffed</body></html>"))
	case "status":
		w.WriteHeader(299)
		w.Write(read())
	case "empty":
	default:
		b := read()
		fmt.Fprintf(w, "%s %s %s %d %q", r.Method, r.RequestURI, r.Host, len(b), r.Header.Values("X-A"))
		for k, v := range r.Trailer {
			fmt.Fprintf(w, " %s=%q", k, v)
		}
	}
}

var agreeDate = regexp.MustCompile("\r\nDate: [^\r]*\r\n")

// serveStream serves one connection's stream in with net/http's server (loop false) or the loop, behind the
// guard, and returns what the client read until the server closed (at most 5 s).
func serveStream(t testing.TB, loop bool, in []byte) []byte {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	guard := h1guard.NewListener(ln, h1guard.Options{MaxHead: 8 << 10})
	srv := &http.Server{Handler: http.HandlerFunc(agreeHandler), ConnContext: h1guard.ConnContext,
		ReadHeaderTimeout: 5 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	hs := newH1Server(srv, ln.Addr())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if loop {
			hs.serve(guard)
		} else {
			srv.Serve(guard)
		}
	}()
	defer func() { // every goroutine of the servers ends before the test does
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ln.Close()
		if loop {
			hs.shutdown(ctx)
		}
		srv.Shutdown(ctx)
		<-done
		guard.Wait(ctx)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	go func() {
		c.Write(in)
		c.(*net.TCPConn).CloseWrite()
	}()
	out, _ := io.ReadAll(c)
	return agreeDate.ReplaceAll(out, []byte("\r\nDate: -\r\n"))
}

func agreeSeeds() []string {
	var seeds []string
	for _, p := range []string{"/", "/cl", "/short", "/big", "/flush", "/trailer", "/nocontent", "/notmodified", "/unread",
		"/early", "/duplex", "/info", "/close", "/te", "/html", "/status", "/empty"} {
		seeds = append(seeds,
			"GET "+p+" HTTP/1.1\r\nHost: a\r\n\r\n",
			"POST "+p+" HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
			"POST "+p+" HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
			"HEAD "+p+" HTTP/1.1\r\nHost: a\r\n\r\n")
	}
	return append(seeds,
		"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", // net/http answers it itself (globalOptionsHandler)
		"OPTIONS * HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /cl HTTP/1.1\r\nHost: b\r\nX-A: 1\r\nX-A: 2\r\n\r\n", // pipelined
		"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\n\r\n",                       // no Host
		"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", // two
		"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
		"GET http://x.example/p HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
		"POST /unread HTTP/1.1\r\nHost: a\r\nContent-Length: 300000\r\n\r\n"+strings.Repeat("x", 300000)+"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /unread HTTP/1.1\r\nHost: a\r\nContent-Length: 3000\r\n\r\n"+strings.Repeat("x", 3000)+"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\n"+strings.Repeat("X-Long: "+strings.Repeat("v", 100)+"\r\n", 50)+"\r\n", // past the loop's buffer
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"garbage\r\n\r\n",
	)
}

// TestH1Agreement runs the seeds of FuzzH1Agreement by name, so that a difference shows which stream it is.
func TestH1Agreement(t *testing.T) {
	for i, s := range agreeSeeds() {
		want, got := serveStream(t, false, []byte(s)), serveStream(t, true, []byte(s))
		if !bytes.Equal(want, got) {
			t.Errorf("seed %d %q:\nnet/http: %q\nloop:     %q", i, truncate(s, 200), truncate(string(want), 2000), truncate(string(got), 2000))
		}
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

func FuzzH1Agreement(f *testing.F) {
	for _, s := range agreeSeeds() {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		want, got := serveStream(t, false, in), serveStream(t, true, in)
		if !bytes.Equal(want, got) {
			t.Errorf("input %q:\nnet/http: %q\nloop:     %q", in, want, got)
		}
	})
}

// rigHeadTimeout is the loop rig's read_header_timeout (its idle timeout is 10 s).
const rigHeadTimeout = 300 * time.Millisecond

// loopRig is an h1Server on a guarded loopback listener with handler h, counting connection states.
type loopRig struct {
	addr   string
	hs     *h1Server
	srv    *http.Server
	mu     sync.Mutex
	states map[http.ConnState]int
	stop   func()
}

func startLoop(t *testing.T, h http.HandlerFunc) *loopRig {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	guard := h1guard.NewListener(ln, h1guard.Options{MaxHead: 8 << 10, HeadTimeout: rigHeadTimeout})
	r := &loopRig{addr: ln.Addr().String(), states: map[http.ConnState]int{}}
	r.srv = &http.Server{Handler: h, ConnContext: h1guard.ConnContext, IdleTimeout: 10 * time.Second,
		ReadHeaderTimeout: rigHeadTimeout, ErrorLog: log.New(io.Discard, "", 0), ConnState: func(_ net.Conn, s http.ConnState) {
			r.mu.Lock()
			r.states[s]++
			r.mu.Unlock()
		}}
	r.srv.Protocols = new(http.Protocols)
	r.srv.Protocols.SetHTTP1(true)
	r.srv.Protocols.SetUnencryptedHTTP2(true)
	r.hs = newH1Server(r.srv, ln.Addr())
	done := make(chan struct{})
	go func() { defer close(done); r.hs.serve(guard) }()
	var once sync.Once
	r.stop = func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			ln.Close()
			r.hs.shutdown(ctx)
			r.srv.Shutdown(ctx)
			<-done
			guard.Wait(ctx)
		})
	}
	t.Cleanup(r.stop)
	return r
}

func (r *loopRig) count(s http.ConnState) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.states[s]
}

// A request that runs past h1GoneAfter has its context ended when the client goes away, as with net/http's
// server; one that a pipelined request follows is not ended by it, and the next is served after it.
func TestH1ClientGone(t *testing.T) {
	ended := make(chan error, 1)
	r := startLoop(t, func(w http.ResponseWriter, req *http.Request) {
		switch req.URL.Path {
		case "/wait":
			select {
			case <-req.Context().Done():
				ended <- context.Cause(req.Context())
			case <-time.After(5 * time.Second):
				ended <- nil
			}
		case "/slow":
			time.Sleep(3 * h1GoneAfter)
			if err := req.Context().Err(); err != nil {
				t.Errorf("/slow: context ended (%v) by the pipelined request", err)
			}
			io.WriteString(w, "slow")
		default:
			io.WriteString(w, "fast")
		}
	})
	for round := range 20 {
		c, err := net.Dial("tcp", r.addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "GET /wait HTTP/1.1\r\nHost: a\r\n\r\n")
		time.Sleep(time.Duration(round%3) * h1GoneAfter) // before, about when and after the watch starts
		c.Close()
		select {
		case err := <-ended:
			if err != context.Canceled {
				t.Fatalf("round %d: the handler's context ended with %v, want context.Canceled", round, err)
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("round %d: the handler's context did not end within 3s of the client leaving", round)
		}
	}
	for round := range 20 {
		c, err := net.Dial("tcp", r.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
		time.Sleep(time.Duration(round%3) * h1GoneAfter)
		io.WriteString(c, "GET /fast HTTP/1.1\r\nHost: a\r\n\r\n")
		br := bufio.NewReader(c)
		for _, want := range []string{"slow", "fast"} {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			b, _ := io.ReadAll(resp.Body)
			if string(b) != want {
				t.Fatalf("round %d: body %q, want %q", round, b, want)
			}
		}
		c.Close()
	}
}

// A connection the loop hands to net/http (h2c by prior knowledge; an Expect request after a request the loop
// served) is counted once, opened and closed; the requests on it are served.
func TestH1HandoffCountedOnce(t *testing.T) {
	r := startLoop(t, func(w http.ResponseWriter, req *http.Request) {
		io.ReadAll(req.Body)
		io.WriteString(w, req.Proto)
	})
	c, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	br := bufio.NewReader(c)
	if resp, err := http.ReadResponse(br, nil); err != nil {
		t.Fatal(err)
	} else {
		io.ReadAll(resp.Body)
	}
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusContinue {
		t.Fatalf("Expect: %v %v, want 100 Continue from net/http", resp, err)
	}
	io.WriteString(c, "hi")
	if resp, err = http.ReadResponse(br, nil); err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(resp.Body); string(b) != "HTTP/1.1" {
		t.Fatalf("body %q", b)
	}
	c.Close()

	h2 := &http.Client{Transport: &http.Transport{Protocols: func() *http.Protocols {
		p := new(http.Protocols)
		p.SetUnencryptedHTTP2(true)
		return p
	}()}}
	resp, err = h2.Get("http://" + r.addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(resp.Body); string(b) != "HTTP/2.0" {
		t.Fatalf("h2c body %q", b)
	}
	resp.Body.Close()
	h2.CloseIdleConnections()
	r.stop()
	if n, closed := r.count(http.StateNew), r.count(http.StateClosed); n != 2 || closed != 2 {
		t.Errorf("connections counted: %d new, %d closed; want 2 and 2", n, closed)
	}
}

// Shutdown closes an idle connection at once, and lets a request under way finish with Connection: close.
func TestH1Shutdown(t *testing.T) {
	started := make(chan struct{})
	release := make(chan struct{})
	r := startLoop(t, func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/hold" {
			close(started)
			<-release
		}
		io.WriteString(w, "ok")
	})
	idle, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	idle.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(idle, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	ibr := bufio.NewReader(idle)
	if resp, err := http.ReadResponse(ibr, nil); err != nil {
		t.Fatal(err)
	} else {
		io.ReadAll(resp.Body)
	}
	busy, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	busy.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(busy, "GET /hold HTTP/1.1\r\nHost: a\r\n\r\n")
	<-started
	stopped := make(chan struct{})
	go func() { r.stop(); close(stopped) }()
	if _, err := ibr.ReadByte(); err != io.EOF {
		t.Errorf("idle connection: read %v, want EOF (closed by shutdown)", err)
	}
	close(release)
	resp, err := http.ReadResponse(bufio.NewReader(busy), nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(resp.Body); string(b) != "ok" || !resp.Close {
		t.Errorf("request under way: body %q, Connection: close %v; want ok, true", b, resp.Close)
	}
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("shutdown did not end after the last request")
	}
}

// A handler that panics (http.ErrAbortHandler, as the reverse proxy does when a response breaks) after its watch
// started ends its connection; the watch's read is ended and waited for before the connection's buffers are
// given back (the race detector checks that), and the next connection is served.
func TestH1PanicWithWatch(t *testing.T) {
	r := startLoop(t, func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/panic" {
			time.Sleep(3 * h1GoneAfter)
			panic(http.ErrAbortHandler)
		}
		io.WriteString(w, "ok")
	})
	for round := range 10 {
		c, err := net.Dial("tcp", r.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "GET /panic HTTP/1.1\r\nHost: a\r\n\r\n")
		if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
			t.Fatalf("round %d: read %q, %v; want the connection closed with no answer", round, b, err)
		}
		c.Close()
		resp, err := http.Get("http://" + r.addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := io.ReadAll(resp.Body); string(b) != "ok" {
			t.Fatalf("round %d: next connection got %q", round, b)
		}
		resp.Body.Close()
	}
}

// A write after the handler returned (a goroutine it left behind) gets an error, not the buffers of the next
// request.
func TestH1WriteAfterHandler(t *testing.T) {
	late := make(chan http.ResponseWriter, 1)
	r := startLoop(t, func(w http.ResponseWriter, req *http.Request) {
		io.WriteString(w, "ok")
		late <- w
	})
	resp, err := http.Get("http://" + r.addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	w := <-late
	if _, err := w.Write([]byte("late")); err != errAfterHandler {
		t.Errorf("Write after the handler: %v, want errAfterHandler", err)
	}
	if err := http.NewResponseController(w).Flush(); err != errAfterHandler {
		t.Errorf("Flush after the handler: %v, want errAfterHandler", err)
	}
	w.WriteHeader(http.StatusTeapot) // ignored
}

// A head after a connection's first has read_header_timeout from its first byte, not the idle timeout (the guard
// hands heads over whole, so neither the loop nor net/http can time it): on the loop, and on a connection handed
// to net/http. A connection that sends nothing keeps the idle timeout.
func TestH1SlowSecondHead(t *testing.T) {
	r := startLoop(t, func(w http.ResponseWriter, req *http.Request) {
		io.ReadAll(req.Body)
		io.WriteString(w, "ok")
	})
	for _, first := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",                                                 // served by the loop
		"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi", // net/http's
	} {
		for _, slow := range []bool{true, false} {
			c, err := net.Dial("tcp", r.addr)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c, first)
			br := bufio.NewReader(c)
			for {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				io.ReadAll(resp.Body)
				if resp.StatusCode != http.StatusContinue {
					break
				}
			}
			if slow {
				io.WriteString(c, "GET /next HTTP/1.1\r\nHo")
			}
			start := time.Now()
			c.SetReadDeadline(time.Now().Add(4 * rigHeadTimeout))
			_, err = br.ReadByte()
			var ne net.Error
			switch {
			case slow && err != io.EOF:
				t.Errorf("%q then a head cut short: read %v after %v, want the connection closed after %v", first, err, time.Since(start), rigHeadTimeout)
			case !slow && !(errors.As(err, &ne) && ne.Timeout()):
				t.Errorf("%q then nothing: read %v after %v, want the connection kept (idle timeout 10 s)", first, err, time.Since(start))
			}
			c.Close()
		}
	}
}
