package e2e_test

// HTTP/2 control- and empty-frame floods against a real meshlet's outbound listener (h2c, prior knowledge): PING,
// SETTINGS, zero-length DATA, empty HEADERS, zero-increment WINDOW_UPDATE and CONTINUATION floods (CVE-2019-9512,
// -9515, -9518, CVE-2023-45288). meshlet relies on net/http's HTTP/2 server for all of them; each subtest checks the
// protection that server has against that flood, that meshlet's memory stays bounded, and that a well-behaved client
// on another connection is served during and after the flood.
//
// The flooding client reads nothing while it floods. For most floods it first asks for a 64 MiB response with its
// flow-control windows open wide, so that meshlet's writes to it block: whatever meshlet then owes it for the flood
// has to wait in meshlet, which is the attack the queued-control-frame limit is for.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"meshlet.dev/meshlet/internal/meshlettest"
	"meshlet.dev/meshlet/proxy"
)

const (
	// floodFrames is how many frames a flood writes at most: five times net/http's limit of 10000 control frames
	// queued on a connection (http2maxQueuedControlFrames).
	floodFrames = 50_000
	// emptyFrames is how many frames the floods that meshlet must read to the end (empty DATA, CONTINUATION) write.
	emptyFrames = 300_000
	// floodTime bounds each flood's writing, whatever its frame count (the race-built meshlet reads 10000 to 100000
	// frames a second, depending on the machine's load).
	floodTime = 60 * time.Second
	// floodHeapBudget is how much meshlet's Go heap in use may grow over its level before a flood.
	floodHeapBudget = 64 << 20
	// floodRSSBudget is how much its resident memory may grow: more, for the e2e binary is built with -race, whose
	// shadow memory and goroutine records grow with the frames and goroutines a flood goes through (a SETTINGS
	// flood adds about 90 MiB to the race binary's RSS and nothing to a plain build's, whose heap stays flat).
	floodRSSBudget = 256 << 20
)

// floodConn is a raw h2c connection (meshlettest.H2Conn) that writes frames as fast as meshlet reads them and
// reads nothing until told.
type floodConn struct{ *meshlettest.H2Conn }

func dialFlood(t *testing.T, addr string) *floodConn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			// Before connect, so that the window the client advertises is small too.
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		return errors.Join(err, serr)
	}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	h, err := meshlettest.NewH2Conn(c, 4096)
	if err != nil {
		t.Fatal(err)
	}
	h.Framer.AllowIllegalWrites = true // zero WINDOW_UPDATE increments
	return &floodConn{h}
}

// flood calls write(i) for i from 0 until n frames are written, a write fails (meshlet closed the connection) or
// floodTime passes (a write then fails with a timeout); it returns the number of frames written and the write error.
func (f *floodConn) flood(n int, write func(i int) error) (int, error) {
	f.Conn.SetWriteDeadline(time.Now().Add(floodTime))
	defer f.Conn.SetWriteDeadline(time.Time{})
	for i := range n {
		if err := write(i); err != nil {
			return i, err
		}
	}
	return n, f.W.Flush()
}

// floodOutcome is what meshlet sent on the flooding connection, read after the flood.
type floodOutcome struct {
	frames       int
	pingAcks     int
	settingsAcks int
	rsts         map[http2.ErrCode]int
	goaway       *http2.ErrCode
	status       map[uint32]string // :status per stream
	closed       bool              // meshlet closed the connection (EOF or reset)
	err          error             // what ended the reading
}

func (o floodOutcome) String() string {
	ga := "none"
	if o.goaway != nil {
		ga = o.goaway.String()
	}
	return fmt.Sprintf("%d frames read (%d PING ACKs, %d SETTINGS ACKs, RST_STREAM %v, GOAWAY %s, statuses %v), "+
		"closed %v (%v)", o.frames, o.pingAcks, o.settingsAcks, o.rsts, ga, o.status, o.closed, o.err)
}

