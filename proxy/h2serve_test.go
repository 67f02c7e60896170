package proxy

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"maps"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"meshlet.dev/meshlet/proxy/h1guard"
)

// The HTTP/2 server (h2serve.go) is held to net/http's: a client sends the same frames to each (a script the
// fuzzer writes), and what each answers, stream by stream, must be the same.

// h2AgreeHandler reads the whole request body first (so that every answer depends on all the frames of its
// stream), then answers by path.
func h2AgreeHandler(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/late" { // the request body closed by the handler before its end
		r.Body.Close()
		io.WriteString(w, "late")
		return
	}
	body, err := io.ReadAll(r.Body)
	q := r.URL.Query()
	switch r.URL.Path {
	case "/big": // more than the client's window: flow control
		n, _ := strconv.Atoi(q.Get("n"))
		chunk := bytes.Repeat([]byte("0123456789"), 100)
		for i := 0; n > 0; i++ {
			k := min(n, len(chunk))
			if _, err := w.Write(chunk[:k]); err != nil {
				return
			}
			n -= k
			if i%10 == 9 {
				w.(http.Flusher).Flush()
			}
		}
	case "/trailers":
		w.Header().Set("Trailer", "X-A, x-bad\x00, Content-Length")
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "body")
		w.(http.Flusher).Flush()
		w.Header().Set("X-A", "1")
		w.Header().Set(http.TrailerPrefix+"X-B", "2")
	case "/emptytrailers":
		w.Header().Set("Trailer", "X-A")
	case "/1xx":
		w.Header().Set("Link", "</a>")
		w.Header().Set("Content-Length", "3")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		io.WriteString(w, "abc")
	case "/panic":
		io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	case "/panicearly":
		panic(http.ErrAbortHandler)
	case "/close":
		w.Header().Set("Connection", "close")
		io.WriteString(w, "bye")
	case "/status":
		c, _ := strconv.Atoi(q.Get("c"))
		if c < 100 || c > 999 {
			c = 500
		}
		w.WriteHeader(c)
		_, err := io.WriteString(w, "x")
		fmt.Fprintf(w, "%v", err)
	case "/sniff":
		io.WriteString(w, "<html><body>hi</body></html>")
	case "/headers":
		h := w.Header()
		h.Set("X-Upper", "v")
		h["x-lower-raw"] = []string{"a"}
		h["Bad Name"] = []string{"b"}
		h.Set("X-Bad-Value", "a\x00b")
		h.Set("Transfer-Encoding", "chunked")
		h.Add("Te", "trailers")
		h.Set("Content-Length", "not a number")
		h.Set("Date", "fixed")
		io.WriteString(w, "hello")
	case "/toolong":
		w.Header().Set("Content-Length", "2")
		_, err := io.WriteString(w, "abc")
		io.WriteString(w, fmt.Sprint(err))
	default:
		keys := slices.Sorted(func(yield func(string) bool) {
			for k := range r.Header {
				if !yield(k) {
					return
				}
			}
		})
		var b strings.Builder
		fmt.Fprintf(&b, "%s %s host=%q uri=%q proto=%s cl=%d tls=%v\n", r.Method, r.URL, r.Host, r.RequestURI, r.Proto,
			r.ContentLength, r.TLS != nil)
		for _, k := range keys {
			fmt.Fprintf(&b, "%s: %q\n", k, r.Header[k])
		}
		fmt.Fprintf(&b, "body %d %x err=%v trailer=%v\n", len(body), sha256.Sum256(body), err, r.Trailer)
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, b.String())
	}
}

// h2Templates are the requests a script's HEADERS frames carry (pseudo fields first, as written).
var h2Templates = [][][2]string{
	{{":method", "GET"}, {":scheme", "http"}, {":authority", "a.test"}, {":path", "/echo?x=1"}},
	{{":method", "POST"}, {":scheme", "http"}, {":authority", "a.test"}, {":path", "/echo"}, {"content-length", "5"}},
	{{":method", "POST"}, {":scheme", "https"}, {":authority", "a.test"}, {":path", "/echo"}, {"te", "trailers"}, {"trailer", "X-T, Content-Length"}},
	{{":method", "GET"}, {":scheme", "http"}, {":authority", "a.test"}, {":path", "/big?n=70000"}},
	{{":method", "GET"}, {":scheme", "http"}, {":authority", "a.test"}, {":path", "/trailers"}},
	{{":method", "GET"}, {":scheme", "http"}, {":authority", "a.test"}, {":path", "/1xx"}},
	{{":method", "GET"}, {":scheme", "http"}, {":authority", "a.test"}, {":path", "/panic"}},
	{{":method", "HEAD"}, {":scheme", "http"}, {":authority", "a.test"}, {":path", "/echo"}},
	{{":method", "GET"}, {":scheme", "http"}, {":authority", "a.test"}, {":path", "/status?c=204"}},
	{{":method", "CONNECT"}, {":authority", "a.test:443"}},
	{{":method", "GET"}, {":scheme", "http"}, {":authority", "a.test"}},
	{{":method", "GET"}, {":scheme", "ftp"}, {":authority", "a.test"}, {":path", "/"}},
	{{":method", "GET"}, {":scheme", "http"}, {":authority", "a.test"}, {":path", "/"}, {"connection", "close"}},
	{{":method", "GET"}, {":scheme", "http"}, {":authority", "a.test"}, {":path", "/"}, {"te", "gzip"}},
	{{":method", "GET"}, {":scheme", "http"}, {":authority", "u@a.test"}, {":path", "/"}},
	{{":method", "OPTIONS"}, {":scheme", "http"}, {":authority", "a.test"}, {":path", "*"}},
	{{":method", "POST"}, {":scheme", "http"}, {":authority", "a.test"}, {":path", "/echo"}, {"expect", "100-continue"}, {"content-length", "3"}},
	{{":method", "GET"}, {":scheme", "http"}, {":authority", "a.test"}, {":path", "/"}, {"cookie", "a=1"}, {"cookie", "b=2"}},
	{{":method", "GET"}, {":scheme", "http"}, {":path", "/"}, {"host", "h.test"}},
	{{":method", "GET"}, {":scheme", "http"}, {":authority", "a.test"}, {":path", "/%zz"}},
	{{":method", "GET"}, {":scheme", "http"}, {":authority", "a.test"}, {":path", "/close"}},
	{{":method", "GET"}, {":scheme", "http"}, {":authority", "a.test"}, {":path", "/sniff"}},
	{{":method", "GET"}, {":scheme", "http"}, {":authority", "a.test"}, {":path", "/headers"}},
	{{":method", "GET"}, {":scheme", "http"}, {":authority", "a.test"}, {":path", "/"}, {"x-big", strings.Repeat("v", 5000)}},
	{{":method", "GET"}, {":scheme", "http"}, {":authority", "a.test"}, {":path", "/"}, {"Upper", "x"}},
	{{":method", "GET"}, {":scheme", "http"}, {":authority", "a.test"}, {":path", "/"}, {"x-v", "a\x01b"}},
	{{":method", "GET"}, {":path", "/"}, {":scheme", "http"}, {"x-a", "1"}, {":authority", "late"}},
	{{":method", "POST"}, {":scheme", "http"}, {":authority", "a.test"}, {":path", "/late"}, {"content-length", "100000"}},
	{{":method", "GET"}, {":scheme", "http"}, {":authority", "a.test"}, {":path", "/toolong"}},
	{{":method", "GET"}, {":scheme", "http"}, {":authority", "a.test"}, {":path", "/panicearly"}},
	{{":method", "CONNECT"}, {":protocol", "websocket"}, {":scheme", "http"}, {":authority", "a.test"}, {":path", "/ws"}},
	{{":method", "POST"}, {":scheme", "http"}, {":authority", "a.test"}, {":path", "/echo"}, {"content-length", "x"}},
	{{":method", "GET"}, {":scheme", "http"}, {":authority", "a.test"}, {":path", "/emptytrailers"}},
}

