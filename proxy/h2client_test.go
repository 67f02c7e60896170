package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// meshlet's HTTP/2 client (h2client.go) is held to x/net's Transport: the same request (a script the fuzzer
// writes) goes through each to a server that answers it with the same frames (from the same script), and what the
// server received (the request's fields, its body) and what the caller got (the response or the error, the body
// as read, the trailers, the 1xx) must be the same.

// h2cReqTemplates are the requests: method, headers, body.
var h2cReqTemplates = []struct {
	method string
	header http.Header
	body   string
	cl     int64 // Request.ContentLength: -1 unknown
}{
	{"GET", http.Header{}, "", 0},
	{"POST", http.Header{"Content-Type": {"application/grpc"}, "Te": {"trailers"}}, "\x00\x00\x00\x00\x03abc", -1},
	{"POST", http.Header{"X-A": {"1", "2"}}, "hello", 5},
	{"HEAD", http.Header{}, "", 0},
	{"GET", http.Header{"Cookie": {"a=1; b=2;  c=3"}, "User-Agent": {""}}, "", 0},
	{"PUT", http.Header{"User-Agent": {"ua1", "ua2"}, "x-lower": {"v"}}, "", 0},
	{"POST", http.Header{}, "", 0},
	{"GET", http.Header{"Keep-Alive": {"1"}, "Proxy-Connection": {"x"}, "Host": {"other"}}, "", 0},
	{"DELETE", http.Header{"X-Big": {strings.Repeat("b", 3000)}}, "", 0},
	{"POST", http.Header{}, "wrong length", 3},
	{"GET", http.Header{"Bad Name": {"x"}}, "", 0},
	{"GET", http.Header{"X-V": {"a\x00b"}}, "", 0},
	{"POST", http.Header{}, strings.Repeat("z", 40000), -1},
}

// h2cRespFields are the header fields a response's HEADERS frame may carry (a pick each).
var h2cRespFields = [][][2]string{
	{{":status", "200"}, {"content-type", "text/plain"}},
	{{":status", "200"}, {"content-length", "5"}},
	{{":status", "200"}, {"content-length", "3"}, {"content-length", "3"}},
	{{":status", "200"}, {"content-length", "3"}, {"content-length", "4"}},
	{{":status", "200"}, {"content-length", "x"}},
	{{":status", "204"}},
	{{":status", "100"}},
	{{":status", "103"}, {"link", "</a>"}},
	{{":status", "404"}, {"trailer", "X-T, x-u"}, {"set-cookie", "a=1"}, {"set-cookie", "b=2"}},
	{{":status", "abc"}},
	{{"content-type", "text/plain"}},
	{{":status", "200"}, {"connection", "close"}, {"keep-alive", "1"}, {"x-ok", "1"}},
	{{":status", "200"}, {"Upper", "x"}},
	{{":status", "200"}, {":path", "/"}},
	{{":status", "500"}, {"grpc-status", "13"}},
	{{":status", "200"}, {"x-big", strings.Repeat("v", 20000)}},
	{{":status", "200"}, {"content-type", "application/grpc"}},
}

// h2cTrailerFields are the fields of a trailers block.
var h2cTrailerFields = [][][2]string{
	{{"grpc-status", "0"}, {"grpc-message", "ok"}},
	{{"x-t", "1"}, {"x-t", "2"}},
	{{":status", "200"}},
	{},
}

// h2cScript is one exchange: the request, and the frames the server answers with.
type h2cScript struct {
	req  int
	ops  [][]byte // frames to write, each after the previous (written together)
	hold bool     // the server keeps the connection open after its frames (else it ends it: a FIN)
	// retry: the script refuses the request or does not process it; the clients send it again, each in its own
	// way (h2Client through x/net's transport and its pool), so only the first request is compared
	retry bool
}