// drain reads what meshlet sent until it closes the connection, done returns true, or nothing arrives for quiet
// (the connection is then open). It reads for at most 60s.
func (f *floodConn) drain(quiet time.Duration, done func(o *floodOutcome) bool) floodOutcome {
	o := floodOutcome{rsts: map[http2.ErrCode]int{}, status: map[uint32]string{}}
	end := time.Now().Add(60 * time.Second)
	for {
		rd := time.Now().Add(quiet)
		if rd.After(end) {
			rd = end
		}
		f.Conn.SetReadDeadline(rd)
		fr, err := f.Framer.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				continue
			}
			o.closed = !meshlettest.IsTimeout(err)
			o.err = err
			return o
		}
		o.frames++
		switch fr := fr.(type) {
		case *http2.PingFrame:
			if fr.IsAck() {
				o.pingAcks++
			}
		case *http2.SettingsFrame:
			if fr.IsAck() {
				o.settingsAcks++
			}
		case *http2.RSTStreamFrame:
			o.rsts[fr.ErrCode]++
		case *http2.GoAwayFrame:
			c := fr.ErrCode
			o.goaway = &c
		case *http2.MetaHeadersFrame:
			if s := fr.PseudoValue("status"); s != "" {
				o.status[fr.StreamID] = s
			}
		}
		if done != nil && done(&o) {
			return o
		}
	}
}

// processWatch samples a meshlet process's resident memory, Go heap and goroutines while a flood runs.
type processWatch struct {
	stop, done chan struct{}
	maxRSS     atomic.Int64
	maxHeap    atomic.Int64
	maxGor     atomic.Int64
}

// rssOf returns the resident set size of process pid, in bytes.
func rssOf(pid int) (int64, error) {
	kb, err := meshlettest.ProcField(pid, "status", "VmRSS:")
	return kb << 10, err
}

// runtimeOf returns go_memstats_heap_inuse_bytes and go_goroutines from the admin listener's /metrics.
func runtimeOf(admin string) (heap, goroutines int64, err error) {
	m, err := meshlettest.Scrape(context.Background(), &http.Client{Timeout: 5 * time.Second}, "http://"+admin+"/metrics")
	if err != nil {
		return 0, 0, err
	}
	if len(m.Samples("go_memstats_heap_inuse_bytes")) == 0 || len(m.Samples("go_goroutines")) == 0 {
		return 0, 0, errors.New("no go_memstats_heap_inuse_bytes or go_goroutines")
	}
	return int64(m.Sum("go_memstats_heap_inuse_bytes", nil)), int64(m.Sum("go_goroutines", nil)), nil
}

