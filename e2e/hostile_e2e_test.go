package e2e_test

// Hostile and malformed input against a real meshlet process, each sent by a raw TCP client: HTTP/1.1 request
// smuggling shapes, malformed and oversized headers, slow clients, and HTTP/2 abuse (rapid reset, too many streams,
// oversized header lists, invalid pseudo-headers). Each must get the right answer, never a crash or a hang, and the
// app behind must never see the bad request.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"meshlet.dev/meshlet/internal/meshlettest"
	"meshlet.dev/meshlet/proxy"
)

// hostileTarget is one meshlet with two HTTP listeners in front of the same app: its inbound listener and a
// per-upstream outbound listener with peer: app.
type hostileTarget struct {
	m         *meshlettest.Proc
	listeners map[string]string // "inbound", "outbound" -> address
	appSeen   atomic.Int64      // requests the app received
	mu        sync.Mutex
	appPaths  []string
	folded    []string                      // X-Folded values the app received
	hold      atomic.Pointer[chan struct{}] // requests to /hold block until it is closed
}

func startHostileTarget(t *testing.T) *hostileTarget {
	t.Helper()
	ht := &hostileTarget{}
	app := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ht.appSeen.Add(1)
		ht.mu.Lock()
		ht.appPaths = append(ht.appPaths, r.URL.Path)
		if v, ok := r.Header["X-Folded"]; ok {
			ht.folded = append(ht.folded, strings.Join(v, ","))
		}
		ht.mu.Unlock()
		if hold := ht.hold.Load(); r.URL.Path == "/hold" && hold != nil {
			select {
			case <-*hold:
			case <-r.Context().Done():
			}
		}
		io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "ok %s", r.URL.Path)
	}), true, nil)
	in, out := meshlettest.FreeAddr(t), meshlettest.FreeAddr(t)
	cfg := e2eConfig{Name: "api", Address: meshlettest.HostOf(app), Protocol: "http", InboundListen: in,
		Upstreams: []e2eUpstream{{Name: "api", Listen: out, Protocol: "http", Peer: "app",
			Endpoints: []string{meshlettest.HostOf(app)}}},
		Admin: meshlettest.FreeAddr(t)}
	ht.m = meshlettest.Start(t, cfg.Admin, cfg.yaml())
	ht.listeners = map[string]string{"inbound": in, "outbound": out}
	return ht
}

// sawPath reports whether the app received a request for path.
func (ht *hostileTarget) sawPath(path string) bool {
	ht.mu.Lock()
	defer ht.mu.Unlock()
	for _, p := range ht.appPaths {
		if p == path {
			return true
		}
	}
	return false
}