func buildH2cScript(in []byte) *h2cScript {
	arg := func() byte { return nextFuzzByte(&in) }
	s := &h2cScript{req: int(arg()) % len(h2cReqTemplates)}
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	fr.AllowIllegalWrites = true
	var hbuf bytes.Buffer
	enc := hpack.NewEncoder(&hbuf)
	block := func(fields [][2]string) []byte {
		hbuf.Reset()
		for _, f := range fields {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		return bytes.Clone(hbuf.Bytes())
	}
	headers := func(id uint32, b []byte, end, split bool) {
		if split && len(b) > 1 {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: b[:len(b)/2], EndStream: end})
			fr.WriteContinuation(id, true, b[len(b)/2:])
			return
		}
		if len(b) > 16<<10 {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: b[:16<<10], EndStream: end})
			for b = b[16<<10:]; len(b) > 0; {
				k := min(len(b), 16<<10)
				fr.WriteContinuation(id, k == len(b), b[:k])
				b = b[k:]
			}
			return
		}
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: b, EndStream: end, EndHeaders: true})
	}
	for ops := 0; len(in) > 0 && ops < 16; ops++ {
		switch op := arg(); op % 12 {
		case 0: // response HEADERS
			t, flags := arg(), arg()
			headers(1, block(h2cRespFields[int(t)%len(h2cRespFields)]), flags&1 != 0, flags&2 != 0)
		case 1: // DATA
			n, flags := int(arg()), arg()
			data := bytes.Repeat([]byte{'d'}, n)
			if flags&4 != 0 {
				data = bytes.Repeat([]byte{'e'}, n*300) // past the client's stream window's refresh point
			}
			id := uint32(1)
			if flags&8 != 0 {
				id = 3 // a stream never opened
			}
			if flags&2 != 0 {
				fr.WriteDataPadded(id, flags&1 != 0, data, make([]byte, flags>>4))
			} else {
				for len(data) > 16<<10 {
					fr.WriteData(id, false, data[:16<<10])
					data = data[16<<10:]
				}
				fr.WriteData(id, flags&1 != 0, data)
			}
		case 2: // trailers
			t, flags := arg(), arg()
			headers(1, block(h2cTrailerFields[int(t)%len(h2cTrailerFields)]), flags&1 == 0, false)
		case 3: // RST_STREAM
			code := http2.ErrCode(arg() % 14)
			fr.WriteRSTStream(1, code)
			s.retry = s.retry || code == http2.ErrCodeRefusedStream
			// What comes on the stream after its reset races, in x/net, with the caller's wake-up (an answer that
			// comes before the caller sees the reset is taken: golang.org/issue/49645).
			s.ops = append(s.ops, bytes.Clone(buf.Bytes()))
			return s
		case 4: // GOAWAY
			last, code := arg(), arg()
			fr.WriteGoAway(uint32(last%2), http2.ErrCode(code%14), []byte("bye"))
			if last%2 == 0 {
				// The request was not processed: what a server sends on its stream after that races, in x/net,
				// with its retry of the request.
				s.ops = append(s.ops, bytes.Clone(buf.Bytes()))
				s.retry = s.retry || code%14 == 0
				return s
			}
		case 5: // SETTINGS
			which, v := arg(), arg()
			set := []http2.Setting{
				{ID: http2.SettingMaxFrameSize, Val: 16384 + uint32(v)},
				{ID: http2.SettingInitialWindowSize, Val: uint32(v) * 1000},
				{ID: http2.SettingMaxConcurrentStreams, Val: uint32(v)},
				{ID: http2.SettingHeaderTableSize, Val: uint32(v)},
				{ID: http2.SettingMaxFrameSize, Val: 100}, // invalid
				{ID: http2.SettingInitialWindowSize, Val: 1 << 31},
			}[int(which)%6]
			fr.WriteSettings(set)
		case 6: // WINDOW_UPDATE
			which, v := arg(), arg()
			fr.WriteWindowUpdate(uint32(which%2), []uint32{1, 0, 1<<31 - 1, 1000}[int(v)%4])
		case 7: // PING
			fr.WritePing(arg()%2 == 1, [8]byte{1})
		case 8:
			s.hold = true
		case 9: // HEADERS on a stream never opened
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2 + arg()%2), BlockFragment: block(h2cRespFields[0]), EndHeaders: true})
		case 10: // PUSH_PROMISE
			fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, BlockFragment: block(h2cRespFields[0]), EndHeaders: true})
		case 11: // SETTINGS ACK for nothing
			fr.WriteSettingsAck()
		}
		s.ops = append(s.ops, bytes.Clone(buf.Bytes()))
		buf.Reset()
	}
	return s
}

// h2cOutcome is what one client made of a script.
type h2cOutcome struct {
	server string // the request the server received
	client string // what the caller got
}