func watchProcess(pid int, admin string) *processWatch {
	w := &processWatch{stop: make(chan struct{}), done: make(chan struct{})}
	raise := func(a *atomic.Int64, v int64) {
		if v > a.Load() {
			a.Store(v)
		}
	}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for n := 0; ; n++ {
			if rss, err := rssOf(pid); err == nil {
				raise(&w.maxRSS, rss)
			}
			if n%5 == 0 {
				if heap, g, err := runtimeOf(admin); err == nil {
					raise(&w.maxHeap, heap)
					raise(&w.maxGor, g)
				}
			}
			select {
			case <-w.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return w
}

// finish stops sampling and returns the highest resident memory, heap in use and goroutine count seen.
func (w *processWatch) finish() (rss, heap, goroutines int64) {
	close(w.stop)
	<-w.done
	return w.maxRSS.Load(), w.maxHeap.Load(), w.maxGor.Load()
}

// bystander is a well-behaved h2c client on its own connection that requests /bystander every 50ms.
type bystander struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	firstErr   error
	stop, done chan struct{}
}

// bystanderWindow: a flood shorter than this must still let the bystander have an answer within this much of its
// start (it asks every 50 ms: a flood meshlet ends in 37 ms may see none of its requests).
const bystanderWindow = 500 * time.Millisecond

func startBystander(url string) *bystander {
	b := &bystander{stop: make(chan struct{}), done: make(chan struct{})}
	c := meshlettest.H2CClient(nil)
	c.Timeout = 10 * time.Second
	go func() {
		defer close(b.done)
		defer c.CloseIdleConnections()
		for {
			resp, err := c.Get(url)
			if err == nil {
				body, rerr := io.ReadAll(resp.Body)
				resp.Body.Close()
				switch {
				case rerr != nil:
					err = rerr
				case resp.StatusCode != http.StatusOK || string(body) != "ok /bystander" || resp.ProtoMajor != 2:
					err = fmt.Errorf("%s %d %q", resp.Proto, resp.StatusCode, body)
				}
			}
			if err != nil {
				b.failed.Add(1)
				b.mu.Lock()
				if b.firstErr == nil {
					b.firstErr = err
				}
				b.mu.Unlock()
			} else {
				b.ok.Add(1)
			}
			select {
			case <-b.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return b
}

func (b *bystander) finish() (ok, failed int64, err error) {
	close(b.stop)
	<-b.done
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ok.Load(), b.failed.Load(), b.firstErr
}

// floodTarget is a meshlet whose outbound listener forwards to an app that answers /big with 64 MiB and any other
// path with "ok <path>".
type floodTarget struct {
	m     *meshlettest.Proc
	addr  string // the outbound listener
	mu    sync.Mutex
	paths map[string]int // requests the app received, by path
}

func startFloodTarget(t *testing.T, limits proxy.ListenerLimits) *floodTarget {
	t.Helper()
	ft := &floodTarget{paths: map[string]int{}}
	app := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ft.mu.Lock()
		ft.paths[r.URL.Path]++
		ft.mu.Unlock()
		io.Copy(io.Discard, r.Body)
		if r.URL.Path != "/big" {
			fmt.Fprintf(w, "ok %s", r.URL.Path)
			return
		}
		chunk := bytes.Repeat([]byte("b"), 64<<10)
		for range 1024 {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}), true, nil)
	ft.addr = meshlettest.FreeAddr(t)
	admin := meshlettest.FreeAddr(t)
	f := meshlettest.Sidecar("api", admin, proxy.UpstreamConfig{Name: "api", Listen: ft.addr, Peer: "app", Endpoints: []string{meshlettest.HostOf(app)}})
	f.Service.Address, f.Outbound.Limits = meshlettest.HostOf(app), limits
	ft.m = meshlettest.StartFile(t, f)
	return ft
}

func (ft *floodTarget) saw(path string) int {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	return ft.paths[path]
}

func (ft *floodTarget) openConns(t *testing.T) float64 {
	return ft.m.MetricSum(t, "meshlet_connections_open", map[string]string{"direction": "outbound", "listener": "api"})
}

// stallWriter asks for /big on stream 1 with flow-control windows opened wide and reads nothing, so that meshlet
// fills the socket with DATA and its writes to the connection block. It waits (at most 15s) until the kernel's send
// queue of meshlet's end of the connection holds at least 1 MiB and stops growing: from then on, every frame
// meshlet owes the client waits in meshlet.
func (f *floodConn) stallWriter(t *testing.T) {
	t.Helper()
	f.Framer.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
	f.Framer.WriteWindowUpdate(0, 1<<30)
	f.Framer.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: f.Block(getFields("/big")),
		EndStream: true, EndHeaders: true})
	if err := f.W.Flush(); err != nil {
		t.Fatal(err)
	}
	var last, same int64
	for range 300 {
		q, _, ok := socketQueues(f.Conn.RemoteAddr(), f.Conn.LocalAddr())
		if !ok {
			t.Fatal("meshlet's end of the flooding connection is gone")
		}
		if q >= 1<<20 && q == last {
			if same++; same == 5 {
				t.Logf("meshlet's writes to the flooding connection blocked, %d bytes in its send queue", q)
				return
			}
		} else {
			same = 0
		}
		last = q
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("meshlet's send queue did not fill and settle within 15s (%d bytes)", last)
}

// waitRead waits (at most 60s) until meshlet has read all the client sent, or closed the connection: until its
// socket's receive queue stays empty for 250ms, or the socket is gone.
func (f *floodConn) waitRead() {
	same := 0
	for range 1200 {
		_, rx, ok := socketQueues(f.Conn.RemoteAddr(), f.Conn.LocalAddr())
		if !ok {
			return
		}
		if rx == 0 {
			if same++; same == 5 {
				return
			}
		} else {
			same = 0
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// socketQueues returns the send and receive queues (tx_queue, rx_queue in /proc/net/tcp) of the established
// loopback TCP socket local -> remote, and whether there is one.
func socketQueues(local, remote net.Addr) (tx, rx int64, ok bool) {
	hexAddr := func(a net.Addr) string {
		ta := a.(*net.TCPAddr)
		ip := ta.IP.To4()
		return fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], ta.Port)
	}
	l, r := hexAddr(local), hexAddr(remote)
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return 0, 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		fs := strings.Fields(line)
		if len(fs) > 4 && fs[1] == l && fs[2] == r && fs[3] == "01" {
			txs, rxs, _ := strings.Cut(fs[4], ":")
			tx, err1 := strconv.ParseInt(txs, 16, 64)
			rx, err2 := strconv.ParseInt(rxs, 16, 64)
			return tx, rx, err1 == nil && err2 == nil
		}
	}
	return 0, 0, false
}

// floodCase is one flood: setup runs on the fresh connection, then frame(i) is written n times; check asserts on
// what meshlet sent, read afterwards.
type floodCase struct {
	name string
	n    int
	// stall: first make meshlet's writes to the connection block (stallWriter), so that whatever meshlet owes the
	// client for the flood has to wait in meshlet from the first frame on.
	stall bool
	setup func(t *testing.T, f *floodConn)
	frame func(f *floodConn, i int) error
	// drainDone ends the reading early (nil: read until meshlet closes the connection or goes quiet).
	drainDone func(o *floodOutcome) bool
	check     func(t *testing.T, sent int, werr error, o floodOutcome)
}

func TestHostileHTTP2Floods(t *testing.T) {
	ft := startFloodTarget(t, proxy.ListenerLimits{})
	// Requests of the flooding client's own run on stream 3 (stream 1 is /big when the writer is stalled).
	const sid = 3
	post := [][2]string{{":method", "POST"}, {":scheme", "http"}, {":authority", "api"}, {":path", "/empty-data"}}
	openStream := func(t *testing.T, f *floodConn) {
		if err := f.Framer.WriteHeaders(http2.HeadersFrameParam{StreamID: sid, BlockFragment: f.Block(post),
			EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
	}
	// closedByMeshlet: the flood's writes failed (not for a timeout), or meshlet closed the connection once read.
	closedByMeshlet := func(t *testing.T, werr error, o floodOutcome) {
		t.Helper()
		if (werr == nil || meshlettest.IsTimeout(werr)) && !o.closed {
			t.Errorf("the flooding connection is still open (write error %v): %v", werr, o)
		}
	}
	answered := func(o *floodOutcome) bool { return o.status[sid] != "" }
	for _, tc := range []floodCase{{
		// CVE-2019-9512. Each PING needs a PING ACK, a control frame; for a client that does not read they queue,
		// and net/http closes a connection with more than 10000 queued (http2maxQueuedControlFrames).
		name:  "PING",
		n:     floodFrames,
		stall: true,
		frame: func(f *floodConn, i int) error {
			return f.Framer.WritePing(false, [8]byte{byte(i), byte(i >> 8), byte(i >> 16)})
		},
		check: func(t *testing.T, sent int, werr error, o floodOutcome) {
			closedByMeshlet(t, werr, o)
			if o.pingAcks >= sent {
				t.Errorf("meshlet answered all %d PINGs of a client that did not read", sent)
			}
		},
	}, {
		// CVE-2019-9515. Each SETTINGS needs an ACK; net/http owes them as one flag, not a queue, so the ACKs owed
		// to a client that does not read collapse into one and the connection stays open and bounded. (Had they
		// been queued one by one, the control-frame limit would have closed it.)
		name:  "SETTINGS",
		n:     floodFrames,
		stall: true,
		frame: func(f *floodConn, i int) error {
			return f.Framer.WriteSettings()
		},
		check: func(t *testing.T, sent int, werr error, o floodOutcome) {
			if (werr == nil || meshlettest.IsTimeout(werr)) && !o.closed && (sent < floodFrames || o.settingsAcks > 100) {
				t.Errorf("%d SETTINGS sent, %d ACKed to a client that did not read, connection open: %v",
					sent, o.settingsAcks, o)
			}
		},
	}, {
		// CVE-2019-9518. Zero-length DATA frames (no END_STREAM) on an open request stream take no flow control,
		// buffer nothing and owe the client nothing: the stream is then completed and answered as usual.
		name:  "empty DATA",
		n:     emptyFrames,
		stall: true,
		setup: openStream,
		frame: func(f *floodConn, i int) error {
			return f.Framer.WriteData(sid, i == emptyFrames-1, nil)
		},
		drainDone: answered,
		check: func(t *testing.T, sent int, werr error, o floodOutcome) {
			if werr != nil || o.closed || o.status[sid] != "200" {
				t.Errorf("after %d empty DATA frames (write error %v): %v; want the request answered 200", sent, werr, o)
			}
		},
	}, {
		// Empty HEADERS blocks, each opening a stream with no pseudo-header: each is refused with RST_STREAM, a
		// control frame, so for a client that does not read they trip the queued-control-frame limit.
		name:  "empty HEADERS",
		n:     floodFrames,
		stall: true,
		frame: func(f *floodConn, i int) error {
			return f.Framer.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + sid), EndStream: true,
				EndHeaders: true})
		},
		check: func(t *testing.T, sent int, werr error, o floodOutcome) {
			closedByMeshlet(t, werr, o)
			for id, st := range o.status {
				if id != 1 { // /big
					t.Errorf("an empty HEADERS block answered: stream %d, status %s", id, st)
				}
			}
		},
	}, {
		// A zero increment on the connection is a connection error (RFC 9113 6.9): GOAWAY PROTOCOL_ERROR and close
		// (1s later) at the first frame.
		name: "zero WINDOW_UPDATE on the connection",
		n:    floodFrames,
		frame: func(f *floodConn, i int) error {
			return f.Framer.WriteWindowUpdate(0, 0)
		},
		check: func(t *testing.T, sent int, werr error, o floodOutcome) {
			closedByMeshlet(t, werr, o)
			if o.goaway == nil || *o.goaway != http2.ErrCodeProtocol {
				t.Errorf("want GOAWAY PROTOCOL_ERROR: %v", o)
			}
		},
	}, {
		// On a stream it is a stream error: each one is answered with RST_STREAM PROTOCOL_ERROR, a control frame,
		// so for a client that does not read they trip the queued-control-frame limit.
		name:  "zero WINDOW_UPDATE on a stream",
		n:     floodFrames,
		stall: true,
		setup: openStream,
		frame: func(f *floodConn, i int) error {
			return f.Framer.WriteWindowUpdate(sid, 0)
		},
		check: func(t *testing.T, sent int, werr error, o floodOutcome) {
			closedByMeshlet(t, werr, o)
		},
	}, {
		// CVE-2023-45288. A HEADERS without END_HEADERS, then CONTINUATION frames that each carry a 4 KiB header
		// field, without end: once the block passes SETTINGS_MAX_HEADER_LIST_SIZE the next CONTINUATION closes
		// the connection (GOAWAY PROTOCOL_ERROR), rather than being read and decoded for ever.
		name: "CONTINUATION",
		n:    floodFrames, // 200 MiB of header fields, were they all read
		setup: func(t *testing.T, f *floodConn) {
			if err := f.Framer.WriteHeaders(http2.HeadersFrameParam{StreamID: sid,
				BlockFragment: f.Block(getFields("/continuation")), EndStream: true}); err != nil {
				t.Fatal(err)
			}
		},
		frame: func() func(f *floodConn, i int) error {
			// A never-indexed literal field: every fragment is the same bytes, each a whole field.
			var b bytes.Buffer
			hpack.NewEncoder(&b).WriteField(hpack.HeaderField{Name: "x-flood", Value: strings.Repeat("c", 4<<10),
				Sensitive: true})
			return func(f *floodConn, i int) error { return f.Framer.WriteContinuation(sid, false, b.Bytes()) }
		}(),
		check: func(t *testing.T, sent int, werr error, o floodOutcome) {
			closedByMeshlet(t, werr, o)
			if o.goaway == nil || *o.goaway != http2.ErrCodeProtocol {
				t.Errorf("want GOAWAY PROTOCOL_ERROR: %v", o)
			}
			if ft.saw("/continuation") > 0 {
				t.Error("the app received the request with the endless header block")
			}
		},
	}, {
		// Zero-length CONTINUATION frames add nothing to the header list, so the CVE-2023-45288 limit does not count
		// them: net/http reads them all, holding nothing, and once END_HEADERS comes the request is served as usual.
		// (What bounds a block that never ends is idle_timeout: see "endless empty CONTINUATION".)
		name:  "empty CONTINUATION",
		n:     emptyFrames,
		stall: true,
		setup: func(t *testing.T, f *floodConn) {
			if err := f.Framer.WriteHeaders(http2.HeadersFrameParam{StreamID: sid,
				BlockFragment: f.Block(getFields("/empty-continuation")), EndStream: true}); err != nil {
				t.Fatal(err)
			}
		},
		frame: func(f *floodConn, i int) error {
			return f.Framer.WriteContinuation(sid, i == emptyFrames-1, nil)
		},
		drainDone: answered,
		check: func(t *testing.T, sent int, werr error, o floodOutcome) {
			if werr != nil || o.closed || o.status[sid] != "200" {
				t.Errorf("after %d empty CONTINUATION frames (write error %v): %v; want the request answered 200",
					sent, werr, o)
			}
		},
	}} {
		t.Run(tc.name, func(t *testing.T) { runFlood(t, ft, tc) })
	}
	t.Run("slow floods", testSlowFloods)
}