// h2CloseTemplate is the template whose handler answers with Connection: close, so that the server sends GOAWAY as
// the handler writes: after its stream's end, even after its stream was reset.
const h2CloseTemplate = 20

// h2AnswerEarly are the templates answered before their body ends (the server's 400 and 431, a handler that
// closes the body, 100 Continue): the client waits for the answer to begin before the next step, which would race
// with it.
var h2AnswerEarly = []int{12, 13, 16, 23, 27}

// h2AnswerWhole are those of h2AnswerEarly answered whole (all but 100 Continue): the server resets the stream after
// the answer (RST_STREAM NO_ERROR, the request's body unread), and the client waits for that reset too. net/http's
// server queues it behind the answer and may acknowledge the next PING first; what it does with a frame on the stream
// depends on whether the reset was written (ignored before, an error after), so the client waits for the reset.
var h2AnswerWhole = []int{12, 13, 23, 27}

// h2Script turns fuzzer bytes into the frames a client sends after its preface and first SETTINGS, and notes
// the streams it opened.
type h2Script struct {
	ops     [][]byte   // the frames of each step; the client waits for the server to handle one before the next
	ends    [][]uint32 // per step, the streams whose request it ended: the client waits for their answers
	early   [][]uint32 // per step, the streams answered before their request ends: the client waits for a first frame
	earlies []uint32
	whole   map[uint32]bool // streams answered whole before their request ends: the client waits for their reset
	buf     bytes.Buffer
	fr      *http2.Framer
	enc     *hpack.Encoder
	hbuf    bytes.Buffer
	nextID  uint32
	cur     uint32
	open    map[uint32]bool // opened by the client, not ended by it
	opened  []uint32
	// resetBy: streams the client reset (their answers race with the reset), and idle streams the server resets
	// before the client opens them (net/http closes the stream that has the id when its RST_STREAM's write
	// completes, which may be the one opened since: its answer races with that write)
	resetBy map[uint32]bool
	ended   []uint32
	closes  bool // a request the handler answers with Connection: close (a GOAWAY)
}

func newH2Script() *h2Script {
	s := &h2Script{nextID: 1, open: map[uint32]bool{}, resetBy: map[uint32]bool{}, whole: map[uint32]bool{}}
	s.fr = http2.NewFramer(&s.buf, nil)
	s.fr.AllowIllegalWrites = true
	s.enc = hpack.NewEncoder(&s.hbuf)
	s.buf.WriteString(http2.ClientPreface)
	s.fr.WriteSettings()
	s.cut()
	return s
}

// cut ends a step.
func (s *h2Script) cut() {
	s.ops = append(s.ops, bytes.Clone(s.buf.Bytes()))
	s.ends = append(s.ends, s.ended)
	s.early = append(s.early, s.earlies)
	s.ended, s.earlies = nil, nil
	s.buf.Reset()
}

// end notes that the step ends the request of stream id.
func (s *h2Script) end(id uint32) {
	if id%2 == 1 {
		s.ended = append(s.ended, id)
	}
}