// runH2Client sends the script's request through rt (a fresh client of one kind) to a server that answers with the
// script's frames.
func runH2Client(t testing.TB, s *h2cScript, mk func(dial func(ctx context.Context, network, addr string) (net.Conn, error)) http.RoundTripper) h2cOutcome {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var server strings.Builder
	srvDone := make(chan struct{})
	srvConn := make(chan net.Conn, 1)
	go func() {
		defer close(srvDone)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		srvConn <- c
		defer c.Close()
		// Longer than the client's deadline: it ends first.
		fr := h2TestServerConn(c, 5*time.Second, http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: 8000})
		if fr == nil {
			return
		}
		// The request: its header fields (sorted: x/net writes them in map order), its body and its end.
		var fields []string
		var body bytes.Buffer
		for ended := false; !ended; {
			f, err := nextH2Frame(fr)
			if err != nil {
				fmt.Fprintf(&server, "read error %v", err)
				return
			}
			switch f := f.(type) {
			case *http2.MetaHeadersFrame:
				for _, hf := range f.Fields {
					fields = append(fields, hf.Name+"="+hf.Value)
				}
				ended = f.StreamEnded()
			case *http2.DataFrame:
				body.Write(f.Data())
				ended = f.StreamEnded()
			}
		}
		slices.Sort(fields)
		fmt.Fprintf(&server, "%v body %q", fields, body.Bytes())
		for _, op := range s.ops {
			if _, err := c.Write(op); err != nil {
				return
			}
		}
		if !s.hold {
			// The client reads the end of the connection (a FIN: were what it sent unread, a close would be a reset
			// that may come before the frames).
			c.(*net.TCPConn).CloseWrite()
		}
		// Hold the connection until the client is done (it closes it, or the deadline passes).
		io.Copy(io.Discard, c)
	}()
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, ln.Addr().String())
	}
	rt := mk(dial)
	tmpl := h2cReqTemplates[s.req]
	var reqBody io.Reader
	if tmpl.body != "" {
		reqBody = strings.NewReader(tmpl.body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var got1xx []string
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		got1xx = append(got1xx, fmt.Sprintf("%d %v", code, h))
		return nil
	}})
	req, err := http.NewRequestWithContext(ctx, tmpl.method, "http://a.test/p?q=1", reqBody)
	if err != nil {
		t.Fatal(err)
	}
	req.Header = tmpl.header.Clone()
	if tmpl.body != "" {
		req.ContentLength = tmpl.cl
	}
	var client strings.Builder
	resp, err := rt.RoundTrip(req)
	if err != nil {
		fmt.Fprintf(&client, "error %s", h2cErrClass(err))
	} else {
		b, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		keys := slices.Sorted(func(yield func(string) bool) {
			for k := range resp.Header {
				if !yield(k) {
					return
				}
			}
		})
		fmt.Fprintf(&client, "%s %d cl=%d", resp.Proto, resp.StatusCode, resp.ContentLength)
		for _, k := range keys {
			fmt.Fprintf(&client, " %s=%q", k, resp.Header[k])
		}
		fmt.Fprintf(&client, "; body %d %q read %s; trailer %v", len(b), truncate(string(b), 40), h2cErrClass(rerr), resp.Trailer)
	}
	fmt.Fprintf(&client, "; 1xx %v", got1xx)
	if c, ok := rt.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
	cancel()
	ln.Close()
	select {
	case c := <-srvConn:
		c.Close() // the outcome is in: whatever the clients left open ends
	default:
	}
	<-srvDone
	got := server.String()
	if !strings.HasPrefix(got, "[") {
		got = "no request" // whether a client dials before it refuses a request is its own affair (x/net does)
	}
	return h2cOutcome{server: got, client: client.String()}
}

// h2cErrClass is an error as the callers tell errors apart (resilience.ClassifyError, isHeaderOverflow): by
// type and code, and by text for the others.
func h2cErrClass(err error) string {
	if err == nil {
		return "ok"
	}
	var se http2.StreamError
	var ge http2.GoAwayError
	var ce http2.ConnectionError
	switch {
	case errors.As(err, &se):
		cause := ""
		if se.Cause != nil && se.Cause != errH2FromPeer && se.Cause.Error() != "received from peer" {
			cause = " (" + se.Cause.Error() + ")"
		}
		return fmt.Sprintf("stream %v%s", se.Code, cause)
	case errors.As(err, &ge):
		return fmt.Sprintf("goaway %v last=%d", ge.ErrCode, ge.LastStreamID)
	case errors.As(err, &ce):
		return fmt.Sprintf("connection %v", http2.ErrCode(ce))
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline"
	}
	return err.Error()
}

// h2cOwnUsed counts the scripts whose request h2Client sent itself (not left to x/net).
var h2cOwnUsed, h2cRuns atomic.Int64