// testSlowFloods runs the floods that a limit of time rather than of count has to end, against a meshlet whose
// outbound listener has idle_timeout 2s and write_timeout 3s.
func testSlowFloods(t *testing.T) {
	ft := startFloodTarget(t, proxy.ListenerLimits{IdleTimeout: 2 * time.Second, WriteTimeout: 3 * time.Second})

	// A header block that never ends: empty CONTINUATION frames, one every 100ms. They are not counted (see "empty
	// CONTINUATION"), but no stream opens before END_HEADERS, so the connection is idle and idle_timeout closes it
	// (GOAWAY, then close 1s later).
	t.Run("endless empty CONTINUATION closed at idle_timeout", func(t *testing.T) {
		f := dialFlood(t, ft.addr)
		if err := f.Framer.WriteHeaders(http2.HeadersFrameParam{StreamID: 1,
			BlockFragment: f.Block(getFields("/endless")), EndStream: true}); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		var err error
		for n := 0; n < 300 && err == nil; n++ { // 30s
			if err = f.Framer.WriteContinuation(1, false, nil); err == nil {
				err = f.W.Flush()
			}
			time.Sleep(100 * time.Millisecond)
		}
		took := time.Since(start)
		if err == nil {
			t.Fatalf("the header block was still being read after %v", took.Round(time.Millisecond))
		}
		o := f.drain(5*time.Second, nil)
		t.Logf("connection closed after %v of empty CONTINUATION frames (%v); then %v", took.Round(time.Millisecond),
			err, o)
		if !o.closed {
			t.Errorf("connection not closed: %v", o)
		}
		if ft.saw("/endless") > 0 {
			t.Error("the app received the request")
		}
	})

	// A client that asks for a large response, opens its flow-control windows and then reads nothing: meshlet's
	// writes to it block, and write_timeout must end the connection (and the request to the app).
	t.Run("stalled reader", func(t *testing.T) {
		pid := ft.m.Cmd.Process.Pid
		baseRSS, _ := rssOf(pid)
		f := dialFlood(t, ft.addr)
		f.stallWriter(t)
		start := time.Now()
		for time.Since(start) < 60*time.Second && ft.openConns(t) > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		rss, _ := rssOf(pid)
		t.Logf("after %v: %v connections open; RSS %+.1f MiB", time.Since(start).Round(time.Millisecond),
			ft.openConns(t), float64(rss-baseRSS)/(1<<20))
		if ft.openConns(t) > 0 {
			t.Errorf("the connection of a client that stopped reading is still open after %v",
				time.Since(start).Round(time.Second))
		}
	})
}

