package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"meshlet.dev/meshlet/resilience"
)

// h1Client (h1client.go) must do what net/http's Transport does with every response an endpoint may send: the
// same response (status, header, body, trailers, 1xx responses), the same errors (by kind), the same reuse of
// connections and resends. FuzzH1ClientAgreement sends the same two requests through each to a scripted
// endpoint, which answers from the fuzzer's bytes, and compares what each client returned and what the endpoint
// received.

// scriptedEndpoint answers each request it reads, on any connection, with the next of its responses (the last
// is repeated). With dropSecond, it closes its first connection on reading a second request there, unanswered
// (an endpoint closing an idle connection as a request goes out). A connection with no request for idleAfter is
// closed (which ends a body delimited by the close).
type scriptedEndpoint struct {
	ln         net.Listener
	responses  [][]byte
	dropSecond bool

	mu       sync.Mutex
	next     int
	conns    int
	requests []string
	wg       sync.WaitGroup
}

const scriptIdleAfter = 100 * time.Millisecond

func startScripted(t *testing.T, dropSecond bool, responses ...[]byte) *scriptedEndpoint {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &scriptedEndpoint{ln: ln, responses: responses, dropSecond: dropSecond}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.mu.Lock()
			e.conns++
			n := e.conns
			e.mu.Unlock()
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				e.serve(c, n)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); e.wg.Wait() })
	return e
}

func (e *scriptedEndpoint) serve(c net.Conn, n int) {
	defer c.Close()
	br := bufio.NewReader(c)
	for i := 0; ; i++ {
		c.SetReadDeadline(time.Now().Add(scriptIdleAfter))
		head, err := readHead(br)
		if err != nil {
			return
		}
		if cl := contentLength(head); cl > 0 {
			body := make([]byte, cl)
			if _, err := io.ReadFull(br, body); err != nil {
				return
			}
			head += string(body)
		}
		e.mu.Lock()
		e.requests = append(e.requests, head)
		if e.dropSecond && n == 1 && i == 1 {
			e.mu.Unlock()
			return
		}
		resp := e.responses[min(e.next, len(e.responses)-1)]
		e.next++
		e.mu.Unlock()
		c.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := c.Write(resp); err != nil {
			return
		}
	}
}

// readHead reads a request head (the requests h1Client sends have no body).
func readHead(br *bufio.Reader) (string, error) {
	var b strings.Builder
	for b.Len() < 64<<10 {
		line, err := br.ReadString('\n')
		b.WriteString(line)
		if err != nil {
			return "", err
		}
		if line == "\r\n" || line == "\n" {
			return b.String(), nil
		}
	}
	return "", errors.New("head too long")
}

// contentLength is the Content-Length a request head declares (h1Client sends no other framing); 0 without one.
func contentLength(head string) int {
	for _, line := range strings.Split(head, "\r\n") {
		if v, ok := strings.CutPrefix(line, "Content-Length: "); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}

// exchangeResult is what a client returned for one request, in comparable form.
type exchangeResult struct {
	Err     string // "" or the error's kind
	Status  int
	Header  http.Header
	Body    string
	BodyErr string
	Trailer http.Header
	Info    []string // 1xx responses seen through the request's httptrace
}

func errKind(err error) string {
	if err == nil {
		return ""
	}
	if isHeaderOverflow(err) {
		return "header overflow"
	}
	return resilience.ClassifyError(err).String()
}

// doExchange sends req's like through rt and reads the whole response.
func doExchange(rt func(*http.Request) (*http.Response, error), addr, method string, hdr http.Header, closeReq bool, body string) exchangeResult {
	var r exchangeResult
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		r.Info = append(r.Info, fmt.Sprint(code, " ", h))
		return nil
	}})
	var rb io.Reader
	if body != "" {
		rb = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+addr+"/p?q=1", rb)
	if err != nil {
		panic(err)
	}
	if body != "" && method == http.MethodPut {
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(body)), nil } // may be sent again
	} else {
		req.GetBody = nil
	}
	req.Header = hdr.Clone()
	req.Host = "svc.internal"
	req.Close = closeReq
	resp, err := rt(req)
	if err != nil {
		r.Err = errKind(err)
		return r
	}
	defer resp.Body.Close()
	r.Status, r.Header = resp.StatusCode, resp.Header
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return r // the connection is the caller's: nothing more to read
	}
	b, err := io.ReadAll(resp.Body)
	r.Body, r.BodyErr, r.Trailer = string(b), errKind(err), resp.Trailer
	return r
}