func h2cAgree(t testing.TB, in []byte) {
	s := buildH2cScript(in)
	x := runH2Client(t, s, func(dial func(ctx context.Context, network, addr string) (net.Conn, error)) http.RoundTripper {
		tr, _ := newH2Transports(dial, 16<<10)
		return tr
	})
	var fellBack atomic.Bool
	m := runH2Client(t, s, func(dial func(ctx context.Context, network, addr string) (net.Conn, error)) http.RoundTripper {
		tr, cl := newH2Transports(dial, 16<<10)
		cl.fallback = roundTripFunc(func(r *http.Request) (*http.Response, error) {
			fellBack.Store(true)
			return tr.RoundTrip(r)
		})
		return h2ClientRT{cl, tr}
	})
	h2cRuns.Add(1)
	if !fellBack.Load() {
		h2cOwnUsed.Add(1)
	}
	if s.retry {
		x.client, m.client = "", ""
	}
	if x != m {
		t.Errorf("input %q:\nx/net:   server got %s\n         client got %s\nh2Client: server got %s\n         client got %s",
			in, truncate(x.server, 2000), truncate(x.client, 2000), truncate(m.server, 2000), truncate(m.client, 2000))
	}
}

// h2ClientRT sends every request through h2Client as attempt.go does for an eligible one (the body, when there is
// one, is whole: a strings.Reader).
type h2ClientRT struct {
	cl *h2Client
	tr *http2.Transport // its fallback
}

func (rt h2ClientRT) RoundTrip(r *http.Request) (*http.Response, error) {
	if !h2Eligible(r, true) {
		return rt.cl.fallback.RoundTrip(r)
	}
	return rt.cl.roundTrip(r)
}

func (rt h2ClientRT) CloseIdleConnections() {
	rt.cl.closeIdleConnections()
	rt.tr.CloseIdleConnections()
}

func h2cSeeds() [][]byte {
	var seeds [][]byte
	for r := range h2cReqTemplates {
		seeds = append(seeds,
			[]byte{byte(r), 0, 0, 0, 1, 5, 1},           // 200, 5 bytes
			[]byte{byte(r), 0, 1, 1},                    // 200 content-length 5, ended at once
			[]byte{byte(r), 0, 16, 0, 1, 5, 0, 2, 0, 0}, // gRPC: data then trailers
		)
	}
	seeds = append(seeds,
		[]byte{0, 0, 0, 2},                      // headers split with CONTINUATION
		[]byte{0, 0, 1, 0, 1, 3, 1},             // content-length 5, 3 bytes
		[]byte{0, 0, 1, 0, 1, 9, 1},             // content-length 5, 9 bytes
		[]byte{0, 0, 2, 0, 1, 3, 1},             // repeated content-length
		[]byte{0, 0, 3, 0, 1, 3, 1},             // conflicting content-length
		[]byte{0, 0, 4, 0, 1, 3, 1},             // non-numeric content-length
		[]byte{0, 0, 5, 1},                      // 204
		[]byte{0, 0, 6, 0, 0, 0, 0, 1, 2, 1},    // 100, then 200
		[]byte{0, 0, 7, 0, 0, 0, 0, 1, 2, 1},    // 103, then 200
		[]byte{0, 0, 6, 1},                      // 100 with END_STREAM
		[]byte{0, 0, 8, 0, 1, 2, 0, 2, 1, 0},    // declared trailers
		[]byte{0, 0, 9, 1},                      // non-numeric status
		[]byte{0, 0, 10, 1},                     // no status
		[]byte{0, 0, 11, 0, 1, 2, 1},            // connection-specific fields
		[]byte{0, 0, 12, 1},                     // an upper-case field name
		[]byte{0, 0, 13, 1},                     // a request pseudo field
		[]byte{0, 0, 15, 1},                     // a header list over the limit
		[]byte{0, 0, 0, 0, 2, 2, 1},             // trailers without END_STREAM
		[]byte{0, 0, 0, 0, 2, 0, 0, 2, 0, 0},    // trailers twice
		[]byte{0, 0, 0, 0, 2, 2, 0},             // trailers with a pseudo field
		[]byte{0, 0, 0, 0, 1, 3, 0, 3, 8},       // data, then RST_STREAM CANCEL
		[]byte{0, 3, 2},                         // RST_STREAM PROTOCOL_ERROR before the answer
		[]byte{0, 3, 7},                         // RST_STREAM REFUSED_STREAM
		[]byte{0, 4, 0, 0},                      // GOAWAY last 0: not processed
		[]byte{0, 4, 1, 2, 8},                   // GOAWAY last 1, PROTOCOL_ERROR, then close
		[]byte{0, 0, 0, 0, 1, 3, 0, 8},          // data, then the connection closes
		[]byte{0, 0, 0, 0, 1, 3, 0, 4, 1, 0, 8}, // data, GOAWAY last 1, close
		[]byte{0, 0, 0, 0, 1, 5, 2, 0, 1, 1},    // padded data
		[]byte{0, 0, 0, 0, 1, 10, 4, 1, 1, 1},   // 3000 bytes: window updates
		[]byte{0, 0, 0, 0, 1, 3, 9},             // data on a stream never opened
		[]byte{0, 9, 0},                         // HEADERS on an even stream
		[]byte{0, 10},                           // PUSH_PROMISE
		[]byte{0, 11},                           // SETTINGS ACK for nothing
		[]byte{0, 5, 4, 0},                      // an invalid max frame size
		[]byte{0, 5, 5, 0},                      // an initial window too large
		[]byte{0, 6, 0, 2, 6, 0, 2},             // the connection window overflows
		[]byte{0, 6, 1, 1, 0, 0, 1},             // WINDOW_UPDATE 0 on the stream
		[]byte{0, 7, 0, 0, 0, 1},                // PING
		[]byte{3, 0, 0, 0, 1, 3, 1},             // HEAD answered with data
		[]byte{3, 0, 1, 0},                      // HEAD with content-length
		[]byte{0, 0, 0, 1, 1, 1, 1},             // data after END_STREAM
		[]byte{0, 1, 3, 1},                      // data before headers
		[]byte{12, 5, 1, 0, 0, 0, 1},            // a body larger than the window (x/net's)
	)
	return seeds
}