// assertHealthy checks that meshlet is alive, /ready answers 200 and a normal request through addr works.
func (ht *hostileTarget) assertHealthy(t *testing.T, addr string) {
	t.Helper()
	select {
	case <-ht.m.Exited():
		t.Fatalf("meshlet exited: %v", ht.m.WaitErr())
	default:
	}
	if code, body := ht.m.AdminGet(t, "/ready"); code != http.StatusOK {
		t.Fatalf("/ready: %d %s", code, body)
	}
	resp, body := meshlettest.RawRequest(t, addr, "GET /normal HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
	if resp.StatusCode != http.StatusOK || body != "ok /normal" {
		t.Fatalf("normal request after hostile input: %d %q", resp.StatusCode, body)
	}
}

func TestHostileHTTP1(t *testing.T) {
	ht := startHostileTarget(t)
	bigLine := "GET /big-line-" + strings.Repeat("a", 100<<10) + " HTTP/1.1\r\nHost: api\r\n\r\n"
	var bigHdrs strings.Builder
	bigHdrs.WriteString("GET /big-headers HTTP/1.1\r\nHost: api\r\n")
	for i := range 100 {
		fmt.Fprintf(&bigHdrs, "X-Filler-%d: %s\r\n", i, strings.Repeat("b", 1<<10))
	}
	bigHdrs.WriteString("\r\n")
	for _, tc := range []struct {
		name, path, req string
		status          int
	}{
		{"two different content-lengths", "/two-cl",
			"POST /two-cl HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400},
		{"space in header name", "/bad-name",
			"GET /bad-name HTTP/1.1\r\nHost: api\r\nBad Name: v\r\n\r\n", 400},
		{"separator in header name", "/bad-name2",
			"GET /bad-name2 HTTP/1.1\r\nHost: api\r\nX(y): v\r\n\r\n", 400},
		{"space before colon", "/space-colon",
			"GET /space-colon HTTP/1.1\r\nHost: api\r\nX-A : v\r\n\r\n", 400},
		{"NUL in header value", "/nul",
			"GET /nul HTTP/1.1\r\nHost: api\r\nX-A: a\x00b\r\n\r\n", 400},
		{"bare CR in header value", "/bare-cr",
			"GET /bare-cr HTTP/1.1\r\nHost: api\r\nX-A: a\rb\r\n\r\n", 400},
		{"bare CR ending a header line", "/bare-cr2",
			"GET /bare-cr2 HTTP/1.1\r\nHost: api\rX-A: b\r\n\r\n", 400},
		{"bare LF inside a header line", "/bare-lf",
			"GET /bare-lf HTTP/1.1\r\nHost: api\r\nX-A: a\nb\r\n\r\n", 400},
		{"invalid content-length", "/bad-cl",
			"POST /bad-cl HTTP/1.1\r\nHost: api\r\nContent-Length: 1x\r\n\r\nx", 400},
		{"unsupported transfer-encoding", "/bad-te",
			"POST /bad-te HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501},
		{"oversized request line", "/big-line-", bigLine, 431},
		{"oversized headers", "/big-headers", bigHdrs.String(), 431},
	} {
		for _, ln := range []string{"inbound", "outbound"} {
			t.Run(tc.name+"/"+ln, func(t *testing.T) {
				resp, closed := meshlettest.RawExchange(t, ht.listeners[ln], tc.req)
				if resp == nil {
					t.Fatalf("connection closed without an answer, want %d", tc.status)
				}
				if resp.StatusCode != tc.status {
					t.Errorf("status %d, want %d", resp.StatusCode, tc.status)
				}
				if !closed {
					t.Errorf("connection left open after %d", resp.StatusCode)
				}
				if strings.HasSuffix(tc.path, "-") {
					ht.mu.Lock()
					for _, p := range ht.appPaths {
						if strings.HasPrefix(p, tc.path) {
							t.Errorf("the app received the bad request %.40q", p)
						}
					}
					ht.mu.Unlock()
				} else if ht.sawPath(tc.path) {
					t.Errorf("the app received the bad request %s", tc.path)
				}
			})
		}
	}
	// Obsolete line folding: RFC 9112 section 5.2 lets a server reject it with 400 or replace each obs-fold with SP
	// before forwarding. net/http does the latter, so the app gets one unfolded line and nothing to misparse.
	for ln, addr := range ht.listeners {
		t.Run("obsolete line folding/"+ln, func(t *testing.T) {
			resp, _ := meshlettest.RawExchange(t, addr, "GET /fold HTTP/1.1\r\nHost: api\r\nX-Folded: a\r\n b\r\nConnection: close\r\n\r\n")
			if resp == nil || resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("answer %v, want 400 or the request forwarded unfolded", resp)
			}
			ht.mu.Lock()
			defer ht.mu.Unlock()
			for _, v := range ht.folded {
				if v != "a b" {
					t.Errorf("the app received X-Folded %q, want the fold replaced by SP (%q)", v, "a b")
				}
			}
		})
	}
	for ln, addr := range ht.listeners {
		t.Run("healthy afterwards/"+ln, func(t *testing.T) { ht.assertHealthy(t, addr) })
	}
}

// TestHostileHTTP1ContentLengthAndTransferEncoding: a request with both Content-Length and Transfer-Encoding must be
// refused with 400 and the connection closed (as Envoy does by default), never forwarded.
func TestHostileHTTP1ContentLengthAndTransferEncoding(t *testing.T) {
	ht := startHostileTarget(t)
	for ln, addr := range ht.listeners {
		t.Run(ln, func(t *testing.T) {
			resp, closed := meshlettest.RawExchange(t, addr, "POST /cl-te HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\n"+
				"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
			if resp == nil || resp.StatusCode != http.StatusBadRequest || !closed {
				t.Errorf("answer %v, connection closed %v; want 400 and closed", resp, closed)
			}
			if ht.sawPath("/cl-te") {
				t.Error("the app received the request")
			}
		})
	}
}

// TestHostileHTTP1SlowHeaders sends a request's headers one byte every 200ms: the header read timeout (10s) must
// close the connection before the headers are complete, and the app must not see the request.
func TestHostileHTTP1SlowHeaders(t *testing.T) {
	ht := startHostileTarget(t)
	addr := ht.listeners["inbound"]
	c := meshlettest.DialHeld(t, addr)
	defer c.Close()
	req := "GET /slow HTTP/1.1\r\nHost: api\r\nX-Pad: " + strings.Repeat("s", 200) + "\r\n\r\n" // ~46s at 200ms a byte
	start := time.Now()
	deadline := start.Add(25 * time.Second)
	closedAt := time.Duration(0)
	for i := 0; i < len(req) && time.Now().Before(deadline); i++ {
		c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write([]byte{req[i]}); err != nil {
			closedAt = time.Since(start)
			break
		}
		// Wait 200ms for meshlet to close the connection; a read that times out means it is still open.
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		var b [512]byte
		n, err := c.Read(b[:])
		if meshlettest.IsTimeout(err) {
			continue
		}
		if n > 0 && strings.HasPrefix(string(b[:n]), "HTTP/1.1 2") {
			t.Fatalf("slow request answered: %q", b[:n])
		}
		closedAt = time.Since(start)
		break
	}
	if closedAt == 0 {
		t.Fatalf("connection still open after %v of byte-by-byte headers", time.Since(start).Round(time.Second))
	}
	if closedAt < 9*time.Second {
		t.Errorf("connection closed after %v, before the 10s header read timeout", closedAt)
	}
	t.Logf("slow client cut off after %v", closedAt.Round(100*time.Millisecond))
	if ht.sawPath("/slow") {
		t.Error("the app received the slow request")
	}
	ht.assertHealthy(t, addr)
}

// h2Event is one frame read from meshlet, reduced to what the tests assert.
type h2Event struct {
	typ      http2.FrameType
	stream   uint32
	code     http2.ErrCode // RST_STREAM and GOAWAY
	status   string        // :status of a HEADERS frame
	endStrm  bool
	lastStrm uint32 // GOAWAY
}

// h2Client is a raw prior-knowledge h2c connection (meshlettest.H2Conn) driven frame by frame, each frame sent
// as it is written; a goroutine reads the server's frames into events.
type h2Client struct {
	*meshlettest.H2Conn
	wmu    sync.Mutex
	events chan h2Event
	maxHdr uint32 // the server's SETTINGS_MAX_HEADER_LIST_SIZE, 0 if unsent
}

func dialH2(t *testing.T, addr string) *h2Client {
	t.Helper()
	c := meshlettest.DialHeld(t, addr)
	hc, err := meshlettest.NewH2Conn(c, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	h := &h2Client{H2Conn: hc, events: make(chan h2Event, 1<<16), maxHdr: hc.Settings[http2.SettingMaxHeaderListSize]}
	go h.readLoop()
	return h
}

func (h *h2Client) readLoop() {
	defer close(h.events)
	for {
		f, err := h.Framer.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				continue
			}
			return
		}
		ev := h2Event{typ: f.Header().Type, stream: f.Header().StreamID}
		switch f := f.(type) {
		case *http2.RSTStreamFrame:
			ev.code = f.ErrCode
		case *http2.GoAwayFrame:
			ev.code, ev.lastStrm = f.ErrCode, f.LastStreamID
		case *http2.MetaHeadersFrame:
			ev.status, ev.endStrm = f.PseudoValue("status"), f.StreamEnded()
		case *http2.DataFrame:
			ev.endStrm = f.StreamEnded()
		case *http2.PingFrame:
			if !f.IsAck() {
				h.wmu.Lock()
				h.Framer.WritePing(true, f.Data)
				h.Flush()
				h.wmu.Unlock()
			}
		}
		h.events <- ev
	}
}

func (h *h2Client) write(t *testing.T, fn func() error) {
	t.Helper()
	h.wmu.Lock()
	defer h.wmu.Unlock()
	if err := fn(); err != nil {
		t.Fatalf("writing frame: %v", err)
	}
	if err := h.Flush(); err != nil {
		t.Fatalf("writing frame: %v", err)
	}
}

// headers sends a HEADERS frame (with CONTINUATION frames when the block is larger than 16 KiB) of fields in order.
func (h *h2Client) headers(t *testing.T, stream uint32, fields [][2]string, endStream bool) {
	t.Helper()
	h.wmu.Lock()
	defer h.wmu.Unlock()
	block := h.Block(fields)
	const chunk = 16 << 10
	first := block[:min(len(block), chunk)]
	rest := block[len(first):]
	err := h.Framer.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, BlockFragment: first,
		EndStream: endStream, EndHeaders: len(rest) == 0})
	for err == nil && len(rest) > 0 {
		if err = h.Flush(); err != nil {
			break
		}
		n := min(len(rest), chunk)
		err = h.Framer.WriteContinuation(stream, n == len(rest), rest[:n])
		rest = rest[n:]
	}
	if err == nil {
		err = h.Flush()
	}
	if err != nil {
		t.Fatalf("writing HEADERS: %v", err)
	}
}