func (s *h2Script) block(t int) []byte {
	s.hbuf.Reset()
	for _, f := range h2Templates[t%len(h2Templates)] {
		s.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	return bytes.Clone(s.hbuf.Bytes())
}

// build interprets in: each op takes its byte and the argument bytes it needs (0 past the end).
func (s *h2Script) build(in []byte) {
	arg := func() byte { return nextFuzzByte(&in) }
	for ops := 0; len(in) > 0 && ops < 64; ops++ {
		if ops > 0 {
			s.cut()
		}
		switch op := arg(); op % 13 {
		case 0, 12: // a new stream
			t, flags := int(arg()), arg()
			id := s.nextID
			if flags&0x40 != 0 && s.cur != 0 {
				id = s.cur // an id used already
			} else if flags&0x80 != 0 {
				id++ // an even id
			} else {
				s.nextID += 2
			}
			block := s.block(t)
			if t%len(h2Templates) == h2CloseTemplate {
				s.closes = true
			}
			end := flags&1 != 0
			p := http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndStream: end, EndHeaders: flags&2 == 0}
			if flags&4 != 0 {
				p.Priority = http2.PriorityParam{StreamDep: id}
				if flags&8 != 0 {
					p.Priority.StreamDep = id + 2
				}
			}
			if flags&2 != 0 && len(block) > 1 { // the block split with a CONTINUATION
				p.BlockFragment, p.EndHeaders = block[:len(block)/2], false
				s.fr.WriteHeaders(p)
				s.fr.WriteContinuation(id, true, block[len(block)/2:])
			} else {
				p.EndHeaders = true
				s.fr.WriteHeaders(p)
			}
			if id%2 == 1 && !slices.Contains(s.opened, id) {
				s.opened = append(s.opened, id)
				s.open[id] = !end
				if end {
					s.end(id)
				} else if slices.Contains(h2AnswerEarly, t%len(h2Templates)) {
					s.earlies = append(s.earlies, id)
					s.whole[id] = slices.Contains(h2AnswerWhole, t%len(h2Templates))
				}
			}
			s.cur = id
		case 1: // DATA
			n, flags := int(arg()), arg()
			end := flags&1 != 0
			id := s.cur
			if flags&2 != 0 {
				id = 0
			}
			if flags&8 != 0 {
				id = s.cur + 1 // an even stream
			}
			data := bytes.Repeat([]byte{'d'}, n)
			if flags&4 != 0 {
				s.fr.WriteDataPadded(id, end, data, make([]byte, int(flags>>4)))
			} else {
				s.fr.WriteData(id, end, data)
			}
			if end {
				s.open[id] = false
				s.end(id)
			}
		case 2: // RST_STREAM
			b := arg()
			code := http2.ErrCode(b % 15)
			if b&0x80 != 0 { // on an even (never opened) stream
				s.fr.WriteRSTStream(s.cur+1, code)
				break
			}
			s.fr.WriteRSTStream(s.cur, code)
			s.resetBy[s.cur] = true
			s.open[s.cur] = false
		case 3: // WINDOW_UPDATE
			which, b := arg(), arg()
			incr := []uint32{0, 1, 1000, 1 << 20, 1<<31 - 1, 70000}[int(b)%6]
			id := uint32(0)
			if which&1 != 0 {
				id = s.cur
			}
			if which&2 != 0 {
				id = s.nextID + 10 // an idle stream
			}
			if which&4 != 0 {
				id = s.cur + 1 // an even one
			}
			s.fr.WriteWindowUpdate(id, incr)
			if incr == 0 && id%2 == 1 && !slices.Contains(s.opened, id) { // a stream error on an idle stream
				s.resetBy[id] = true
			}
		case 4: // PING
			b := arg()
			id := uint32(0)
			if b&2 != 0 {
				id = 1
			}
			if id == 0 {
				s.fr.WritePing(b&1 != 0, [8]byte{b})
			} else {
				s.fr.WriteRawFrame(http2.FramePing, 0, id, make([]byte, 8))
			}
		case 5: // SETTINGS
			b, v := arg(), arg()
			vals := []uint32{0, 1, 10, 100, 16384, 65535, 1 << 20, 1<<31 - 1, 1 << 31, 1<<24 - 1}
			ids := []http2.SettingID{http2.SettingInitialWindowSize, http2.SettingMaxFrameSize,
				http2.SettingHeaderTableSize, http2.SettingEnablePush, http2.SettingMaxConcurrentStreams, 0x99,
				http2.SettingEnableConnectProtocol, http2.SettingMaxHeaderListSize}
			switch {
			case b&0x80 != 0:
				s.fr.WriteSettingsAck()
			case b&0x40 != 0: // a duplicate
				id := ids[int(b)%len(ids)]
				s.fr.WriteSettings(http2.Setting{ID: id, Val: 1}, http2.Setting{ID: id, Val: 1})
			default:
				s.fr.WriteSettings(http2.Setting{ID: ids[int(b)%len(ids)], Val: vals[int(v)%len(vals)]})
			}
		case 6: // a CONTINUATION on its own
			s.fr.WriteContinuation(s.cur, arg()&1 == 0, s.block(int(arg())))
		case 7: // PRIORITY
			b := arg()
			id := s.cur
			if b&1 != 0 {
				id = s.nextID + 4
			}
			dep := uint32(0)
			if b&2 != 0 {
				dep = id
			}
			s.fr.WritePriority(id, http2.PriorityParam{StreamDep: dep, Weight: b})
			if dep == id && id%2 == 1 && !slices.Contains(s.opened, id) { // a stream error on an idle stream
				s.resetBy[id] = true
			}
		case 8: // trailers
			b := arg()
			s.hbuf.Reset()
			s.enc.WriteField(hpack.HeaderField{Name: "x-t", Value: "tv"})
			if b&2 != 0 {
				s.enc.WriteField(hpack.HeaderField{Name: ":path", Value: "/p"})
			}
			if b&4 != 0 {
				s.enc.WriteField(hpack.HeaderField{Name: "content-length", Value: "1"})
			}
			s.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: s.cur, BlockFragment: bytes.Clone(s.hbuf.Bytes()),
				EndStream: b&1 == 0, EndHeaders: true})
			if b&1 == 0 {
				s.open[s.cur] = false
				s.end(s.cur)
			}
		case 9: // GOAWAY from the client
			s.fr.WriteGoAway(s.nextID, http2.ErrCode(arg()%3), nil)
		case 10: // raw HPACK bytes as a header block
			n := int(arg() % 16)
			raw := make([]byte, n)
			for i := range raw {
				raw[i] = arg()
			}
			id := s.nextID
			s.nextID += 2
			s.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: raw, EndStream: true, EndHeaders: true})
			s.opened = append(s.opened, id)
			s.cur = id
		case 11: // an unknown frame type, or a frame on the wrong stream
			b := arg()
			if b&1 != 0 {
				s.fr.WriteRawFrame(0x20, 0, s.cur, []byte{b})
			} else {
				s.fr.WriteRawFrame(http2.FrameSettings, 0, 1, nil)
			}
		}
	}
	// The streams left open are ended, so that each handler (which reads its body to the end) answers; then a
	// PING, whose ACK says the server has handled every frame before it.
	for _, id := range s.opened {
		if s.open[id] {
			s.fr.WriteData(id, true, nil)
		}
	}
	s.fr.WritePing(false, h2Sentinel)
	s.cut()
}

var h2Sentinel = [8]byte{'s', 'e', 'n', 't', 'i', 'n', 'e', 'l'}

// h2Outcome is what a server answered: per stream, and for the connection.
type h2Outcome struct {
	streams map[uint32]*strings.Builder
	ended   map[uint32]bool
	goAway  string
	pings   int
}