func TestH2ClientAgreement(t *testing.T) {
	before := h2cOwnUsed.Load()
	seeds := h2cSeeds()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for _, in := range seeds {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			h2cAgree(t, in)
		}()
	}
	wg.Wait()
	// Most seeds are requests h2Client sends itself: the comparison is not x/net against x/net.
	if own := h2cOwnUsed.Load() - before; own < int64(len(seeds))*3/4 {
		t.Errorf("h2Client sent %d of the %d seeds' requests itself", own, len(seeds))
	}
}

func FuzzH2ClientAgreement(f *testing.F) {
	for _, in := range h2cSeeds() {
		f.Add(in)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > 100 {
			return
		}
		h2cAgree(t, in)
	})
}

// newTestH2Client is an h2Client (and its x/net fallback) to addr, and a counter of the requests it left to x/net.
func newTestH2Client(t *testing.T, addr string) (h2ClientRT, *atomic.Int64) {
	return newTestH2ClientDial(t, func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	})
}

// newTestH2ClientDial is newTestH2Client with a dial function of its own.
func newTestH2ClientDial(t *testing.T, dial func(ctx context.Context, network, addr string) (net.Conn, error)) (h2ClientRT, *atomic.Int64) {
	tr, cl := newH2Transports(dial, 64<<10)
	var fell atomic.Int64
	cl.fallback = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		fell.Add(1)
		return tr.RoundTrip(r)
	})
	rt := h2ClientRT{cl, tr}
	t.Cleanup(rt.CloseIdleConnections)
	return rt, &fell
}