// until reads events until done returns true, the connection closes or timeout passes; it returns whether done
// returned true.
func (h *h2Client) until(timeout time.Duration, done func(h2Event) bool) bool {
	tm := time.NewTimer(timeout)
	defer tm.Stop()
	for {
		select {
		case ev, ok := <-h.events:
			if !ok {
				return false
			}
			if done(ev) {
				return true
			}
		case <-tm.C:
			return false
		}
	}
}

func getFields(path string) [][2]string {
	return [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "api"}, {":path", path}}
}

// streamOutcome waits for the end of stream: its :status, or the RST_STREAM or GOAWAY code that ended it.
func (h *h2Client) streamOutcome(t *testing.T, stream uint32) (status string, rst *http2.ErrCode, goaway *http2.ErrCode) {
	t.Helper()
	ok := h.until(15*time.Second, func(ev h2Event) bool {
		switch {
		case ev.typ == http2.FrameGoAway:
			c := ev.code
			goaway = &c
			return ev.lastStrm < stream
		case ev.stream != stream:
			return false
		case ev.typ == http2.FrameRSTStream:
			c := ev.code
			rst = &c
			return true
		case ev.typ == http2.FrameHeaders && ev.status != "":
			status = ev.status
			return true
		}
		return false
	})
	if !ok && status == "" && rst == nil && goaway == nil {
		t.Fatalf("stream %d: no answer within 15s", stream)
	}
	return status, rst, goaway
}