func (o *h2Outcome) String(skip map[uint32]bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "goaway %s pings %d\n", o.goAway, o.pings)
	ids := slices.Sorted(func(yield func(uint32) bool) {
		for id := range o.streams {
			if !yield(id) {
				return
			}
		}
	})
	for _, id := range ids {
		if skip[id] {
			continue
		}
		fmt.Fprintf(&b, "stream %d: %s\n", id, o.streams[id].String())
	}
	return b.String()
}

// runH2 serves one connection with net/http's server (own false) or h2Conn, sends script, and reads the answers
// until each stream the script opened has ended, the server sent GOAWAY and ended the streams it will serve, or
// the connection closed (at most 3 s).
func runH2(t testing.TB, own bool, s *h2Script) *h2Outcome {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	guard := h1guard.NewListener(ln, h1guard.Options{MaxHead: 8 << 10})
	srv := &http.Server{Handler: http.HandlerFunc(h2AgreeHandler), ConnContext: h1guard.ConnContext,
		ReadHeaderTimeout: 5 * time.Second, MaxHeaderBytes: 4096, ErrorLog: log.New(h2TestLog, "", 0),
		HTTP2: &http.HTTP2Config{MaxConcurrentStreams: 4, MaxReadFrameSize: 16 << 10, MaxDecoderHeaderTableSize: 4096,
			MaxEncoderHeaderTableSize: h2EncoderTableSize, MaxReceiveBufferPerConnection: 1 << 20, MaxReceiveBufferPerStream: 1 << 20}}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	// Only the test's own connection counts: a stray one (a dial meant for an earlier listener on this port) must
	// neither block the hook nor end h2NetHTTPConns twice. Its address is known once the dial returns (ours).
	closed := make(chan struct{}, 1)
	ours := make(chan string, 1)
	srv.ConnState = func(nc net.Conn, st http.ConnState) {
		if st == http.StateClosed {
			addr := <-ours
			ours <- addr
			if nc.RemoteAddr().String() != addr {
				return
			}
			closed <- struct{}{}
			if !own {
				h2NetHTTPConns.Done()
			}
		}
	}
	if !own {
		h2NetHTTPConns.Add(1)
	}
	hs := newH1Server(srv, ln.Addr())
	hs.h2c = own
	done := make(chan struct{})
	go func() {
		defer close(done)
		hs.serve(guard)
	}()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ln.Close()
		hs.closeAll()
		srv.Close()
		<-done
		if own { // the connection's goroutines have ended (net/http's: awaitH2Closes)
			select {
			case <-closed:
			case <-ctx.Done():
				t.Errorf("the server's connection did not close")
			}
		}
		guard.Wait(ctx)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		ours <- ""
		t.Fatal(err)
	}
	ours <- c.LocalAddr().String()
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	// The client writes each step, then a PING, and waits for its ACK (the server has read the step's frames) before
	// the next: what a server does with frames that come together depends on when its writes happen, in net/http's
	// server. Answers (and the resets that follow an early one) are written by handlers, maybe after the ACK: the
	// client waits for those a step ended or answered early (s.ends, s.early, s.whole).
	// Window updates (for the DATA the client reads) are sent once the script is written: until then, held.
	var wuMu sync.Mutex
	wfr := http2.NewFramer(c, nil)
	scriptDone := false
	held := map[uint32]uint32{}
	windowUpdate := func(id, n uint32) {
		wuMu.Lock()
		defer wuMu.Unlock()
		if scriptDone {
			wfr.WriteWindowUpdate(id, n)
		} else {
			held[id] += n
		}
	}
	acks := make(chan struct{}, 1)
	endedCh := make(chan uint32, 1024)
	endedSet := map[uint32]bool{}
	seenCh := make(chan uint32, 1024) // a stream's first HEADERS (1xx included) or RST_STREAM
	seenSet := map[uint32]bool{}
	rstCh := make(chan uint32, 1024) // a stream's RST_STREAM
	rstSet := map[uint32]bool{}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		defer func() {
			wuMu.Lock()
			defer wuMu.Unlock()
			scriptDone = true
			for id, n := range held {
				wfr.WriteWindowUpdate(id, n)
			}
		}()
		for i, op := range s.ops {
			if _, err := c.Write(op); err != nil || i == len(s.ops)-1 {
				return
			}
			var ping [8]byte
			copy(ping[:], "barrier")
			if _, err := c.Write(append([]byte{0, 0, 8, 6, 0, 0, 0, 0, 0}, ping[:]...)); err != nil {
				return
			}
			select {
			case <-acks:
			case <-stop:
				return
			}
			// A request this step ended is answered before the next step (what comes next on its stream would
			// race with the answer), unless the server goes quiet (the answer waits for a window update).
			for _, id := range s.early[i] {
				if !awaitStream(seenCh, seenSet, id, stop) {
					return
				}
				if s.whole[id] && !awaitStream(rstCh, rstSet, id, stop) {
					return
				}
			}
			for _, id := range s.ends[i] {
				if !awaitStream(endedCh, endedSet, id, stop) {
					return
				}
			}
		}
	}()
	o := &h2Outcome{streams: map[uint32]*strings.Builder{}, ended: map[uint32]bool{}, goAway: "none"}
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.MaxHeaderListSize = 1 << 20
	var lastServed uint32 = 1<<31 - 1
	acked := false
	data := map[uint32]*bytes.Buffer{}
	flushData := func(id uint32) {
		if d := data[id]; d != nil && d.Len() > 0 {
			fmt.Fprintf(o.streams[id], "data %q; ", d.Bytes())
			d.Reset()
		}
	}
	pending := func() bool {
		if !acked {
			return true
		}
		for _, id := range s.opened {
			if !o.ended[id] && id <= lastServed && !s.resetBy[id] { // a stream the client reset gets no answer
				return true
			}
		}
		return false
	}
	for pending() && lastServed != 0 {
		f, err := fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				continue
			}
			break
		}
		id := f.Header().StreamID
		sb := o.streams[id]
		if sb == nil && id != 0 {
			sb = new(strings.Builder)
			o.streams[id] = sb
		}
		if _, isData := f.(*http2.DataFrame); !isData && id != 0 {
			flushData(id)
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			var fields []string
			for _, hf := range f.Fields {
				if hf.Name == "date" && hf.Value != "fixed" {
					continue
				}
				fields = append(fields, hf.Name+"="+hf.Value)
			}
			fmt.Fprintf(sb, "headers%v end=%v; ", fields, f.StreamEnded())
			select {
			case seenCh <- id:
			default:
			}
			if f.StreamEnded() {
				o.ended[id] = true
				select {
				case endedCh <- id:
				default:
				}
			}
		case *http2.DataFrame:
			if data[id] == nil {
				data[id] = new(bytes.Buffer)
			}
			data[id].Write(f.Data())
			if f.StreamEnded() {
				flushData(id)
				fmt.Fprintf(sb, "end; ")
				o.ended[id] = true
				select {
				case endedCh <- id:
				default:
				}
			}
			if n := f.Length; n > 0 {
				windowUpdate(0, n)
				if !o.ended[id] {
					windowUpdate(id, n)
				}
			}
		case *http2.RSTStreamFrame:
			if !o.ended[id] {
				fmt.Fprintf(sb, "rst %v; ", f.ErrCode)
			}
			o.ended[id] = true
			select {
			case seenCh <- id:
			default:
			}
			select {
			case endedCh <- id:
			default:
			}
			select {
			case rstCh <- id:
			default:
			}
		case *http2.GoAwayFrame:
			if o.goAway == "none" {
				o.goAway = fmt.Sprintf("%v last=%d", f.ErrCode, f.LastStreamID)
			}
			lastServed = min(lastServed, f.LastStreamID)
			if f.ErrCode != http2.ErrCodeNo {
				lastServed = 0 // after an error, what the streams were answered races with the GOAWAY
			}
		case *http2.PingFrame:
			if f.IsAck() && f.Data == h2Sentinel {
				acked = true
			} else if f.IsAck() && string(f.Data[:7]) == "barrier" {
				acks <- struct{}{}
			} else if f.IsAck() {
				o.pings++
			}
		}
	}
	for id := range data {
		flushData(id)
	}
	if s.closes && o.goAway == "none" && lastServed != 0 {
		// The GOAWAY of a handler's Connection: close comes when it writes, which may be after everything else
		// (its stream reset, its answer dropped): wait for it a while.
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				break
			}
			if ga, ok := f.(*http2.GoAwayFrame); ok {
				o.goAway = fmt.Sprintf("%v last=%d", ga.ErrCode, ga.LastStreamID)
				break
			}
		}
	}
	return o
}