// agreeRun sends two requests with one client to a fresh scripted endpoint, and returns what the client returned
// and what the endpoint saw.
func agreeRun(t *testing.T, ours bool, method string, hdr http.Header, closeReq, dropSecond bool, body string, resp1, resp2 []byte) ([]exchangeResult, []string, int) {
	e := startScripted(t, dropSecond, resp1, resp2)
	addr := e.ln.Addr().String()
	const maxHeader = 1 << 10
	var rt func(*http.Request) (*http.Response, error)
	if ours {
		var d net.Dialer
		c := &h1Client{dial: d.DialContext, maxHeader: maxHeader, maxConns: 2}
		defer c.closeIdleConnections()
		rt = c.roundTrip
	} else {
		tr := &http.Transport{MaxIdleConnsPerHost: maxIdleConnsPerHost, DisableCompression: true, MaxResponseHeaderBytes: maxHeader}
		tr.Protocols = new(http.Protocols)
		tr.Protocols.SetHTTP1(true)
		defer tr.CloseIdleConnections()
		rt = tr.RoundTrip
	}
	var out []exchangeResult
	for i := range 2 {
		if i > 0 {
			// net/http's Transport learns of bytes or a close on an idle connection from the read it keeps
			// pending, which races with the next request; h1Client looks at a connection idle for h1cLookAfter.
			// Between the two, both have seen what came.
			time.Sleep(2 * h1cLookAfter)
		}
		out = append(out, doExchange(rt, addr, method, hdr, closeReq, body))
	}
	e.ln.Close()
	e.mu.Lock()
	defer e.mu.Unlock()
	return out, e.requests, e.conns
}

var agreeMethods = []string{"GET", "HEAD", "POST", "DELETE", "OPTIONS", "PUT"}