// Many requests at once on h2Client's connections (meshlet's HTTP/2 server on the other end): bodies both ways
// arrive whole, large responses pass the windows, trailers come through.
func TestH2ClientConcurrent(t *testing.T) {
	r := startLoop(t, func(w http.ResponseWriter, req *http.Request) {
		b, err := io.ReadAll(req.Body)
		if err != nil {
			w.WriteHeader(500)
			return
		}
		n, _ := strconv.Atoi(req.URL.Query().Get("n"))
		w.Header().Set("Trailer", "X-Sum")
		w.Header().Set("X-Req", fmt.Sprintf("%d %x", len(b), sha256.Sum256(b)))
		chunk := bytes.Repeat([]byte("0123456789abcdef"), 1024)
		h := sha256.New()
		for n > 0 {
			k := min(n, len(chunk))
			w.Write(chunk[:k])
			h.Write(chunk[:k])
			n -= k
		}
		w.Header().Set("X-Sum", fmt.Sprintf("%x", h.Sum(nil)))
	})
	rt, fell := newTestH2Client(t, r.addr)
	const workers, each = 16, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for g := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				size := []int{0, 1, 100, 70000, 5 << 20}[(g+i)%5]
				body := bytes.Repeat([]byte{byte(g), byte(i)}, (g*7+i)%3000)
				req, _ := http.NewRequestWithContext(context.Background(), "POST", fmt.Sprintf("http://%s/?n=%d", r.addr, size), bytes.NewReader(body))
				resp, err := rt.RoundTrip(req)
				if err != nil {
					errs <- err
					continue
				}
				h := sha256.New()
				n, err := io.Copy(h, resp.Body)
				resp.Body.Close()
				want := fmt.Sprintf("%d %x", len(body), sha256.Sum256(body))
				switch {
				case err != nil:
					errs <- err
				case n != int64(size):
					errs <- fmt.Errorf("response body %d bytes, want %d", n, size)
				case resp.Header.Get("X-Req") != want:
					errs <- fmt.Errorf("the server got %q, want %q", resp.Header.Get("X-Req"), want)
				case resp.Trailer.Get("X-Sum") != fmt.Sprintf("%x", h.Sum(nil)):
					errs <- fmt.Errorf("trailer %q, body's sum %x", resp.Trailer.Get("X-Sum"), h.Sum(nil))
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := fell.Load(); n != 0 {
		t.Errorf("%d requests were left to x/net", n)
	}
}

// A response body closed before its end resets its stream and gives its window back (the next requests on the
// connection get theirs); a request whose context ends while its body is read ends with the context's error.
func TestH2ClientCloseAndCancel(t *testing.T) {
	resets := make(chan error, 10)
	r := startLoop(t, func(w http.ResponseWriter, req *http.Request) {
		chunk := bytes.Repeat([]byte("x"), 16<<10)
		for range 1000 { // 16 MiB: more than the stream's window
			if _, err := w.Write(chunk); err != nil {
				resets <- err
				return
			}
			w.(http.Flusher).Flush()
		}
	})
	rt, _ := newTestH2Client(t, r.addr)
	for i := range 3 {
		req, _ := http.NewRequestWithContext(context.Background(), "GET", "http://"+r.addr+"/", nil)
		resp, err := rt.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.CopyN(io.Discard, resp.Body, 1<<20); err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if _, err := resp.Body.Read(make([]byte, 1)); err == nil {
			t.Errorf("request %d: a read after Close succeeded", i)
		}
		select {
		case <-resets: // the handler's write failed: the stream was reset
		case <-time.After(5 * time.Second):
			t.Fatalf("request %d: the server's stream was not reset", i)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+r.addr+"/", nil)
	resp, err := rt.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	io.CopyN(io.Discard, resp.Body, 1<<10)
	cancel()
	_, err = io.Copy(io.Discard, resp.Body)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("the body read after the context's end: %v, want context.Canceled", err)
	}
	resp.Body.Close()
	select {
	case <-resets:
	case <-time.After(5 * time.Second):
		t.Fatal("the canceled stream was not reset")
	}
	// All of it on one connection.
	if n := len(h2ClientConns(rt)); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

// A stream the endpoint refuses (REFUSED_STREAM) is sent again, as x/net's transport sends its own: the caller gets
// the answer to the second.
func TestH2ClientRefusedStream(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var refused atomic.Bool
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fr := h2TestServerConn(c, 10*time.Second)
				if fr == nil {
					return
				}
				ok := newH2OKAnswer()
				for {
					f, err := nextH2Frame(fr)
					if err != nil {
						return
					}
					switch f := f.(type) {
					case *http2.MetaHeadersFrame:
						if refused.CompareAndSwap(false, true) {
							fr.WriteRSTStream(f.StreamID, http2.ErrCodeRefusedStream)
							continue
						}
						ok.write(fr, f.StreamID)
					}
				}
			}()
		}
	}()
	for _, own := range []bool{false, true} {
		refused.Store(false)
		rt, _ := newTestH2Client(t, ln.Addr().String())
		var send http.RoundTripper = rt.tr
		if own {
			send = rt
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+ln.Addr().String()+"/", strings.NewReader("body"))
		resp, err := send.RoundTrip(req)
		if err != nil {
			t.Fatalf("h2Client %v: %v", own, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		if string(b) != "ok" || !refused.Load() {
			t.Errorf("h2Client %v: body %q, refused %v", own, b, refused.Load())
		}
	}
}

// h2TestServerConn reads a client's preface on c (within d) and answers with SETTINGS; nil if no preface came.
func h2TestServerConn(c net.Conn, d time.Duration, settings ...http2.Setting) *http2.Framer {
	c.SetDeadline(time.Now().Add(d))
	if _, err := io.ReadFull(c, make([]byte, len(http2.ClientPreface))); err != nil {
		return nil
	}
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.WriteSettings(settings...)
	return fr
}

// dialH2TLS is a dial function to addr over TLS offering h2, the server's certificate not checked (a test
// server's).
func dialH2TLS(addr string) func(ctx context.Context, network, _ string) (net.Conn, error) {
	return func(ctx context.Context, network, _ string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, err
		}
		return tc, nil
	}
}