func h2Agree(t testing.TB, in []byte) {
	s := newH2Script()
	s.build(in)
	a := runH2(t, false, s)
	b := runH2(t, true, s)
	skip := maps.Clone(s.resetBy)
	if a.goAway != "none" && !strings.HasPrefix(a.goAway, "NO_ERROR") {
		skip = nil
		a.streams, b.streams = nil, nil // after an error GOAWAY, the streams' answers race with it
	}
	if x, y := a.String(skip), b.String(skip); x != y {
		t.Errorf("input %q:\nnet/http: %s\nh2Conn:   %s", in, truncate(x, 3000), truncate(y, 3000))
	}
}

// h2Seeds: each template alone, with a body, and the error cases by name.
func h2Seeds() [][]byte {
	var seeds [][]byte
	for i := range h2Templates {
		seeds = append(seeds, []byte{0, byte(i), 1})                   // HEADERS with END_STREAM
		seeds = append(seeds, []byte{0, byte(i), 0, 1, 5, 1})          // a 5-byte body
		seeds = append(seeds, []byte{0, byte(i), 2, 1, 3, 0, 8, 0})    // CONTINUATION, a body, trailers
		seeds = append(seeds, []byte{5, 0, 2, 0, byte(i), 1, 5, 0x80}) // the client's window is 10 bytes
	}
	seeds = append(seeds,
		[]byte{0, 0, 0x81},                // an even stream id
		[]byte{0, 0, 1, 0, 0, 0x41},       // an id used again
		[]byte{0, 0, 5},                   // a stream depending on itself
		[]byte{1, 5, 0},                   // DATA on an idle stream
		[]byte{0, 0, 1, 1, 5, 0},          // DATA on a half-closed stream
		[]byte{0, 1, 0, 1, 9, 1},          // more DATA than its Content-Length
		[]byte{0, 1, 0, 1, 2, 1},          // less
		[]byte{0, 0, 1, 2, 8},             // RST_STREAM
		[]byte{2, 0},                      // RST_STREAM on an idle stream
		[]byte{0, 0, 1, 2, 0x88},          // RST_STREAM on an even stream
		[]byte{0, 0, 1, 3, 4, 2},          // WINDOW_UPDATE on an even stream
		[]byte{0, 0, 1, 1, 3, 8},          // DATA on an even stream
		[]byte{3, 0, 0},                   // WINDOW_UPDATE of 0 on the connection
		[]byte{3, 0, 4, 3, 0, 4},          // the connection's window overflows
		[]byte{0, 3, 0, 3, 1, 4, 3, 1, 4}, // a stream's window overflows
		[]byte{3, 2, 1},                   // WINDOW_UPDATE on an idle stream
		[]byte{4, 0, 4, 1, 4, 2},          // PINGs, an ACK, one on a stream
		[]byte{5, 0x80},                   // an ACK for nothing
		[]byte{5, 0x40},                   // duplicate settings
		[]byte{5, 0, 8},                   // an initial window too large
		[]byte{5, 1, 0},                   // a max frame size too small
		[]byte{5, 3, 3},                   // ENABLE_PUSH=100
		[]byte{5, 2, 0, 0, 0, 1},          // header table size 0
		[]byte{6, 0, 0},                   // a CONTINUATION with no HEADERS
		[]byte{7, 2},                      // PRIORITY on itself
		[]byte{7, 1},                      // PRIORITY on an idle stream
		[]byte{0, 0, 0, 8, 0, 8, 0},       // trailers twice
		[]byte{0, 2, 0, 8, 1},             // trailers without END_STREAM
		[]byte{0, 2, 0, 8, 2},             // trailers with a pseudo field
		[]byte{0, 2, 0, 1, 3, 0, 8, 0},    // declared trailers
		[]byte{9, 0, 0, 0, 1},             // GOAWAY, then a stream
		[]byte{10, 3, 0x82, 0x86, 0x84},   // raw HPACK: no :authority
		[]byte{10, 2, 0xff, 0xff},         // raw HPACK garbage
		[]byte{11, 1},                     // an unknown frame type
		[]byte{11, 0},                     // SETTINGS on a stream
		[]byte{0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1}, // past MaxConcurrentStreams (4)
		[]byte{5, 0x80, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1}, // the same with the settings acknowledged
		[]byte{0, 3, 1, 0, 3, 1, 0, 3, 1},                            // three /big answers, each more than the window
		[]byte{0, 27, 0, 1, 200, 0, 1, 200, 0, 1, 5, 1},              // a body the handler closes
	)
	return seeds
}