func FuzzH1ClientAgreement(f *testing.F) {
	ok := "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nok"
	for _, s := range []struct {
		method, hval byte
		flags        byte
		r1, r2       string
	}{
		{0, 0, 0, ok, ok},
		{1, 0, 0, ok, ok},
		{2, 0, 1, ok, ok}, // POST on a connection the endpoint drops: not resent
		{0, 0, 1, ok, ok}, // GET: resent
		{0, 1, 0, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3\r\nabc\r\n0\r\nX-T: v\r\n\r\n", ok},
		{0, 0, 0, "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n" + ok, ok},
		{0, 0, 0, "HTTP/1.1 200 OK\r\n\r\nclose-delimited", ok},
		{0, 0, 0, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx", ok},
		{0, 0, 0, "HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\nabc", ok},
		{1, 0, 0, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", ok},
		{0, 0, 0, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", ok},
		{0, 0, 0, ok + "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra", ok},
		{0, 0, 0, "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("b", 1100) + "\r\n\r\n", ok},
		{0, 0, 0, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n", ok},
		{0, 0, 0, "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", ok},
		{0, 0, 0, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx", ok},
		{0, 0, 0, "garbage\r\n\r\n", ok},
		{0, 2, 0, ok, ok},
		{0, 0, 2, ok, "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n"},
		{5, 3, 0, ok, ok},
		{2, 0, 4, ok, ok}, // POST with a body
		{2, 0, 5, ok, ok}, // on a connection the endpoint drops: not resent
		{5, 0, 5, ok, ok}, // PUT with a body it can give again: resent
		{4, 3, 5, ok, ok}, // OPTIONS with a body and an Idempotency-Key
		{3, 0, 6, ok, "HTTP/1.1 413 Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"},
	} {
		f.Add(s.method, s.hval, s.flags, []byte(s.r1), []byte(s.r2))
	}
	hvals := []string{"v", "", "bad\r\nX-Injected: 1", "k1"}
	f.Fuzz(func(t *testing.T, method, hval, flags byte, r1, r2 []byte) {
		if len(r1) == 0 || len(r2) == 0 || len(r1) > 8<<10 || len(r2) > 8<<10 {
			return
		}
		m := agreeMethods[int(method)%len(agreeMethods)]
		hdr := http.Header{"User-Agent": {""}, "X-Test": {hvals[int(hval)%len(hvals)]}}
		if hval%4 == 3 {
			hdr.Set("Idempotency-Key", "k1") // a POST or PUT marked safe to resend
		}
		closeReq, dropSecond := flags&2 != 0, flags&1 != 0
		var body string
		if flags&4 != 0 && m != http.MethodGet && m != http.MethodHead {
			body = "request body" // whole, as the HTTP/1.1 loop hands h1Client one; PUT may be sent again (GetBody)
		}
		want, wantReqs, wantConns := agreeRun(t, false, m, hdr, closeReq, dropSecond, body, r1, r2)
		got, gotReqs, gotConns := agreeRun(t, true, m, hdr, closeReq, dropSecond, body, r1, r2)
		if !reflect.DeepEqual(want, got) {
			t.Errorf("%s %q %q:\nnet/http: %+v\nh1Client: %+v", m, r1, r2, want, got)
		}
		if !reflect.DeepEqual(wantReqs, gotReqs) || wantConns != gotConns {
			t.Errorf("%s %q %q: the endpoint saw\nnet/http: %d connections, %q\nh1Client: %d connections, %q", m, r1, r2, wantConns, wantReqs, gotConns, gotReqs)
		}
	})
}

// countingEndpoint is an HTTP/1.1 endpoint on loopback that counts the connections open to it at once.
type countingEndpoint struct {
	addr    string
	mu      sync.Mutex
	open    int
	maxOpen int
	total   int
}

func startCounting(t *testing.T, h http.HandlerFunc) *countingEndpoint {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &countingEndpoint{addr: ln.Addr().String()}
	srv := &http.Server{Handler: h, ConnState: func(_ net.Conn, s http.ConnState) {
		e.mu.Lock()
		defer e.mu.Unlock()
		switch s {
		case http.StateNew:
			e.open++
			e.total++
			e.maxOpen = max(e.maxOpen, e.open)
		case http.StateClosed, http.StateHijacked:
			e.open--
		}
	}}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return e
}

func (e *countingEndpoint) counts() (open, maxOpen, total int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.open, e.maxOpen, e.total
}

// targetRequest is a request for the endpoint at addr as an attempt makes it (withTarget).
func targetRequest(ctx context.Context, t *testing.T, method, addr, path string, body io.Reader) *http.Request {
	t.Helper()
	tgt := &dialTarget{addr: addr}
	tgt.poolHost = poolHostOf(tgt)
	tgt.poolAddr = tgt.poolHost + ":80"
	req, err := http.NewRequestWithContext(ctx, method, "http://svc"+path, body)
	if err != nil {
		t.Fatal(err)
	}
	return withTarget(req, tgt)
}

func testTransports(maxConns int) *transports {
	tr, _ := countedTransports(maxConns)
	return tr
}

// connCounter counts the connections a client holds open (made and not yet closed by it).
type connCounter struct {
	mu            sync.Mutex
	open, maxOpen int
}

type countedConn struct {
	net.Conn
	c    *connCounter
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.c.mu.Lock()
		c.c.open--
		c.c.mu.Unlock()
	})
	return c.Conn.Close()
}

// NetConn lets connAlive look at the socket.
func (c *countedConn) NetConn() net.Conn { return c.Conn }

func (cc *connCounter) max() int {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.maxOpen
}

// countedTransports are an upstream's transports with maxConns connections per endpoint, whose connections are
// counted from the client's side (the endpoint sees a closed one go later).
func countedTransports(maxConns int) (*transports, *connCounter) {
	cc := &connCounter{}
	count := func(_ context.Context, c net.Conn, _ *dialTarget, _ string) (net.Conn, error) {
		cc.mu.Lock()
		cc.open++
		cc.maxOpen = max(cc.maxOpen, cc.open)
		cc.mu.Unlock()
		return &countedConn{Conn: c, c: cc}, nil
	}
	tr := newTransports(func() time.Duration { return time.Second }, count, 0)
	tr.h1.MaxConnsPerHost = maxConns
	tr.h1c.maxConns = maxConns
	return tr, cc
}

// send sends req through h1Client when it may take it, else net/http's Transport, as cluster.RoundTrip does, and
// reads the whole response.
func send(t *testing.T, tr *transports, req *http.Request) (string, error) {
	t.Helper()
	var resp *http.Response
	var err error
	if h1Eligible(req, dialTargetFrom(req.Context()), true) {
		resp, err = tr.h1c.roundTrip(req)
	} else {
		resp, err = tr.h1.RoundTrip(req)
	}
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// limits.max_connections bounds the connections to an endpoint of both clients together: requests beyond it
// wait for a connection, in either client; an idle connection of one gives its slot to a request of the other,
// which would otherwise wait for it forever; a request that gives up waiting leaves no slot taken.
func TestH1ClientMaxConns(t *testing.T) {
	release := make(chan struct{})
	e := startCounting(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			<-release
		}
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
	})
	const limit = 2
	tr, cc := countedTransports(limit)
	ctx := context.Background()

	// Six at once, half of them with a body (net/http's Transport): never more than two connections.
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var body io.Reader
			method := http.MethodGet
			if i%2 == 1 {
				method, body = http.MethodPost, strings.NewReader("body")
			}
			if b, err := send(t, tr, targetRequest(ctx, t, method, e.addr, "/hold", body)); err != nil || b != "ok" {
				errs <- fmt.Errorf("request %d: %q, %v", i, b, err)
			}
		}()
	}
	for deadline := time.Now().Add(3 * time.Second); cc.max() < limit && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // room for a third connection, if one were made
	if maxOpen := cc.max(); maxOpen != limit {
		t.Errorf("%d connections open at once while six requests were held, want %d", maxOpen, limit)
	}
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if maxOpen := cc.max(); maxOpen > limit {
		t.Errorf("%d connections open at once, want at most %d", maxOpen, limit)
	}

	// Both slots idle in one client, then a request of each kind: each takes a slot, none waits.
	for _, first := range []string{http.MethodGet, http.MethodPost} {
		for range 3 {
			other := http.MethodPost
			if first == http.MethodPost {
				other = http.MethodGet
			}
			for _, m := range []string{first, first, other, other} {
				rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				var body io.Reader
				if m == http.MethodPost {
					body = strings.NewReader("b")
				}
				if b, err := send(t, tr, targetRequest(rctx, t, m, e.addr, "/", body)); err != nil || b != "ok" {
					t.Fatalf("%s after %s: %q, %v (a slot held by the other client's idle connection?)", m, first, b, err)
				}
				cancel()
			}
		}
	}
	if maxOpen := cc.max(); maxOpen > limit {
		t.Errorf("%d connections open at once, want at most %d", maxOpen, limit)
	}

	// Two held requests take both slots; a third gives up waiting; then, once they end, the slots are free.
	release2 := make(chan struct{})
	hold := startCounting(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			<-release2
		}
		io.WriteString(w, "ok")
	})
	tr2 := testTransports(limit)
	for range limit {
		wg.Add(1)
		go func() {
			defer wg.Done()
			send(t, tr2, targetRequest(ctx, t, http.MethodGet, hold.addr, "/hold", nil))
		}()
	}
	for deadline := time.Now().Add(3 * time.Second); ; {
		if open, _, _ := hold.counts(); open == limit {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the two held requests did not both get a connection")
		}
		time.Sleep(5 * time.Millisecond)
	}
	wctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	if _, err := send(t, tr2, targetRequest(wctx, t, http.MethodGet, hold.addr, "/", nil)); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a request waiting for a slot past its deadline: %v, want context.DeadlineExceeded", err)
	}
	cancel()
	close(release2)
	wg.Wait()
	tr2.closeIdle()
	tr2.h1c.mu.Lock()
	left := len(tr2.h1c.hosts)
	tr2.h1c.mu.Unlock()
	if left != 0 {
		t.Errorf("%d endpoints still counted after every connection closed", left)
	}
}