func TestHostileHTTP2(t *testing.T) {
	ht := startHostileTarget(t)
	for _, ln := range []string{"inbound", "outbound"} {
		addr := ht.listeners[ln]
		t.Run("normal request/"+ln, func(t *testing.T) {
			h := dialH2(t, addr)
			h.headers(t, 1, getFields("/h2-normal"), true)
			if st, rst, ga := h.streamOutcome(t, 1); st != "200" {
				t.Fatalf("status %q rst %v goaway %v, want 200", st, rst, ga)
			}
		})
		t.Run("invalid pseudo-headers/"+ln, func(t *testing.T) {
			for i, tc := range []struct {
				fields [][2]string
				status string // an answer accepted instead of a stream error ("" for none)
			}{
				{[][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "api"}, {":path", "/p-unknown"}, {":foo", "x"}}, ""},
				{[][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "api"}}, ""},                     // no :path
				{[][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", "/p-dup"}, {":path", "/p-dup2"}}, ""}, // duplicate
				{[][2]string{{":method", "GET"}, {":scheme", "http"}, {"x-a", "b"}, {":path", "/p-after"}}, ""},       // after a regular field
				{[][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", "/p-upper"}, {"X-Upper", "b"}}, ""},   // uppercase name
				{[][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", "/p-resp"}, {":status", "200"}}, ""},  // response pseudo-header
				// A connection-specific field: net/http answers 400 on the stream, which also keeps it from the app.
				{[][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", "/p-conn"}, {"connection", "keep-alive"}}, "400"},
			} {
				h := dialH2(t, addr)
				h.headers(t, 1, tc.fields, true)
				st, rst, ga := h.streamOutcome(t, 1)
				switch {
				case st != "" && st == tc.status:
				case st != "":
					t.Errorf("case %d: answered %s, want a stream error", i, st)
				case rst == nil && ga == nil:
					t.Errorf("case %d: neither RST_STREAM nor GOAWAY", i)
				case rst != nil && *rst != http2.ErrCodeProtocol:
					t.Errorf("case %d: RST_STREAM %v, want PROTOCOL_ERROR", i, *rst)
				case rst == nil && *ga != http2.ErrCodeProtocol:
					t.Errorf("case %d: GOAWAY %v, want PROTOCOL_ERROR", i, *ga)
				}
			}
			for _, p := range []string{"/p-unknown", "/p-dup", "/p-dup2", "/p-after", "/p-upper", "/p-conn", "/p-resp"} {
				if ht.sawPath(p) {
					t.Errorf("the app received %s", p)
				}
			}
		})
		t.Run("oversized header list/"+ln, func(t *testing.T) {
			h := dialH2(t, addr)
			if h.maxHdr == 0 || h.maxHdr > 1<<20 {
				t.Errorf("SETTINGS_MAX_HEADER_LIST_SIZE %d, want a bound", h.maxHdr)
			}
			fields := getFields("/h2-big")
			for i := range 100 {
				fields = append(fields, [2]string{"x-filler-" + strconv.Itoa(i), strings.Repeat("b", 1<<10)})
			}
			h.headers(t, 1, fields, true)
			if h.maxHdr > 64<<10+4<<10 {
				t.Errorf("SETTINGS_MAX_HEADER_LIST_SIZE %d, want about 64 KiB", h.maxHdr)
			}
			st, rst, ga := h.streamOutcome(t, 1)
			refused := st == "431" || rst != nil && *rst == http2.ErrCodeProtocol ||
				rst == nil && ga != nil && *ga == http2.ErrCodeProtocol
			if !refused {
				t.Errorf("status %q rst %v goaway %v, want 431 or PROTOCOL_ERROR", st, rst, ga)
			}
			if ht.sawPath("/h2-big") {
				t.Error("the app received the oversized request")
			}
			t.Logf("oversized header list: status %q rst %v goaway %v", st, rst, ga)
		})
		t.Run("too many concurrent streams/"+ln, func(t *testing.T) {
			testTooManyStreams(t, ht, addr)
		})
		t.Run("rapid reset/"+ln, func(t *testing.T) {
			testRapidReset(t, ht, addr)
		})
		t.Run("healthy afterwards/"+ln, func(t *testing.T) { ht.assertHealthy(t, addr) })
	}
}

// testTooManyStreams opens 1000 streams (meshlet's MaxConcurrentStreams) that the app holds, then 10 more: those
// must be refused, and the first 1000 still answered once the app lets go.
func testTooManyStreams(t *testing.T, ht *hostileTarget, addr string) {
	const maxStreams, extra = 1000, 10
	hold := make(chan struct{})
	ht.hold.Store(&hold)
	var once sync.Once
	release := func() { once.Do(func() { close(hold) }) }
	defer release()
	h := dialH2(t, addr)
	for i := range maxStreams + extra {
		h.headers(t, uint32(2*i+1), getFields("/hold"), true)
	}
	refused := map[uint32]http2.ErrCode{}
	var goaway *h2Event
	ok := h.until(30*time.Second, func(ev h2Event) bool {
		switch ev.typ {
		case http2.FrameRSTStream:
			refused[ev.stream] = ev.code
		case http2.FrameGoAway:
			goaway = &ev
			return true
		}
		return len(refused) >= extra
	})
	if !ok {
		t.Fatalf("only %d of %d excess streams refused within 30s (goaway %v)", len(refused), extra, goaway)
	}
	for id, code := range refused {
		if id <= 2*maxStreams-1 {
			t.Errorf("stream %d (within the limit) reset with %v", id, code)
		}
		if code != http2.ErrCodeRefusedStream && code != http2.ErrCodeProtocol {
			t.Errorf("stream %d reset with %v, want REFUSED_STREAM or PROTOCOL_ERROR", id, code)
		}
	}
	release()
	answered := 0
	h.until(60*time.Second, func(ev h2Event) bool {
		if ev.typ == http2.FrameHeaders && ev.status == "200" {
			answered++
		}
		return answered == maxStreams
	})
	if answered != maxStreams {
		t.Errorf("%d of the %d streams within the limit answered 200", answered, maxStreams)
	}
}

// testRapidReset sends many HEADERS each followed at once by RST_STREAM (CVE-2023-44487): meshlet must stay healthy
// and the app see at most one request per stream.
func testRapidReset(t *testing.T, ht *hostileTarget, addr string) {
	const n = 5000
	before := ht.appSeen.Load()
	h := dialH2(t, addr)
	var werr error
	for i := range n {
		id := uint32(2*i + 1)
		h.wmu.Lock()
		werr = h.Framer.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: h.Block(getFields("/reset")),
			EndStream: true, EndHeaders: true})
		if werr == nil {
			werr = h.Flush()
		}
		if werr == nil {
			werr = h.Framer.WriteRSTStream(id, http2.ErrCodeCancel)
		}
		if werr == nil {
			werr = h.Flush()
		}
		h.wmu.Unlock()
		if werr != nil {
			break // meshlet may close the connection of an abusive client
		}
	}
	// Drain what meshlet sends until it closes the connection or goes quiet.
	var goaway *h2Event
	h.until(5*time.Second, func(ev h2Event) bool {
		if ev.typ == http2.FrameGoAway {
			goaway = &ev
		}
		return false
	})
	seen := ht.appSeen.Load() - before
	t.Logf("rapid reset: %d streams, write error %v, goaway %+v, app saw %d", n, werr, goaway, seen)
	if seen > n {
		t.Errorf("the app saw %d requests for %d streams", seen, n)
	}
	// In-flight work drains: meshlet's goroutines come back near where they were.
	meshlettest.Eventually(t, 20*time.Second, "meshlet goroutines back below 300", func() bool {
		return ht.m.MetricSum(t, "go_goroutines", nil) < 300
	})
}

// TestHostileConfiguredLimits sets small inbound.limits and checks that the inbound listener enforces them while
// the outbound listener keeps the defaults.
func TestHostileConfiguredLimits(t *testing.T) {
	app := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "ok %s", r.URL.Path)
	}), true, nil)
	in, out, admin := meshlettest.FreeAddr(t), meshlettest.FreeAddr(t), meshlettest.FreeAddr(t)
	f := meshlettest.Sidecar("api", admin, proxy.UpstreamConfig{Name: "api", Listen: out, Peer: "app", Endpoints: []string{meshlettest.HostOf(app)}})
	f.Service.Address, f.Inbound.Listen = meshlettest.HostOf(app), in
	f.Inbound.Limits = proxy.ListenerLimits{MaxHeaderBytes: 4096, ReadHeaderTimeout: time.Second, IdleTimeout: 3 * time.Second, MaxConcurrentStreams: 5}
	f.Outbound.Limits.MaxConnections = 3
	m := meshlettest.StartFile(t, f)
	big := "GET /big HTTP/1.1\r\nHost: api\r\nX-Big: " + strings.Repeat("b", 16<<10) + "\r\nConnection: close\r\n\r\n"
	t.Run("max_header_bytes", func(t *testing.T) {
		if resp, _ := meshlettest.RawExchange(t, in, big); resp == nil || resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("inbound: %v, want 431", resp)
		}
		if resp, _ := meshlettest.RawExchange(t, out, big); resp == nil || resp.StatusCode != http.StatusOK {
			t.Errorf("outbound (default limit): %v, want 200", resp)
		}
	})
	t.Run("max_connections", func(t *testing.T) { testMaxConnections(t, m, out) })
	t.Run("max_concurrent_streams", func(t *testing.T) {
		h := dialH2(t, in)
		if got, ok := h.Settings[http2.SettingMaxConcurrentStreams]; !ok || got != 5 {
			t.Errorf("SETTINGS_MAX_CONCURRENT_STREAMS %d (sent %v), want 5", got, ok)
		}
	})
	// Both timeouts, well below the defaults: a kept-alive connection that sends nothing more is closed after 3s, one
	// that stops in the middle of its headers after 1s.
	for _, tc := range []struct {
		name, partial string
		min, max      time.Duration
	}{
		{"idle_timeout", "", 2500 * time.Millisecond, 6 * time.Second},
		{"read_header_timeout", "GET / HTTP/1.1\r\nHo", 500 * time.Millisecond, 2500 * time.Millisecond},
	} {
		name, partial := tc.name, tc.partial
		t.Run(name, func(t *testing.T) {
			c := meshlettest.DialHeld(t, in)
			defer c.Close()
			if name == "idle_timeout" {
				// A complete request first, so the connection is idle between requests.
				io.WriteString(c, "GET /first HTTP/1.1\r\nHost: api\r\n\r\n")
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil || resp.StatusCode != http.StatusOK {
					t.Fatalf("first request: %v %v", resp, err)
				}
				resp.Body.Close()
			}
			start := time.Now()
			io.WriteString(c, partial)
			c.SetReadDeadline(time.Now().Add(8 * time.Second))
			_, err := io.Copy(io.Discard, c)
			if meshlettest.IsTimeout(err) {
				t.Fatalf("connection still open after %v", time.Since(start).Round(time.Millisecond))
			}
			if d := time.Since(start); d < tc.min || d > tc.max {
				t.Errorf("closed after %v, want between %v and %v", d, tc.min, tc.max)
			}
		})
	}
	if code, _ := m.AdminGet(t, "/ready"); code != http.StatusOK {
		t.Errorf("/ready %d", code)
	}
	f.Inbound.Limits.MaxHeaderBytes = 10
	out, code := meshlettest.Exec(t, "check", "-config", meshlettest.WriteConfig(t, f.MustYAML(t)))
	if code == 0 || !strings.Contains(out, "inbound.limits.max_header_bytes") {
		t.Errorf("meshlet check on max_header_bytes 10: exit %d, %s", code, out)
	}
}