// awaitStream waits until id is in set, which ch's ids go into, or until nothing came for 100 ms; false: stop.
func awaitStream(ch <-chan uint32, set map[uint32]bool, id uint32, stop <-chan struct{}) bool {
	for !set[id] {
		select {
		case e := <-ch:
			set[e] = true
		case <-stop:
			return false
		case <-time.After(100 * time.Millisecond):
			return true
		}
	}
	return true
}

// h2NetHTTPConns counts the connections net/http's server has not closed yet: after a connection error its frame
// reader stops, and the connection closes after its GOAWAY timeout (1 s), not when the client closes it.
var h2NetHTTPConns sync.WaitGroup

// awaitH2Closes waits (at most 3 s) for net/http's connections to close: no goroutine outlives the test.
func awaitH2Closes(t testing.TB) {
	done := make(chan struct{})
	go func() { h2NetHTTPConns.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Errorf("net/http's connections did not close")
	}
}

func TestH2Agreement(t *testing.T) {
	defer awaitH2Closes(t)
	for _, in := range h2Seeds() {
		h2Agree(t, in)
	}
}

func FuzzH2Agreement(f *testing.F) {
	f.Cleanup(func() { awaitH2Closes(f) })
	for _, in := range h2Seeds() {
		f.Add(in)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > 200 {
			return
		}
		h2Agree(t, in)
	})
}

var h2TestLog io.Writer = io.Discard

// handshakeListener completes each TLS handshake before Accept returns, as the inbound listener (mtls.Listener)
// does: the guard then hands a connection that chose h2 over as it is.
type handshakeListener struct{ net.Listener }

func (l handshakeListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		tc := c.(*tls.Conn)
		if err := tc.Handshake(); err != nil {
			c.Close()
			continue
		}
		return tc, nil
	}
}

// A TLS 1.3 connection that chose h2 is served by h2Conn, with each request's TLS state; a TLS 1.2 one by net/http's
// server (which checks TLS 1.2's cipher suite against HTTP/2's list).
func TestH2OverTLS(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	for _, tc := range []struct {
		version uint16
		want    string
	}{{tls.VersionTLS13, "tls=true h2conns=1"}, {tls.VersionTLS12, "tls=true h2conns=0"}} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		tln := tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"},
			MaxVersion: tc.version})
		guard := h1guard.NewListener(handshakeListener{tln}, h1guard.Options{MaxHead: 8 << 10})
		var hs *h1Server
		srv := &http.Server{ConnContext: h1guard.ConnContext, ErrorLog: log.New(io.Discard, "", 0),
			Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				hs.mu.Lock()
				n := len(hs.h2conns)
				hs.mu.Unlock()
				fmt.Fprintf(w, "tls=%v h2conns=%d", r.TLS != nil, n)
			})}
		srv.Protocols = new(http.Protocols)
		srv.Protocols.SetHTTP1(true)
		srv.Protocols.SetHTTP2(true)
		hs = newH1Server(srv, ln.Addr())
		hs.h2tls = true
		done := make(chan struct{})
		go func() { defer close(done); hs.serve(guard) }()
		tr := &http2.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, MaxVersion: tc.version}}
		resp, err := tr.RoundTrip(httptest.NewRequest("GET", "https://"+ln.Addr().String()+"/", nil).WithContext(context.Background()))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != tc.want || resp.ProtoMajor != 2 {
			t.Errorf("TLS %x: %s %q, want HTTP/2 %q", tc.version, resp.Proto, body, tc.want)
		}
		tr.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ln.Close()
		hs.shutdown(ctx)
		srv.Shutdown(ctx)
		<-done
		guard.Wait(ctx)
		cancel()
	}
}

// limitListener wraps each connection as the listeners' connection limit does (limitedConn).
type limitListener struct{ net.Listener }

func (l limitListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &limitedConn{Conn: c, budget: &connBudget{}}, nil
}

// startGuardedH2C serves h on a loopback listener behind the HTTP/1.1 guard and the connection limit's wrapper,
// HTTP/1.1 and h2c, as the proxy's listeners do; tweak (nil: none) adjusts the server before it starts. It returns
// the server and its address; the test's end shuts it down.
func startGuardedH2C(t *testing.T, h http.Handler, tweak func(*h1Server)) (*h1Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	guard := h1guard.NewListener(limitListener{ln}, h1guard.Options{MaxHead: 8 << 10})
	srv := &http.Server{ConnContext: h1guard.ConnContext, ErrorLog: log.New(io.Discard, "", 0), Handler: h}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	hs := newH1Server(srv, ln.Addr())
	hs.h2c = true
	if tweak != nil {
		tweak(hs)
	}
	done := make(chan struct{})
	go func() { defer close(done); hs.serve(guard) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ln.Close()
		if err := hs.shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		srv.Shutdown(ctx)
		<-done
		guard.Wait(ctx)
	})
	return hs, ln.Addr().String()
}

var helloHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") })

// getHello sends a GET on cc and checks that the answer is helloHandler's.
func getHello(cc *http2.ClientConn, addr string) error {
	resp, err := cc.RoundTrip(httptest.NewRequest("GET", "http://"+addr+"/", nil).WithContext(context.Background()))
	if err != nil {
		return err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(body) != "hello" {
		return fmt.Errorf("answer %q, %v; want hello", body, err)
	}
	return nil
}

// An idle HTTP/2 connection waits for its next frame without a read buffer (under the connection limit's wrapper
// too), and takes one again for the next request.
func TestH2IdleHoldsNoReadBuffer(t *testing.T) {
	hs, addr := startGuardedH2C(t, helloHandler, nil)
	cc := dialH2C(t, addr)
	waiting := func() bool {
		for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			hs.mu.Lock()
			n, idle := len(hs.h2conns), 0
			for hc := range hs.h2conns {
				if hc.waiting.Load() {
					idle++
				}
			}
			hs.mu.Unlock()
			if n == 1 && idle == 1 {
				return true
			}
		}
		return false
	}
	for i := range 3 {
		if err := getHello(cc, addr); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if !waiting() {
			t.Fatalf("after request %d the connection does not wait without its read buffer", i)
		}
	}
}