// A request's context ending ends its exchange at once, waiting for the response head or reading the body; the
// connection is closed, not pooled.
func TestH1ClientCancel(t *testing.T) {
	e := startCounting(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/body" {
			io.WriteString(w, "part")
			w.(http.Flusher).Flush()
		}
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	})
	tr := testTransports(0)
	for _, path := range []string{"/", "/body"} {
		ctx, cancel := context.WithCancel(context.Background())
		start := time.Now()
		time.AfterFunc(50*time.Millisecond, cancel)
		_, err := send(t, tr, targetRequest(ctx, t, http.MethodGet, e.addr, path, nil))
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%s: %v, want context.Canceled", path, err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("%s: the request ended %v after it was cancelled", path, d)
		}
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		if open, _, _ := e.counts(); open == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a cancelled exchange's connection is still open")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// An idle connection the endpoint closed, or on which it sent bytes no request asked for, is not used: a request
// that is not resent on failure (POST) goes out on a new connection and gets its own response.
func TestH1ClientStaleIdle(t *testing.T) {
	for _, after := range []string{"close", "unsolicited"} {
		t.Run(after, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			sent := make(chan struct{}, 4)
			go func() {
				for n := 0; ; n++ {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					go func() {
						defer c.Close()
						br := bufio.NewReader(c)
						for {
							if _, err := readHead(br); err != nil {
								return
							}
							fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nc%d", n)
							if n == 0 {
								if after == "unsolicited" {
									io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nforgd")
									sent <- struct{}{}
									io.Copy(io.Discard, c)
									return
								}
								sent <- struct{}{}
								return
							}
						}
					}()
				}
			}()
			tr := testTransports(0)
			defer tr.closeIdle()
			for i, want := range []string{"c0", "c1"} {
				b, err := send(t, tr, targetRequest(context.Background(), t, http.MethodPost, ln.Addr().String(), "/", nil))
				if err != nil || b != want {
					t.Fatalf("request %d: %q, %v; want %q", i, b, err, want)
				}
				if i == 0 {
					<-sent
					time.Sleep(20 * time.Millisecond) // the close or the bytes reach this side
				}
			}
		})
	}
}