// testMaxConnections: with outbound.limits.max_connections 3 on addr, three kept-alive connections are served, a
// fourth is closed at accept unanswered and counted, and once one of the three closes a new connection is served.
func testMaxConnections(t *testing.T, m *meshlettest.Proc, addr string) {
	open := map[string]string{"direction": "outbound", "listener": "api"}
	meshlettest.Eventually(t, 10*time.Second, "connections from earlier subtests closed", func() bool {
		return m.MetricSum(t, "meshlet_connections_open", open) == 0
	})
	serve := func(c net.Conn) error {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "GET /conn HTTP/1.1\r\nHost: api\r\n\r\n"); err != nil {
			return err
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	dial := func() net.Conn { return meshlettest.DialHeld(t, addr) }
	var held []net.Conn
	for i := range 3 {
		c := dial()
		if err := serve(c); err != nil {
			t.Fatalf("connection %d within the limit: %v", i, err)
		}
		held = append(held, c)
	}
	if err := serve(dial()); err == nil {
		t.Fatal("a fourth connection was served beyond max_connections 3")
	}
	if v := m.MetricSum(t, "meshlet_connections_refused_total", open); v < 1 {
		t.Errorf("meshlet_connections_refused_total%v = %v, want >= 1", open, v)
	}
	held[0].Close()
	meshlettest.Eventually(t, 10*time.Second, "a new connection served after one of the three closed", func() bool {
		return serve(dial()) == nil
	})
}