// A connection that waits long is moved to a goroutine of its own (serveParked) and served there as before: with
// the sweep every 3 ms and requests 0 to 8 ms apart on eight connections, the moves race with the requests (a
// request arriving as the sweep sets its deadline must not fail), and the connections end with their clients.
func TestH2IdleConnMoved(t *testing.T) {
	hs, addr := startGuardedH2C(t, helloHandler, func(s *h1Server) { s.h2sweepEvery = 3 * time.Millisecond })
	var wg sync.WaitGroup
	for i := range 8 {
		cc := dialH2C(t, addr) // (t.Fatal only on the test's goroutine)
		wg.Go(func() {
			rnd := mrand.New(mrand.NewPCG(uint64(i), 7))
			for j := range 150 {
				if err := getHello(cc, addr); err != nil {
					t.Errorf("connection %d, request %d: %v", i, j, err)
					break
				}
				time.Sleep(time.Duration(rnd.IntN(8000)) * time.Microsecond)
			}
			cc.Close()
		})
	}
	wg.Wait()
	t.Logf("%d moves", hs.h2moved.Load())
	if n := hs.h2moved.Load(); n < 8 {
		t.Errorf("%d moves of a waiting connection, want at least one per connection", n)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		hs.mu.Lock()
		n := len(hs.h2conns)
		hs.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still served 5 s after their clients closed them", n)
		}
	}
	// A connection moved while idle is still the server's: its shutdown (the cleanup's, which fails the test if it
	// times out) closes it, and its goroutine ends (goleak, at the package's end).
	cc := dialH2C(t, addr)
	if err := getHello(cc, addr); err != nil {
		t.Fatal(err)
	}
	moved := hs.h2moved.Load()
	for deadline := time.Now().Add(5 * time.Second); hs.h2moved.Load() == moved; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("an idle connection not moved in 5 s")
		}
	}
	if err := getHello(cc, addr); err != nil {
		t.Fatalf("after the move: %v", err)
	}
	for deadline := time.Now().Add(5 * time.Second); hs.h2moved.Load() == moved+1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the connection not moved again in 5 s")
		}
	}
}

// socketOf looks under the wrappers that hold no bytes of their own, and only those.
func TestSocketOf(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tcp := c.(*net.TCPConn)
	for _, tc := range []struct {
		c    net.Conn
		want bool
	}{
		{tcp, true},
		{&limitedConn{Conn: tcp}, true},
		{&appPortConn{carriedConn{&limitedConn{Conn: tcp}}, 80}, true},
		{&routedConn{carriedConn: carriedConn{tcp}}, true},
		{struct{ net.Conn }{tcp}, false}, // a wrapper it does not know may hold bytes
		{&limitedConn{Conn: struct{ net.Conn }{tcp}}, false},
	} {
		if got := socketOf(tc.c) != nil; got != tc.want {
			t.Errorf("socketOf(%T) found a socket: %v, want %v", tc.c, got, tc.want)
		}
	}
}

// h2RawClient speaks HTTP/2 frames to a server for the tests that watch the connection itself.
type h2RawClient struct {
	c    net.Conn
	fr   *http2.Framer
	enc  *hpack.Encoder
	hbuf bytes.Buffer
}

func dialH2Raw(t *testing.T, addr string) *h2RawClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	rc := &h2RawClient{c: c, fr: http2.NewFramer(c, c)}
	rc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	rc.enc = hpack.NewEncoder(&rc.hbuf)
	io.WriteString(c, http2.ClientPreface)
	rc.fr.WriteSettings()
	return rc
}

func (rc *h2RawClient) get(id uint32, path string) {
	rc.hbuf.Reset()
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "a.test"}, {":path", path}} {
		rc.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: rc.hbuf.Bytes(), EndStream: true, EndHeaders: true})
}

// next returns the next frame that is not SETTINGS, WINDOW_UPDATE or PING, or the read error.
func (rc *h2RawClient) next() (http2.Frame, error) {
	for {
		f, err := rc.fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				rc.fr.WriteSettingsAck()
			}
			continue
		case *http2.WindowUpdateFrame, *http2.PingFrame:
			continue
		}
		return f, nil
	}
}

// answer reads stream id's answer to its end: its status and body.
func (rc *h2RawClient) answer(t *testing.T, id uint32) (string, string) {
	t.Helper()
	var status, body string
	for {
		f, err := rc.next()
		if err != nil {
			t.Fatalf("stream %d: %v", id, err)
		}
		if f.Header().StreamID != id {
			t.Fatalf("stream %d: got %v", id, f)
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			status = f.PseudoValue("status")
			if f.StreamEnded() {
				return status, body
			}
		case *http2.DataFrame:
			body += string(f.Data())
			if f.StreamEnded() {
				return status, body
			}
		default:
			t.Fatalf("stream %d: got %v", id, f)
		}
	}
}

// Shutdown: an idle HTTP/2 connection gets GOAWAY and is closed; a busy one gets GOAWAY (the streams it names still
// served, later ones ignored), its stream under way is answered, and then it is closed.
func TestH2Shutdown(t *testing.T) {
	started := make(chan struct{})
	release := make(chan struct{})
	r := startLoop(t, func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/hold" {
			close(started)
			<-release
		}
		io.WriteString(w, "ok")
	})
	idle := dialH2Raw(t, r.addr)
	idle.get(1, "/")
	if st, body := idle.answer(t, 1); st != "200" || body != "ok" {
		t.Fatalf("idle connection's request: %s %q", st, body)
	}
	busy := dialH2Raw(t, r.addr)
	busy.get(1, "/hold")
	<-started
	stopped := make(chan struct{})
	go func() { r.stop(); close(stopped) }()
	for _, rc := range []*h2RawClient{idle, busy} {
		f, err := rc.next()
		if ga, ok := f.(*http2.GoAwayFrame); err != nil || !ok || ga.ErrCode != http2.ErrCodeNo || ga.LastStreamID != 1 {
			t.Fatalf("got %v, %v; want GOAWAY NO_ERROR with last stream 1", f, err)
		}
	}
	if f, err := idle.next(); err == nil {
		t.Errorf("idle connection: got %v after GOAWAY, want it closed", f)
	}
	busy.get(3, "/") // after the GOAWAY: not served
	close(release)
	if st, body := busy.answer(t, 1); st != "200" || body != "ok" {
		t.Errorf("stream under way: %s %q, want 200 ok", st, body)
	}
	if f, err := busy.next(); err == nil {
		t.Errorf("busy connection: got %v after its last stream, want it closed", f)
	}
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("shutdown did not end after the last stream")
	}
}