// h2OKAnswer writes a raw test server's answer to a request: 200 with the body "ok".
type h2OKAnswer struct {
	hbuf bytes.Buffer
	enc  *hpack.Encoder
}

func newH2OKAnswer() *h2OKAnswer {
	a := &h2OKAnswer{}
	a.enc = hpack.NewEncoder(&a.hbuf)
	return a
}

func (a *h2OKAnswer) write(fr *http2.Framer, id uint32) {
	a.hbuf.Reset()
	a.enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: a.hbuf.Bytes(), EndHeaders: true})
	fr.WriteData(id, true, []byte("ok"))
}

// nextH2Frame reads the next frame that is not SETTINGS, acknowledging those.
func nextH2Frame(fr *http2.Framer) (http2.Frame, error) {
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		if sf, ok := f.(*http2.SettingsFrame); ok {
			if !sf.IsAck() {
				fr.WriteSettingsAck()
			}
			continue
		}
		return f, nil
	}
}

// An idle connection to an upstream waits for data holding no read buffer, no header fields and no large frame
// buffer, and serves the next request as before, on the same connection: after small and large responses (a 5 MiB
// one reads frames of 16 KiB) alike; idle for longer, its reader moves to a new goroutine (a small stack), which
// serves as before too. A plain connection waits for its socket; one over TLS, whose records are read ahead of
// the socket, in a read of one byte, which the next frame's read gets first.
func TestH2ClientIdleWait(t *testing.T) {
	handler := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		n, _ := strconv.Atoi(req.URL.Query().Get("n"))
		w.Header().Set("X-N", strconv.Itoa(n))
		w.Write(bytes.Repeat([]byte("x"), n))
	})
	t.Run("plain", func(t *testing.T) {
		r := startLoop(t, handler)
		rt, fell := newTestH2Client(t, r.addr)
		checkIdleWait(t, rt, fell, r.addr)
	})
	t.Run("tls", func(t *testing.T) {
		srv := httptest.NewUnstartedServer(handler)
		srv.EnableHTTP2 = true
		srv.StartTLS()
		t.Cleanup(srv.Close)
		addr := srv.Listener.Addr().String()
		rt, fell := newTestH2ClientDial(t, dialH2TLS(addr))
		checkIdleWait(t, rt, fell, addr)
	})
}

// h2ClientConns lists the connections rt's client holds.
func h2ClientConns(rt h2ClientRT) []*h2cConn {
	rt.cl.mu.Lock()
	defer rt.cl.mu.Unlock()
	var conns []*h2cConn
	for _, h := range rt.cl.hosts {
		conns = append(conns, h.conns...)
	}
	return conns
}

// awaitMove waits (at most 2 s) for c's reader to move once more than the moves counted; false: it did not.
func awaitMove(c *h2cConn, moves int64) bool {
	deadline := time.Now().Add(2 * time.Second)
	for c.moves.Load() == moves && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	return c.moves.Load() != moves
}