// An idle connection is closed after idleConnTimeout (its timer may fire late: a connection used again since
// is not closed), and its slot is given back.
func TestH1ClientIdleExpired(t *testing.T) {
	e := startCounting(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	tr := testTransports(1)
	if _, err := send(t, tr, targetRequest(context.Background(), t, http.MethodGet, e.addr, "/", nil)); err != nil {
		t.Fatal(err)
	}
	c := tr.h1c
	c.mu.Lock()
	var pc *h1cConn
	for _, h := range c.hosts {
		pc = h.idle[0]
	}
	c.mu.Unlock()
	pc.idleExpired() // early: not closed
	if open, _, _ := e.counts(); open != 1 {
		t.Fatalf("%d connections open after an early timer, want 1", open)
	}
	c.mu.Lock()
	pc.idleAt = time.Now().Add(-idleConnTimeout)
	c.mu.Unlock()
	pc.idleExpired()
	c.mu.Lock()
	left := len(c.hosts)
	c.mu.Unlock()
	if left != 0 {
		t.Errorf("the endpoint is still counted after its only connection expired")
	}
	if b, err := send(t, tr, targetRequest(context.Background(), t, http.MethodGet, e.addr, "/", nil)); err != nil || b != "ok" {
		t.Fatalf("after expiry: %q, %v", b, err)
	}
	if _, _, total := e.counts(); total != 2 {
		t.Errorf("%d connections made, want 2 (the expired one, then a new one)", total)
	}
}

// connAlive looks through the wrappers meshlet puts around an endpoint's connection (the file-descriptor budget's)
// to the socket; a connection it cannot look at is not reused.
func TestConnAliveUnwraps(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	peer := <-accepted
	b := newConnBudget(slog.New(slog.DiscardHandler))
	wrapped, err := b.upstreamConn(c)
	if err != nil {
		t.Fatal(err)
	}
	if !connAlive(wrapped) {
		t.Error("an open, silent connection under the budget's wrapper is not alive")
	}
	if connAlive(struct{ net.Conn }{c}) {
		t.Error("a connection whose socket cannot be reached is alive")
	}
	peer.Write([]byte("x"))
	time.Sleep(20 * time.Millisecond)
	if connAlive(wrapped) {
		t.Error("a connection with bytes no request asked for is alive")
	}
	peer.Close()
}

// Through a proxy: a request without a body, or with one the HTTP/1.1 loop holds whole (at most 4 KiB, in the
// head's read), goes through h1Client; a larger body, or one that comes after its head, through net/http's
// Transport. Either way the endpoint gets the request byte for byte.
func TestH1ClientThroughProxy(t *testing.T) {
	type got struct {
		method string
		body   []byte
		cl     int64
	}
	seen := make(chan got, 1)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("backend: %v", err)
		}
		seen <- got{r.Method, b, r.ContentLength}
		fmt.Fprintf(w, "%d", len(b))
	}))
	defer backend.Close()
	small := bytes.Repeat([]byte("s"), 100)
	big := bytes.Repeat([]byte("b"), h1WholeBody+1)
	for _, tc := range []struct {
		name    string
		method  string
		body    []byte
		split   bool // the body comes 50 ms after the head
		ownPool bool // h1Client serves it
	}{
		{"GET", http.MethodGet, nil, false, true},
		{"POST small", http.MethodPost, small, false, true},
		{"POST small after its head", http.MethodPost, small, true, false},
		{"POST over 4 KiB", http.MethodPost, big, false, false},
		{"PUT empty", http.MethodPut, []byte{}, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Service: ServiceConfig{Name: "web"}, Upstreams: []UpstreamConfig{{
				Name: "api", Listen: "127.0.0.1:0", Endpoints: []string{strings.TrimPrefix(backend.URL, "http://")}}}}
			p, _ := startProxy(t, cfg)
			c, err := net.Dial("tcp", p.Addrs()["upstream/api"])
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			head := fmt.Sprintf("%s /x HTTP/1.1\r\nHost: api\r\nContent-Length: %d\r\n\r\n", tc.method, len(tc.body))
			if tc.split {
				io.WriteString(c, head)
				time.Sleep(50 * time.Millisecond)
				c.Write(tc.body)
			} else {
				c.Write(append([]byte(head), tc.body...))
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 || string(b) != strconv.Itoa(len(tc.body)) {
				t.Fatalf("answer %d %q, want 200 %d", resp.StatusCode, b, len(tc.body))
			}
			g := <-seen
			if g.method != tc.method || !bytes.Equal(g.body, tc.body) || g.cl != int64(len(tc.body)) {
				t.Fatalf("the endpoint got %s with %d bytes (Content-Length %d), want %s with %d", g.method, len(g.body), g.cl, tc.method, len(tc.body))
			}
			tr := p.upstreams["api"].cluster.transport.p.Load()
			tr.h1c.mu.Lock()
			idle := 0
			for _, h := range tr.h1c.hosts {
				idle += len(h.idle)
			}
			tr.h1c.mu.Unlock()
			if own := idle == 1; own != tc.ownPool {
				t.Errorf("h1Client holds %d idle connections after the request; want it to have served it: %v", idle, tc.ownPool)
			}
		})
	}
}