// h2Pipe keeps what it is given in chunks and hands it back in order, whatever the sizes written and read.
func TestH2PipeChunks(t *testing.T) {
	var mu sync.Mutex
	mu.Lock()
	defer mu.Unlock()
	for _, expected := range []int64{-1, 100, 70000} {
		p := &h2Pipe{expected: expected}
		var in, out []byte
		buf := make([]byte, 50000)
		for i := range 300 {
			d := bytes.Repeat([]byte{byte(i)}, (i*7919)%17000)
			in = append(in, d...)
			if !p.write(d) {
				t.Fatal("write refused")
			}
			if i%3 == 0 {
				n := p.read(buf[:(i*104729)%50000])
				out = append(out, buf[:n]...)
			}
			if p.len() != len(in)-len(out) {
				t.Fatalf("len %d, want %d", p.len(), len(in)-len(out))
			}
		}
		for p.len() > 0 {
			n := p.read(buf)
			out = append(out, buf[:n]...)
		}
		if !bytes.Equal(in, out) {
			t.Fatalf("expected %d: %d bytes read back differ from the %d written", expected, len(out), len(in))
		}
		p.closeWithError(io.EOF, nil)
		if p.write([]byte("x")) {
			t.Error("write after the end taken")
		}
	}
}

// A large request body and a large response pass through h2Conn whole, in both directions at once.
func TestH2LargeBodies(t *testing.T) {
	r := startLoop(t, func(w http.ResponseWriter, req *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, req.Body)
		w.Header().Set("X-Sum", fmt.Sprintf("%d %x %v", n, h.Sum(nil), err))
		w.Write(bytes.Repeat([]byte("0123456789abcdef"), 1<<16)) // 1 MiB
	})
	cc := dialH2C(t, r.addr)
	body := make([]byte, 3<<20+12345)
	for i := range body {
		body[i] = byte(i * 31)
	}
	for range 3 {
		req := httptest.NewRequest("POST", "http://"+r.addr+"/", bytes.NewReader(body)).WithContext(context.Background())
		resp, err := cc.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := fmt.Sprintf("%d %x <nil>", len(body), sha256.Sum256(body)); resp.Header.Get("X-Sum") != want || err != nil {
			t.Errorf("request body at the handler: %q, want %q (%v)", resp.Header.Get("X-Sum"), want, err)
		}
		if !bytes.Equal(got, bytes.Repeat([]byte("0123456789abcdef"), 1<<16)) {
			t.Errorf("response body: %d bytes, not the 1 MiB sent", len(got))
		}
	}
}

// The last bytes of a request body whose END_STREAM has come are read with io.EOF, so that the HTTP/2 transport
// sends them with END_STREAM in one DATA frame (one write) instead of following them with an empty one.
func TestH2BodyEOFWithLastData(t *testing.T) {
	r := startLoop(t, func(w http.ResponseWriter, req *http.Request) {
		buf := make([]byte, 4096)
		var reads []string
		for {
			n, err := req.Body.Read(buf)
			reads = append(reads, fmt.Sprintf("%d %v", n, err))
			if err != nil {
				break
			}
		}
		w.Header().Set("X-Reads", strings.Join(reads, ", "))
	})
	cc := dialH2C(t, r.addr)
	for _, size := range []int{1, 1000, 4096} {
		// A known length: the transport sends the body in one DATA frame with END_STREAM.
		req := httptest.NewRequest("POST", "http://"+r.addr+"/", bytes.NewReader(make([]byte, size))).WithContext(context.Background())
		resp, err := cc.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got, want := resp.Header.Get("X-Reads"), fmt.Sprintf("%d EOF", size); got != want {
			t.Errorf("%d bytes: the handler's reads were %q, want %q", size, got, want)
		}
	}
	// A body the client has not ended: its bytes come without io.EOF.
	pr, pw := io.Pipe()
	req := httptest.NewRequest("POST", "http://"+r.addr+"/", pr).WithContext(context.Background())
	go func() {
		pw.Write([]byte("abc"))
		time.Sleep(50 * time.Millisecond)
		pw.Close()
	}()
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got, want := resp.Header.Get("X-Reads"), "3 <nil>, 0 EOF"; got != want {
		t.Errorf("a body ended later: the handler's reads were %q, want %q", got, want)
	}
}

// lowerHeader lowers a name from its table of common names or by strings.ToLower, the same either way.
func TestLowerHeader(t *testing.T) {
	for k, v := range h2CommonLower {
		if got, ok := lowerHeader(k); !ok || got != v || v != strings.ToLower(k) {
			t.Errorf("lowerHeader(%q) = %q, %v; table %q", k, got, ok, v)
		}
	}
	for _, tc := range []struct{ in, want string }{{"X-Odd-Name", "x-odd-name"}, {"lower", "lower"}, {"Grpc-Status", "grpc-status"}} {
		if got, ok := lowerHeader(tc.in); !ok || got != tc.want {
			t.Errorf("lowerHeader(%q) = %q, %v", tc.in, got, ok)
		}
	}
	if _, ok := lowerHeader("X-\u00e9"); ok {
		t.Error("a name that is not ASCII was lowered")
	}
}

// dialH2C opens an h2c (prior knowledge) client connection to addr with x/net's client, closed when the test ends.
func dialH2C(t *testing.T, addr string) *http2.ClientConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(c)
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// nextFuzzByte takes the next of a fuzzer's bytes from *in: 0 past the end (the frame scripts' arguments).
func nextFuzzByte(in *[]byte) byte {
	if len(*in) == 0 {
		return 0
	}
	b := (*in)[0]
	*in = (*in)[1:]
	return b
}