func checkIdleWait(t *testing.T, rt h2ClientRT, fell *atomic.Int64, addr string) {
	var first *h2cConn
	for i, n := range []int{10, 70000, 0, 5 << 20, 100, 100} {
		req, _ := http.NewRequestWithContext(context.Background(), "GET", fmt.Sprintf("http://%s/?n=%d", addr, n), nil)
		resp, err := rt.RoundTrip(req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || len(got) != n || resp.Header.Get("X-N") != strconv.Itoa(n) {
			t.Fatalf("request %d: %d bytes (%v), X-N %q; want %d", i, len(got), err, resp.Header.Get("X-N"), n)
		}
		conns := h2ClientConns(rt)
		if len(conns) != 1 || first != nil && conns[0] != first {
			t.Fatalf("request %d: %d connections (the first one kept: %v), want the first one alone", i, len(conns), first != nil && len(conns) > 0 && conns[0] == first)
		}
		c := conns[0]
		first = c
		deadline := time.Now().Add(2 * time.Second)
		for !c.waiting.Load() && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if !c.waiting.Load() {
			t.Fatalf("request %d: the idle connection's reader does not wait without its buffers", i)
		}
		// Written by the reader before it set waiting: no race.
		if c.br != nil || c.bigRead || c.hdrs.buf != nil || (c.tls != nil) != (c.sock == nil) {
			t.Errorf("request %d: waiting with read buffer %v, large frame buffer %v, header fields %v, TLS %v, socket %v; want none, and a socket without TLS", i, c.br != nil, c.bigRead, c.hdrs.buf != nil, c.tls != nil, c.sock != nil)
		}
	}
	// Idle past h2cIdleMove, the reader moves to a new goroutine, which waits and then serves as before.
	if !awaitMove(first, 0) {
		t.Fatalf("the reader of a connection idle for over %v did not move", h2cIdleMove)
	}
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		req, _ := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://%s/?n=%d", addr, 70000), nil)
		resp, err := rt.RoundTrip(req)
		if err != nil {
			cancel()
			t.Fatalf("request %d after the move: %v", i, err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		if err != nil || len(got) != 70000 {
			t.Fatalf("request %d after the move: %d bytes (%v), want 70000", i, len(got), err)
		}
		awaitMove(first, first.moves.Load()) // it moves again once idle again
	}
	conns := h2ClientConns(rt)
	for _, c := range conns {
		if c != first {
			t.Errorf("a new connection after the moves")
		}
	}
	if n := len(conns); n != 1 || first.moves.Load() < 3 {
		t.Errorf("%d connections, %d moves: want the first one alone, moved after each idle time", n, first.moves.Load())
	}
	if n := fell.Load(); n != 0 {
		t.Errorf("%d requests were left to x/net", n)
	}
}

// Frames a server sends while a connection has no stream (PINGs here) reach a reader that waits idle, moved or
// not, and are answered; requests after them are served on the same connection. Over TLS the idle wait reads the
// first byte of such a frame itself: the frame must still be read whole, and the next wait must not begin before
// that byte is read.
func TestH2ClientIdlePing(t *testing.T) {
	borrowed := httptest.NewUnstartedServer(nil) // for its certificate
	borrowed.StartTLS()
	defer borrowed.Close()
	for _, useTLS := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "tls"}[useTLS], func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			acks := make(chan [8]byte, 10)
			answered := make(chan struct{}, 10)
			frames := make(chan *http2.Framer, 1)
			var wmu sync.Mutex // the server's writes: its answers, and the test's pings
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				if useTLS {
					cfg := borrowed.TLS.Clone()
					cfg.NextProtos = []string{"h2"}
					c = tls.Server(c, cfg)
				}
				fr := h2TestServerConn(c, 20*time.Second)
				if fr == nil {
					return
				}
				frames <- fr
				ok := newH2OKAnswer()
				for {
					f, err := nextH2Frame(fr)
					if err != nil {
						return
					}
					switch f := f.(type) {
					case *http2.MetaHeadersFrame:
						wmu.Lock()
						ok.write(fr, f.StreamID)
						wmu.Unlock()
						answered <- struct{}{}
					case *http2.PingFrame:
						if f.IsAck() {
							acks <- f.Data
						}
					}
				}
			}()
			addr := ln.Addr().String()
			var rt h2ClientRT
			var fell *atomic.Int64
			if useTLS {
				rt, fell = newTestH2ClientDial(t, dialH2TLS(addr))
			} else {
				rt, fell = newTestH2Client(t, addr)
			}
			get := func(i int) {
				t.Helper()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/", nil)
				resp, err := rt.RoundTrip(req)
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || string(b) != "ok" {
					t.Fatalf("request %d: %q, %v", i, b, err)
				}
			}
			get(0)
			<-answered
			sfr := <-frames
			c := h2ClientConns(rt)[0]
			// The server pings the idle connection: once before its reader moves, then after each of two moves.
			for i := range 3 {
				if i > 0 {
					if !awaitMove(c, c.moves.Load()) {
						t.Fatalf("ping %d: the idle reader did not move", i)
					}
				}
				data := [8]byte{'p', 'i', 'n', 'g', byte('0' + i)}
				wmu.Lock()
				err := sfr.WritePing(false, data)
				wmu.Unlock()
				if err != nil {
					t.Fatalf("ping %d: %v", i, err)
				}
				select {
				case got := <-acks:
					if got != data {
						t.Fatalf("ping %d: ACK with %q, want %q", i, got, data)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("ping %d: no ACK", i)
				}
			}
			get(1)
			get(2)
			if n := fell.Load(); n != 0 {
				t.Errorf("%d requests were left to x/net", n)
			}
		})
	}
}