// runFlood runs one flood against ft with a bystander client on its own connection, then checks meshlet's memory,
// goroutines and health.
func runFlood(t *testing.T, ft *floodTarget, tc floodCase) {
	pid := ft.m.Cmd.Process.Pid
	baseHeap, baseG, err := runtimeOf(ft.m.Admin)
	if err != nil {
		t.Fatal(err)
	}
	baseRSS, err := rssOf(pid)
	if err != nil {
		t.Fatal(err)
	}
	by := startBystander("http://" + ft.addr + "/bystander")
	meshlettest.Eventually(t, 10*time.Second, "bystander served before the flood", func() bool { return by.ok.Load() > 0 })
	w := watchProcess(pid, ft.m.Admin)
	f := dialFlood(t, ft.addr)
	if tc.stall {
		f.stallWriter(t)
	}
	if tc.setup != nil {
		tc.setup(t, f)
	}
	start, servedBefore := time.Now(), by.ok.Load()
	sent, werr := f.flood(tc.n, func(i int) error { return tc.frame(f, i) })
	wrote := time.Since(start)
	if tc.stall && werr == nil {
		// Let meshlet read the whole flood while its writes are blocked, then stop /big and read what it sent.
		f.waitRead()
		f.Framer.WriteRSTStream(1, http2.ErrCodeCancel)
		f.W.Flush()
	}
	// meshlet may still be reading what the kernel buffered: a flood that should end in an answer waits longer.
	quiet := 5 * time.Second
	if tc.drainDone != nil {
		quiet = 30 * time.Second
	}
	o := f.drain(quiet, tc.drainDone)
	read := time.Since(start)
	servedDuring := by.ok.Load() - servedBefore
	if servedDuring == 0 && read < bystanderWindow {
		// meshlet ended the flood sooner than the bystander asks again (every 50 ms, after its answer): its next
		// answer must come within bystanderWindow of the flood's start all the same.
		for servedDuring == 0 && time.Since(start) < bystanderWindow {
			time.Sleep(time.Millisecond)
			servedDuring = by.ok.Load() - servedBefore
		}
		read = time.Since(start)
	}
	rss, heap, gor := w.finish()
	ok, failed, berr := by.finish()
	mib := func(n int64) float64 { return float64(n) / (1 << 20) }
	t.Logf("%s flood: %d of %d frames written in %v (write error: %v); read until %v: %v", tc.name, sent, tc.n,
		wrote.Round(time.Millisecond), werr, read.Round(time.Millisecond), o)
	t.Logf("meshlet: RSS %.1f MiB before, %.1f at most (%+.1f); heap in use %.1f MiB before, %.1f at most (%+.1f); "+
		"goroutines %d before, %d at most; bystander: %d requests served (%d during the flood), %d failed",
		mib(baseRSS), mib(rss), mib(rss-baseRSS), mib(baseHeap), mib(heap), mib(heap-baseHeap), baseG, gor, ok,
		servedDuring, failed)
	tc.check(t, sent, werr, o)
	if heap-baseHeap > floodHeapBudget {
		t.Errorf("meshlet's heap in use grew by %.1f MiB during the flood, budget %d MiB", mib(heap-baseHeap),
			floodHeapBudget>>20)
	}
	if rss-baseRSS > floodRSSBudget {
		t.Errorf("meshlet's RSS grew by %.1f MiB during the flood, budget %d MiB", mib(rss-baseRSS), floodRSSBudget>>20)
	}
	if failed > 0 {
		t.Errorf("the bystander client failed %d times (first: %v)", failed, berr)
	}
	if servedDuring == 0 {
		t.Errorf("the bystander client was not served during the flood (%v, and %v from its start)",
			read.Round(time.Millisecond), bystanderWindow)
	}
	f.Conn.Close()
	select {
	case <-ft.m.Exited():
		t.Fatalf("meshlet exited: %v", ft.m.WaitErr())
	default:
	}
	if code, body := ft.m.AdminGet(t, "/ready"); code != http.StatusOK {
		t.Fatalf("/ready after the flood: %d %s", code, body)
	}
	c := meshlettest.H2CClient(nil)
	defer c.CloseIdleConnections()
	if code, body := meshlettest.GetBody(t, c, "http://"+ft.addr+"/after"); code != http.StatusOK || body != "ok /after" {
		t.Errorf("a new connection after the flood: %d %q", code, body)
	}
	meshlettest.Eventually(t, 20*time.Second, "meshlet's goroutines back near their level before the flood", func() bool {
		_, g, err := runtimeOf(ft.m.Admin)
		return err == nil && g <= baseG+20
	})
}
