package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"meshlet.dev/meshlet/proxy/h1guard"
)

// meshlet's own HTTP/2 server connection (issue 16). net/http's HTTP/2 server passes every frame a connection
// reads through a channel to its serve loop, and every frame a handler writes through another, waiting for the
// write to finish; it writes a response's HEADERS on a goroutine of its own and flushes each frame with a write of
// its own (three writes and six goroutines for a gRPC response). Here the connection's goroutine reads and
// handles the frames itself, and a handler writes its frames itself under the connection's lock: the HEADERS,
// DATA and trailers of a chunk go out in one write, and frames others queued meanwhile go with them. What the
// server decides is net/http's, step by step (the functions below name the ones they follow):
// the settings, the stream states and their errors, flow control both ways, the request built from the header
// block (and refused as net/http refuses it), the response's header (Content-Length, Content-Type, Date,
// trailers), the handler limit against rapid resets, graceful shutdown, the timeouts. FuzzH2Agreement holds the
// two to the same answers.

// The constants of net/http's HTTP/2 server.
const (
	h2InitialWindow        = 65535
	h2InitialMaxFrame      = 16384
	h2ChunkWriteSize       = 4 << 10 // a handler's writes are buffered up to this, as net/http's
	h2InflowMinRefresh     = 4 << 10
	h2MaxQueuedControl     = 10000 // control frames queued while the peer reads nothing: the connection is closed
	h2PrefaceTimeout       = 10 * time.Second
	h2FirstSettingsTimeout = 2 * time.Second
	h2MaxOut               = 64 << 10 // queued bytes past which a handler waits for the write under way
)

// h2GoAwayTimeout is how long a connection lives after its last GOAWAY (net/http's goAwayTimeout): the peer reads
// the GOAWAY before the close. A variable for tests.
var h2GoAwayTimeout = time.Second

var (
	errH2ClientDisconnected = errors.New("client disconnected")
	errH2StreamClosed       = errors.New("http2: stream closed")
	errH2ClosedBody         = errors.New("body closed by handler")
	errH2HandlerComplete    = errors.New("http2: request body closed due to handler exiting")
	errH2HandlerPanicked    = errors.New("http2: handler panicked")
	errH2TooMuchWritten     = errors.New("http2: handler wrote more than declared Content-Length")
)

// h2Config is what a connection is served with: net/http's settings for the listener's server.
type h2Config struct {
	maxStreams    uint32
	maxReadFrame  uint32
	maxHeaderList uint32
	decoderTable  uint32
	encoderTable  uint32
	connWindow    int32
	streamWindow  int32
	writeTimeout  time.Duration // per write, extended while bytes move (WriteByteTimeout)
	idleTimeout   time.Duration
}

// h2ConfigOf reads srv's HTTP/2 settings as net/http does (fillNetHTTPConfig, then setConfigDefaults: a value out
// of its range is the default).
func h2ConfigOf(srv *http.Server) h2Config {
	var c h2Config
	var connWindow, streamWindow int32
	if h := srv.HTTP2; h != nil {
		c.maxStreams = uint32(h.MaxConcurrentStreams)
		c.encoderTable = uint32(h.MaxEncoderHeaderTableSize)
		c.decoderTable = uint32(h.MaxDecoderHeaderTableSize)
		c.maxReadFrame = uint32(h.MaxReadFrameSize)
		connWindow = int32(h.MaxReceiveBufferPerConnection)
		streamWindow = int32(h.MaxReceiveBufferPerStream)
		c.writeTimeout = h.WriteByteTimeout
	}
	inRange := func(v *uint32, lo, hi, def uint32) {
		if *v < lo || *v > hi {
			*v = def
		}
	}
	inRange(&c.maxStreams, 1, math.MaxUint32, 250)
	inRange(&c.encoderTable, 1, math.MaxUint32, 4096)
	inRange(&c.decoderTable, 1, math.MaxUint32, 4096)
	inRange(&c.maxReadFrame, 16384, 1<<24-1, 1<<20)
	c.connWindow, c.streamWindow = 1<<20, 1<<20
	if connWindow >= h2InitialWindow {
		c.connWindow = connWindow
	}
	if streamWindow >= 1 {
		c.streamWindow = streamWindow
	}
	n := srv.MaxHeaderBytes
	if n <= 0 {
		n = http.DefaultMaxHeaderBytes
	}
	c.maxHeaderList = uint32(n + 10*32) // net/http's adjustHTTP1MaxHeaderSize
	c.idleTimeout = srv.IdleTimeout
	if c.idleTimeout == 0 {
		c.idleTimeout = srv.ReadTimeout
	}
	return c
}

type h2State uint8

const (
	h2Open h2State = iota
	h2HalfClosedLocal
	h2HalfClosedRemote
	h2Closed
)

// h2Inflow is a receive window (net/http's inflow): what the peer may still send, and what was given back but not
// announced yet.
type h2Inflow struct{ avail, unsent int32 }

// add gives n bytes back; it returns the WINDOW_UPDATE increment to send now (0: wait for more).
func (f *h2Inflow) add(n int) int32 {
	unsent := int64(f.unsent) + int64(n)
	if unsent+int64(f.avail) > 1<<31-1 {
		// A window never passes 2^31-1. net/http panics here; this server gives each byte back once, so this is
		// only a guard (a panic here would hold the connection's lock).
		unsent = 1<<31 - 1 - int64(f.avail)
	}
	f.unsent = int32(unsent)
	if f.unsent < h2InflowMinRefresh && f.unsent < f.avail {
		return 0
	}
	f.avail += f.unsent
	f.unsent = 0
	return int32(unsent)
}

func takeInflows(a, b *h2Inflow, n uint32) bool {
	if n > uint32(a.avail) || n > uint32(b.avail) {
		return false
	}
	a.avail -= int32(n)
	b.avail -= int32(n)
	return true
}

// h2Conn is one HTTP/2 connection served. The connection's goroutine (serve) reads and handles its frames; the
// handlers, one goroutine per stream, write their own frames. mu guards everything shared between them.
type h2Conn struct {
	s    *h1Server
	cfg  *h2Config
	nc   net.Conn
	br   *bufio.Reader // from h1Readers; nil while an idle connection waits (park)
	fr   *http2.Framer // reads only: the server writes its frames itself
	hdec *hpack.Decoder
	hdrs *h2Headers // reads header blocks with hdec
	// bigRead: a frame larger than h2BigFrame was read since the framer was made
	bigRead bool
	// waitSock: the socket the connection's owner waits for, with no read buffer held, while nothing is to be
	// read (park); nil while the reader reads
	waitSock syscall.Conn
	waiting  atomic.Bool // waitSock is set (for the tests to see)
	// idle: h2Parked while the connection waits and may be moved to a goroutine of its own (h2Shrink: the sweep
	// asked for that, and set the read deadline to wake the wait); parkEpoch: the server's h2epoch then
	idle      atomic.Int32
	parkEpoch atomic.Uint64
	// end: the owner's end of the connection, for a goroutine the connection was moved to (nil: not moved)
	end func()
	// gotFrame: a frame has been read (the first is read under h2FirstSettingsTimeout)
	gotFrame bool
	ctx      context.Context
	cancel   context.CancelFunc
	remote   string
	tls      *tls.ConnectionState
	h        http.Handler

	sawFirstSettings bool // the reader's own

	mu                sync.Mutex
	wcond             sync.Cond            // with mu: send windows grew, a write ended, a stream closed
	streams           map[uint32]*h2Stream // nil while no stream is open
	maxClientStreamID uint32
	unackedSettings   int
	inflow            h2Inflow
	sendWindow        int32 // the peer's connection window
	initialSendWindow int32
	peerMaxFrame      int32
	henc              *hpack.Encoder // nil until a header block is written, and while idle (encoder)
	hbuf              bytes.Buffer
	peerTableSize     uint32 // the client's SETTINGS_HEADER_TABLE_SIZE
	out               []byte // frames to write
	flushing          bool   // a goroutine is writing out; it writes what is added meanwhile
	werr              error  // the connection failed to write: nothing more is written
	queuedControl     int    // control frames the reader queued while a write was under way
	closed            bool
	inGoAway          bool
	goAwayCode        http2.ErrCode
	goAwaySent        bool
	shutdownTimer     *time.Timer
	idleTimer         *time.Timer
	curHandlers       uint32
	unstarted         []*h2Writer // handlers waiting for a slot (net/http's unstartedHandlers)
	starting          []*h2Writer // handlers given a slot, started before the reader waits (startHandlers)
}

// h2Stream is a stream of a connection; its fields are guarded by the connection's mu.
type h2Stream struct {
	c                *h2Conn
	id               uint32
	state            h2State
	gotTrailerHeader bool
	wroteHeaders     bool
	ctx              context.Context
	cancel           context.CancelFunc
	sendWindow       int32
	inflow           h2Inflow
	body             *h2Pipe // nil: the request had no body
	declBodyBytes    int64
	bodyBytes        int64
	trailer          http.Header // the request trailers received (only when some were declared)
	reqTrailer       http.Header
	closeErr         error
	closedCh         chan struct{} // closed with the stream (CloseNotify); nil until asked for
	readDeadline     *time.Timer
	writeDeadline    *time.Timer
}

// serveH2 serves c as an HTTP/2 connection until it ends (nil) or waits for its socket with nothing to read: it
// returns the connection then, for its owner to wait in serveParked, at the bottom of its stack. br (from
// h1Readers, which the connection gives back) holds what was read of it already (the preface included, when
// sawPreface). end is the owner's end of the connection, run by the goroutine the connection is moved to when it
// has waited long (serveParked); nil: it is never moved. It is called on the connection's own goroutine, counted
// in s.wg.
func (s *h1Server) serveH2(nc net.Conn, br *bufio.Reader, ctx context.Context, sawPreface bool, end func()) *h2Conn {
	cfg := &s.h2cfg
	// The streams' contexts derive from ctx itself, not from a cancelable one of the connection's (which would keep
	// a map of them): when the connection ends, closeConn cancels each stream open.
	c := &h2Conn{s: s, cfg: cfg, nc: nc, br: br, ctx: ctx, remote: nc.RemoteAddr().String(),
		h: s.srv.Handler, end: end, sendWindow: h2InitialWindow,
		initialSendWindow: h2InitialWindow, peerMaxFrame: h2InitialMaxFrame, peerTableSize: 4096}
	c.wcond.L = &c.mu
	c.inflow.avail = h2InitialWindow
	if tc, ok := nc.(*tls.Conn); ok {
		st := tc.ConnectionState()
		c.tls = &st
	}
	c.hdec = hpack.NewDecoder(cfg.decoderTable, nil)
	c.hdrs = newH2Headers(c.hdec, cfg.maxHeaderList)
	c.newFramer()
	s.mu.Lock()
	s.h2conns[c] = struct{}{}
	closing := s.closing.Load()
	s.mu.Unlock()
	if closing {
		c.startGracefulShutdown()
	}
	if c.begin(sawPreface) && c.loop(false) {
		return c
	}
	c.ended()
	return nil
}

// resume serves the connection again once its socket has something to read (or has ended): nil when the
// connection has ended, else c, waiting again (as serveH2).
func (c *h2Conn) resume() *h2Conn {
	c.waitSock = nil
	c.waiting.Store(false)
	c.br = h1Readers.Get().(*bufio.Reader)
	c.br.Reset(c.nc)
	if c.loop(true) {
		return c
	}
	c.ended()
	return nil
}

// serveParked waits for the socket of c, a connection serveH2 or resume returned, and serves it again, until it
// ends (true; c nil: at once). A connection that has waited long (sweepH2) is moved to a new goroutine, which
// waits on a stack of its own size and runs c.end when the connection ends (false). The garbage collector leaves
// a waiting goroutine at least 4 KiB of the stack it grew (it shrinks a stack only to four times what is used
// plus 800 bytes); a new goroutine that only waits keeps 2 KiB.
func serveParked(c *h2Conn) bool {
	for c != nil {
		waitReadable(c.waitSock)
		if !c.idle.CompareAndSwap(h2Parked, h2Active) && c.idle.Load() == h2Shrink {
			c.mu.Lock() // the sweep has set its deadline
			c.mu.Unlock()
			c.nc.SetReadDeadline(time.Time{})
			c.idle.Store(h2Active)
			c.s.h2moved.Add(1)
			go c.waitMoved()
			return false
		}
		c = c.resume()
	}
	return true
}

// waitMoved waits for a connection moved off its owner's goroutine (serveParked), and serves it.
func (c *h2Conn) waitMoved() {
	if end := c.end; serveParked(c) {
		end()
	}
}

// The states of h2Conn.idle.
const (
	h2Active = iota
	h2Parked
	h2Shrink
)

// h2ShrinkSweep is h1Server.h2sweepEvery's default: a connection that has waited for its socket through a whole
// sweep interval (so for one to two) is moved to a goroutine of its own (serveParked).
const h2ShrinkSweep = 250 * time.Millisecond

// armH2Sweep makes sure a sweep comes while connections wait.
func (s *h1Server) armH2Sweep() {
	if s.h2sweepArmed.Load() || !s.h2sweepArmed.CompareAndSwap(false, true) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		return
	}
	if s.h2sweep == nil {
		s.h2sweep = time.AfterFunc(s.h2sweepEvery, s.sweepH2)
	} else {
		s.h2sweep.Reset(s.h2sweepEvery)
	}
}

// sweepH2 wakes the connections that have waited since before the previous sweep, for serveParked to move them.
func (s *h1Server) sweepH2() {
	s.h2sweepArmed.Store(false)
	epoch := s.h2epoch.Add(1)
	var long []*h2Conn
	waiting := false
	s.mu.Lock()
	for c := range s.h2conns {
		if c.idle.Load() != h2Parked {
			continue
		}
		if c.parkEpoch.Load()+2 > epoch {
			waiting = true
		} else {
			long = append(long, c)
		}
	}
	s.mu.Unlock()
	for _, c := range long {
		c.mu.Lock() // not under s.mu: closeStream takes s.mu with c.mu held (ConnState)
		if c.idle.CompareAndSwap(h2Parked, h2Shrink) {
			c.nc.SetReadDeadline(time.Now())
		}
		c.mu.Unlock()
	}
	if waiting {
		s.armH2Sweep()
	}
}

// ended takes the ended connection off its server's list.
func (c *h2Conn) ended() {
	c.s.mu.Lock()
	delete(c.s.h2conns, c)
	c.s.mu.Unlock()
}

// newFramer makes the connection's frame reader (x/net's Framer; header blocks are read by hdrs), anew after a
// large frame: a Framer keeps the buffer of the largest frame it read.
func (c *h2Conn) newFramer() {
	fr := http2.NewFramer(nil, bufIn{&c.br})
	fr.SetMaxReadFrameSize(c.cfg.maxReadFrame)
	fr.SetReuseFrames() // a DATA frame's payload is copied before the next read
	c.fr = fr
	c.bigRead = false
}

// bufIn is what an HTTP/2 connection's framer reads, the server's and the client's: the connection's read buffer
// at the time of the read, which an idle connection gives back and takes again (park, idleWait).
type bufIn struct{ br **bufio.Reader }

func (i bufIn) Read(p []byte) (int, error) { return (*i.br).Read(p) }

// encoder returns the connection's HPACK encoder, made at its first header block (and again after an idle time,
// closeStream). mu held.
func (c *h2Conn) encoder() *hpack.Encoder {
	if c.henc == nil {
		c.henc = hpack.NewEncoder(&c.hbuf)
		c.henc.SetMaxDynamicTableSizeLimit(c.cfg.encoderTable)
		c.henc.SetMaxDynamicTableSize(c.peerTableSize)
	}
	return c.henc
}

// The frames the server writes, appended to out (mu held, queueLocked called).

func (c *h2Conn) frameHeader(length int, t http2.FrameType, flags http2.Flags, id uint32) {
	c.out = appendH2FrameHeader(c.out, length, t, flags, id)
}

func (c *h2Conn) writeSettings(settings []http2.Setting) { c.out = appendH2Settings(c.out, settings) }

func (c *h2Conn) writePingAck(data [8]byte) { c.out = appendH2Ping(c.out, true, data) }

func (c *h2Conn) writeRSTStream(id uint32, code http2.ErrCode) {
	c.out = appendH2RSTStream(c.out, id, code)
}

func (c *h2Conn) writeWindowUpdate(id, incr uint32) { c.out = appendH2WindowUpdate(c.out, id, incr) }

func (c *h2Conn) writeGoAway(last uint32, code http2.ErrCode) {
	c.out = appendH2GoAway(c.out, last, code)
}

func (c *h2Conn) writeHeaderFrame(t http2.FrameType, id uint32, frag []byte, endStream, endHeaders bool) {
	c.out = appendH2HeaderFrame(c.out, t, id, frag, endStream, endHeaders)
}

func (c *h2Conn) writeData(id uint32, endStream bool, p []byte) {
	c.out = appendH2Data(c.out, id, endStream, p)
}

// HTTP/2 frames appended to a write buffer (the server's and the client's).

func appendH2FrameHeader(b []byte, length int, t http2.FrameType, flags http2.Flags, id uint32) []byte {
	return append(b, byte(length>>16), byte(length>>8), byte(length), byte(t), byte(flags),
		byte(id>>24)&0x7f, byte(id>>16), byte(id>>8), byte(id))
}

func appendUint32(b []byte, v uint32) []byte {
	return append(b, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}

func appendH2Settings(b []byte, settings []http2.Setting) []byte {
	b = appendH2FrameHeader(b, 6*len(settings), http2.FrameSettings, 0, 0)
	for _, st := range settings {
		b = append(b, byte(st.ID>>8), byte(st.ID))
		b = appendUint32(b, st.Val)
	}
	return b
}

func appendH2Ping(b []byte, ack bool, data [8]byte) []byte {
	var flags http2.Flags
	if ack {
		flags = http2.FlagPingAck
	}
	return append(appendH2FrameHeader(b, 8, http2.FramePing, flags, 0), data[:]...)
}

func appendH2RSTStream(b []byte, id uint32, code http2.ErrCode) []byte {
	return appendUint32(appendH2FrameHeader(b, 4, http2.FrameRSTStream, 0, id), uint32(code))
}

func appendH2WindowUpdate(b []byte, id, incr uint32) []byte {
	return appendUint32(appendH2FrameHeader(b, 4, http2.FrameWindowUpdate, 0, id), incr&0x7fffffff)
}

func appendH2GoAway(b []byte, last uint32, code http2.ErrCode) []byte {
	b = appendH2FrameHeader(b, 8, http2.FrameGoAway, 0, 0)
	return appendUint32(appendUint32(b, last&0x7fffffff), uint32(code))
}

func appendH2HeaderFrame(b []byte, t http2.FrameType, id uint32, frag []byte, endStream, endHeaders bool) []byte {
	var flags http2.Flags
	if endStream {
		flags |= http2.FlagHeadersEndStream
	}
	if endHeaders {
		flags |= http2.FlagHeadersEndHeaders // CONTINUATION's END_HEADERS is the same bit
	}
	return append(appendH2FrameHeader(b, len(frag), t, flags, id), frag...)
}

func appendH2Data(b []byte, id uint32, endStream bool, p []byte) []byte {
	var flags http2.Flags
	if endStream {
		flags = http2.FlagDataEndStream
	}
	return append(appendH2FrameHeader(b, len(p), http2.FrameData, flags, id), p...)
}

var h2OutPool = sync.Pool{New: func() any { return make([]byte, 0, 8<<10) }}

// begin and loop are net/http's serverConn.serve. begin writes the server's SETTINGS and reads the client's
// preface; false (the connection closed) when it fails.
func (c *h2Conn) begin(sawPreface bool) (ok bool) {
	defer func() {
		if !ok {
			c.closeConn(recover())
		}
	}()
	cfg := c.cfg
	c.mu.Lock()
	c.queueLocked()
	settings := []http2.Setting{
		{ID: http2.SettingMaxFrameSize, Val: cfg.maxReadFrame},
		{ID: http2.SettingMaxConcurrentStreams, Val: cfg.maxStreams},
		{ID: http2.SettingMaxHeaderListSize, Val: cfg.maxHeaderList},
		{ID: http2.SettingHeaderTableSize, Val: cfg.decoderTable},
		{ID: http2.SettingInitialWindowSize, Val: uint32(cfg.streamWindow)},
	}
	if h2ExtendedConnect {
		settings = append(settings, http2.Setting{ID: http2.SettingEnableConnectProtocol, Val: 1})
	}
	c.writeSettings(settings)
	c.unackedSettings++
	if diff := cfg.connWindow - h2InitialWindow; diff > 0 {
		c.windowUpdateLocked(nil, int(diff))
	}
	c.flushLocked()
	c.mu.Unlock()

	if !sawPreface {
		c.nc.SetReadDeadline(time.Now().Add(h2PrefaceTimeout))
	}
	// The preface is read from br: the HTTP/1.1 loop peeked it there (it is checked again all the same).
	buf, err := c.br.Peek(len(http2.ClientPreface))
	if err != nil || string(buf) != http2.ClientPreface {
		if err == nil {
			err = fmt.Errorf("bogus greeting %q", buf)
		}
		c.logf("http2: server: error reading preface from client %v: %v", c.remote, err)
		return false
	}
	c.br.Discard(len(buf))
	c.s.state(c.nc, http.StateActive)
	c.s.state(c.nc, http.StateIdle)
	if d := cfg.idleTimeout; d > 0 {
		c.mu.Lock()
		c.idleTimer = time.AfterFunc(d, c.onIdle)
		c.mu.Unlock()
	}
	c.nc.SetReadDeadline(time.Now().Add(h2FirstSettingsTimeout))
	return true
}

// loop reads and handles the connection's frames until it ends (false: closed) or has nothing to read and can be
// waited for on its socket (true: park set waitSock). woke: the socket has just been found readable (resume), so
// the first read does not park.
func (c *h2Conn) loop(woke bool) (parked bool) {
	defer func() {
		e := recover()
		if parked && e == nil {
			return // the handlers of what was read have started (the loop's top, before park)
		}
		parked = false
		c.mu.Lock()
		c.startHandlers()
		c.mu.Unlock()
		c.closeConn(e)
	}()
	for {
		if !c.wholeFrameBuffered() {
			c.mu.Lock()
			c.startHandlers()
			c.flushLocked()
			c.mu.Unlock()
		}
		if c.br.Buffered() == 0 && !woke {
			c.hdrs.release() // a connection that waits keeps no header block (its fields go back to their pool)
			if c.park() {
				return true
			}
		}
		woke = false
		f, err := c.hdrs.readFrame(c.fr)
		if err == nil && f.Header().Length > h2BigFrame {
			c.bigRead = true
		}
		if !c.gotFrame && err == nil {
			c.gotFrame = true
			c.nc.SetReadDeadline(time.Time{})
		}
		if !c.processFrameFromReader(f, err) {
			return false
		}
		if c.tooManyControlFrames() {
			c.logf("http2: too many control frames in send queue, closing connection")
			return false
		}
	}
}

// h2BigFrame: after a frame larger than this, the connection's framer is made anew before the connection waits
// (it keeps the buffer of the largest frame it read).
const h2BigFrame = 4 << 10

// park readies the connection to wait for its next frame's first bytes with no read buffer held (a guarded
// plaintext connection with nothing buffered): an idle connection holds none, and its owner waits on a shallow
// stack (serveH2). False: the reader reads on.
func (c *h2Conn) park() bool {
	if c.bigRead {
		// A connection under way keeps its framer (a body's upload waits between its frames: a new framer would
		// allocate its buffer again for each).
		c.mu.Lock()
		idle := len(c.streams) == 0
		c.mu.Unlock()
		if idle {
			c.newFramer()
		}
	}
	g, ok := c.nc.(*h1guard.Conn)
	if !ok || !g.Drained() {
		return false
	}
	sc := socketOf(g.Conn)
	if sc == nil {
		return false
	}
	c.br.Reset(nil)
	h1Readers.Put(c.br)
	c.br = nil
	c.waitSock = sc
	c.waiting.Store(true)
	if c.end != nil && c.gotFrame { // (the first frame is read under a deadline of its own)
		c.parkEpoch.Store(c.s.h2epoch.Load())
		c.idle.Store(h2Parked)
		c.s.armH2Sweep()
	}
	return true
}

// socketOf returns the TCP connection under c's wrappers when none of them holds bytes of its own (the
// connection limit's, the transparent and inbound listeners' carriers), else nil: waiting on the socket would not
// see bytes a wrapper holds.
func socketOf(c net.Conn) syscall.Conn {
	for {
		switch w := c.(type) {
		case *net.TCPConn:
			return w
		case *limitedConn:
			c = w.Conn
		case carriedConn:
			c = w.Conn
		case *routedConn:
			c = w.Conn
		case *appPortConn:
			c = w.Conn
		default:
			return nil
		}
	}
}

// wholeFrameBuffered reports whether the next frame is whole in the read buffer (reading it does not block).
func (c *h2Conn) wholeFrameBuffered() bool {
	n := c.br.Buffered()
	if n < 9 {
		return false
	}
	h, _ := c.br.Peek(9)
	return n >= 9+int(h[0])<<16|int(h[1])<<8|int(h[2])
}

func (c *h2Conn) tooManyControlFrames() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.queuedControl > h2MaxQueuedControl
}

// processFrameFromReader is net/http's; it reports whether the connection goes on.
func (c *h2Conn) processFrameFromReader(f http2.Frame, err error) bool {
	if err != nil {
		if err == http2.ErrFrameTooLarge {
			c.goAway(http2.ErrCodeFrameSize)
			return true
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF || isClosedConnError(err) {
			return false
		}
	} else {
		err = c.processFrame(f)
		if err == nil {
			return true
		}
	}
	switch ev := err.(type) {
	case http2.StreamError:
		c.resetStream(ev)
		return true
	case h2GoAwayFlowError:
		c.goAway(http2.ErrCodeFlowControl)
		return true
	case http2.ConnectionError:
		if f != nil {
			c.mu.Lock()
			if id := f.Header().StreamID; id > c.maxClientStreamID {
				c.maxClientStreamID = id
			}
			c.mu.Unlock()
		}
		c.logf("http2: server connection error from %v: %v", c.remote, ev)
		c.goAway(http2.ErrCode(ev))
		return true
	default:
		if f == nil {
			c.logf("http2: server closing client connection; error reading frame from client %s: %v", c.remote, err)
		} else {
			c.logf("http2: server closing client connection: %v", err)
		}
		return false
	}
}

type h2GoAwayFlowError struct{}

func (h2GoAwayFlowError) Error() string { return "connection exceeded flow control window size" }

func isClosedConnError(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, syscall.ECONNRESET)
}

func (c *h2Conn) processFrame(f http2.Frame) error {
	if !c.sawFirstSettings {
		if _, ok := f.(*http2.SettingsFrame); !ok {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		c.sawFirstSettings = true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	err := c.processFrameLocked(f)
	if se, ok := err.(http2.StreamError); ok {
		// Reset under the same hold of mu as the frame's work: a handler woken by it (a body closed with an error)
		// must not answer before the reset, as under net/http, whose one goroutine does both in turn.
		c.resetLocked(se)
		return nil
	}
	return err
}

// processFrameLocked handles one frame. mu held.
func (c *h2Conn) processFrameLocked(f http2.Frame) error {
	if c.inGoAway && (c.goAwayCode != http2.ErrCodeNo || f.Header().StreamID > c.maxClientStreamID) {
		if f, ok := f.(*http2.DataFrame); ok {
			if f.Length > uint32(c.inflow.avail) {
				return http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeFlowControl}
			}
			c.inflow.avail -= int32(f.Length)
			c.windowUpdateLocked(nil, int(f.Length))
		}
		return nil
	}
	switch f := f.(type) {
	case *http2.SettingsFrame:
		return c.processSettings(f)
	case *http2.MetaHeadersFrame:
		return c.processHeaders(f)
	case *http2.WindowUpdateFrame:
		return c.processWindowUpdate(f)
	case *http2.PingFrame:
		if f.IsAck() {
			return nil
		}
		if f.StreamID != 0 {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		c.queueLocked()
		c.writePingAck(f.Data)
		return nil
	case *http2.DataFrame:
		return c.processData(f)
	case *http2.RSTStreamFrame:
		state, st := c.state(f.StreamID)
		if state == h2StateIdle {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		if st != nil {
			st.cancel()
			c.closeStream(st, http2.StreamError{StreamID: f.StreamID, Code: f.ErrCode})
		}
		return nil
	case *http2.PriorityFrame:
		if f.StreamID == f.StreamDep {
			return http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeProtocol}
		}
		return nil
	case *http2.GoAwayFrame:
		if f.ErrCode != http2.ErrCodeNo { // net/http logs the others only when verbose
			c.logf("http2: received GOAWAY %+v, starting graceful shutdown", f)
		}
		c.goAwayLocked(http2.ErrCodeNo)
		return nil
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol)
	default:
		return nil
	}
}

// The states state reports beyond the stream's own (net/http's stateIdle, stateClosed for an unknown id).
const (
	h2StateIdle h2State = 10 + iota
	h2StateGone
)

// state is net/http's serverConn.state: a stream's state by its id, and the stream when open. mu held.
func (c *h2Conn) state(id uint32) (h2State, *h2Stream) {
	if st, ok := c.streams[id]; ok {
		return st.state, st
	}
	if id%2 == 1 {
		if id <= c.maxClientStreamID {
			return h2StateGone, nil
		}
	} else if id == 0 {
		return h2StateGone, nil // net/http's: 0 is not above the last pushed stream's id (it pushes none)
	}
	return h2StateIdle, nil
}

func (c *h2Conn) processSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		c.unackedSettings--
		if c.unackedSettings < 0 {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		return nil
	}
	if f.NumSettings() > 100 || f.HasDuplicates() {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	if err := f.ForeachSetting(c.processSetting); err != nil {
		return err
	}
	c.queueLocked()
	c.frameHeader(0, http2.FrameSettings, http2.FlagSettingsAck, 0)
	return nil
}

func (c *h2Conn) processSetting(s http2.Setting) error {
	if err := s.Valid(); err != nil {
		return err
	}
	switch s.ID {
	case http2.SettingHeaderTableSize:
		c.peerTableSize = s.Val
		if c.henc != nil {
			c.henc.SetMaxDynamicTableSize(s.Val)
		}
	case http2.SettingInitialWindowSize:
		growth := int32(s.Val) - c.initialSendWindow
		c.initialSendWindow = int32(s.Val)
		for _, st := range c.streams {
			if !addWindow(&st.sendWindow, growth) {
				return http2.ConnectionError(http2.ErrCodeFlowControl)
			}
		}
		c.wcond.Broadcast()
	case http2.SettingMaxFrameSize:
		c.peerMaxFrame = int32(s.Val)
	}
	return nil
}

// addWindow adds n to a send window, false if it would pass 2^31-1.
func addWindow(w *int32, n int32) bool {
	sum := *w + n
	if (sum > n) == (*w > 0) {
		*w = sum
		return true
	}
	return false
}

func (c *h2Conn) processWindowUpdate(f *http2.WindowUpdateFrame) error {
	if f.StreamID != 0 {
		state, st := c.state(f.StreamID)
		if state == h2StateIdle {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		if st == nil {
			return nil
		}
		if !addWindow(&st.sendWindow, int32(f.Increment)) {
			return http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeFlowControl}
		}
	} else if !addWindow(&c.sendWindow, int32(f.Increment)) {
		return h2GoAwayFlowError{}
	}
	c.wcond.Broadcast()
	return nil
}

func (c *h2Conn) processData(f *http2.DataFrame) error {
	id := f.StreamID
	data := f.Data()
	state, st := c.state(id)
	if id == 0 || state == h2StateIdle {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	if st == nil || state != h2Open || st.gotTrailerHeader {
		if f.Length > uint32(c.inflow.avail) {
			return http2.StreamError{StreamID: id, Code: http2.ErrCodeFlowControl}
		}
		c.inflow.avail -= int32(f.Length)
		c.windowUpdateLocked(nil, int(f.Length))
		// (net/http also returns nil for a stream whose reset is queued: h2Conn closes a stream as it queues its
		// reset, so it is not found here.)
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeStreamClosed}
	}
	if st.declBodyBytes != -1 && st.bodyBytes+int64(len(data)) > st.declBodyBytes {
		if f.Length > uint32(c.inflow.avail) {
			return http2.StreamError{StreamID: id, Code: http2.ErrCodeFlowControl}
		}
		c.inflow.avail -= int32(f.Length)
		c.windowUpdateLocked(nil, int(f.Length))
		st.body.closeWithError(fmt.Errorf("sender tried to send more than declared Content-Length of %d bytes", st.declBodyBytes), nil)
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
	}
	if f.Length > 0 {
		if !takeInflows(&c.inflow, &st.inflow, f.Length) {
			return http2.StreamError{StreamID: id, Code: http2.ErrCodeFlowControl}
		}
		if len(data) > 0 {
			st.bodyBytes += int64(len(data))
			if !st.body.write(data) {
				c.windowUpdateLocked(nil, int(f.Length)) // the handler closed the body
				return nil
			}
		}
		pad := int(f.Length) - len(data)
		c.windowUpdateLocked(nil, pad)
		c.windowUpdateLocked(st, pad)
	}
	if f.StreamEnded() {
		st.endStream()
	}
	return nil
}

// endStream ends the request body: its last DATA frame or its trailers came. mu held.
func (st *h2Stream) endStream() {
	if st.declBodyBytes != -1 && st.declBodyBytes != st.bodyBytes {
		st.body.closeWithError(fmt.Errorf("request declared a Content-Length of %d but only wrote %d bytes",
			st.declBodyBytes, st.bodyBytes), nil)
	} else {
		st.body.closeWithError(io.EOF, st.copyTrailers)
	}
	st.state = h2HalfClosedRemote
}

// copyTrailers runs in the handler's Read just before io.EOF: the declared trailers that came.
func (st *h2Stream) copyTrailers() {
	for k, vv := range st.trailer {
		if _, ok := st.reqTrailer[k]; ok {
			st.reqTrailer[k] = vv
		}
	}
}

var h2ConnHeaders = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade"}

// processHeaders is net/http's: a new stream, or trailers. mu held.
func (c *h2Conn) processHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if id%2 != 1 {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	if st := c.streams[id]; st != nil {
		if st.state == h2HalfClosedRemote {
			return http2.StreamError{StreamID: id, Code: http2.ErrCodeStreamClosed}
		}
		return st.processTrailerHeaders(f)
	}
	if id <= c.maxClientStreamID {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	c.maxClientStreamID = id
	if c.idleTimer != nil {
		c.idleTimer.Stop()
	}
	if uint32(len(c.streams))+1 > c.cfg.maxStreams {
		if c.unackedSettings == 0 {
			return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
		}
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeRefusedStream}
	}
	state := h2Open
	if f.StreamEnded() {
		state = h2HalfClosedRemote
	}
	st := c.newStream(id, state)
	if f.HasPriority() && f.Priority.StreamDep == id {
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
	}
	w, req, err := c.newWriterAndRequest(st, f)
	if err != nil {
		return err
	}
	st.reqTrailer = req.Trailer
	if st.reqTrailer != nil {
		st.trailer = make(http.Header)
	}
	st.body = req.Body.(*h2Body).pipe
	st.declBodyBytes = req.ContentLength
	if f.Truncated {
		w.handler = http.HandlerFunc(h2HeaderListTooLong)
	} else if err := checkValidH2RequestHeaders(req.Header); err != nil {
		w.handler = http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) {
			http.Error(rw, err.Error(), http.StatusBadRequest)
		})
	}
	return c.scheduleHandler(w)
}

// globalOptions is net/http's globalOptionsHandler.
func globalOptions(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Length", "0")
	if r.ContentLength != 0 {
		io.Copy(io.Discard, http.MaxBytesReader(w, r.Body, 4<<10))
	}
}

func h2HeaderListTooLong(w http.ResponseWriter, _ *http.Request) {
	w.WriteHeader(http.StatusRequestHeaderFieldsTooLarge)
	io.WriteString(w, "<h1>HTTP Error 431</h1><p>Request Header Field(s) Too Large</p>")
}

func checkValidH2RequestHeaders(h http.Header) error {
	for _, k := range h2ConnHeaders {
		if _, ok := h[k]; ok {
			return fmt.Errorf("request header %q is not valid in HTTP/2", k)
		}
	}
	te := h["Te"]
	if len(te) > 0 && (len(te) > 1 || (te[0] != "trailers" && te[0] != "")) {
		return errors.New(`request header "TE" may only be "trailers" in HTTP/2`)
	}
	return nil
}

func (st *h2Stream) processTrailerHeaders(f *http2.MetaHeadersFrame) error {
	if st.gotTrailerHeader {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	st.gotTrailerHeader = true
	if !f.StreamEnded() {
		return http2.StreamError{StreamID: st.id, Code: http2.ErrCodeProtocol}
	}
	if len(f.PseudoFields()) > 0 {
		return http2.StreamError{StreamID: st.id, Code: http2.ErrCodeProtocol}
	}
	if st.trailer != nil {
		for _, hf := range f.RegularFields() {
			key := http.CanonicalHeaderKey(hf.Name)
			if !httpguts.ValidTrailerHeader(key) {
				return http2.StreamError{StreamID: st.id, Code: http2.ErrCodeProtocol}
			}
			st.trailer[key] = append(st.trailer[key], hf.Value)
		}
	}
	st.endStream()
	return nil
}

// newStream opens stream id. mu held.
func (c *h2Conn) newStream(id uint32, state h2State) *h2Stream {
	ctx, cancel := context.WithCancel(c.ctx)
	st := &h2Stream{c: c, id: id, state: state, ctx: ctx, cancel: cancel, sendWindow: c.initialSendWindow}
	st.inflow.avail = c.cfg.streamWindow
	if c.streams == nil {
		c.streams = make(map[uint32]*h2Stream, 1)
	}
	c.streams[id] = st
	if len(c.streams) == 1 {
		c.s.state(c.nc, http.StateActive)
	}
	return st
}

// newWriterAndRequest is net/http's (with httpcommon.NewServerRequest). mu held.
func (c *h2Conn) newWriterAndRequest(st *h2Stream, f *http2.MetaHeadersFrame) (*h2Writer, *http.Request, error) {
	method, scheme := f.PseudoValue("method"), f.PseudoValue("scheme")
	authority, path, protocol := f.PseudoValue("authority"), f.PseudoValue("path"), f.PseudoValue("protocol")
	bad := http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeProtocol}
	if !h2ExtendedConnect && protocol != "" {
		return nil, nil, bad
	}
	if method == "CONNECT" {
		if protocol == "" && (path != "" || scheme != "" || authority == "") {
			return nil, nil, bad
		}
	} else if method == "" || path == "" || (scheme != "https" && scheme != "http") {
		return nil, nil, bad
	}
	regular := f.RegularFields()
	header := make(http.Header, len(regular))
	for _, hf := range regular {
		k := http.CanonicalHeaderKey(hf.Name)
		header[k] = append(header[k], hf.Value)
	}
	if authority == "" {
		authority = header.Get("Host")
	}
	if protocol != "" {
		header.Set(":protocol", protocol)
	}
	needsContinue := httpguts.HeaderValuesContainsToken(header["Expect"], "100-continue")
	if needsContinue {
		delete(header, "Expect")
	}
	if cookies := header["Cookie"]; len(cookies) > 1 {
		header["Cookie"] = []string{strings.Join(cookies, "; ")}
	}
	var trailer http.Header
	for _, v := range header["Trailer"] {
		for _, key := range strings.Split(v, ",") {
			key = http.CanonicalHeaderKey(textproto.TrimString(key))
			switch key {
			case "Transfer-Encoding", "Trailer", "Content-Length":
			default:
				if trailer == nil {
					trailer = make(http.Header)
				}
				trailer[key] = nil
			}
		}
	}
	delete(header, "Trailer")
	if strings.IndexByte(authority, '@') != -1 && (scheme == "http" || scheme == "https") {
		return nil, nil, bad
	}
	var u *url.URL
	var requestURI string
	if method == "CONNECT" && protocol == "" {
		u = &url.URL{Host: authority}
		requestURI = authority
	} else {
		var err error
		if u, err = url.ParseRequestURI(path); err != nil {
			return nil, nil, bad
		}
		requestURI = path
	}
	// net/http sets TLS for https, and for every request of a connection it got with ALPN h2 (initALPNRequest):
	// c.tls is set for those only.
	tlsState := c.tls
	// The writer, the request and its body in one allocation; the request is given its context in place (the copy
	// WithContext makes stays on the stack).
	a := &h2StreamAlloc{body: h2Body{st: st, needsContinue: needsContinue}}
	body, req := &a.body, &a.req
	*req = http.Request{
		Method:     method,
		URL:        u,
		RemoteAddr: c.remote,
		Header:     header,
		RequestURI: requestURI,
		Proto:      "HTTP/2.0",
		ProtoMajor: 2,
		TLS:        tlsState,
		Host:       authority,
		Body:       body,
		Trailer:    trailer,
	}
	*req = *req.WithContext(st.ctx)
	if !f.StreamEnded() {
		if vv, ok := header["Content-Length"]; ok {
			if cl, err := strconv.ParseUint(vv[0], 10, 63); err == nil {
				req.ContentLength = int64(cl)
			} else {
				req.ContentLength = 0
			}
		} else {
			req.ContentLength = -1
		}
		body.pipe = &h2Pipe{st: st, expected: req.ContentLength}
	}
	w := &a.w
	*w = h2Writer{st: st, req: req, handler: c.h}
	if requestURI == "*" && method == http.MethodOptions && !c.s.srv.DisableGeneralOptionsHandler {
		w.handler = http.HandlerFunc(globalOptions) // net/http's serverHandler answers these itself
	}
	return w, req, nil
}

// h2StreamAlloc is what newWriterAndRequest allocates for a stream, as one.
type h2StreamAlloc struct {
	w    h2Writer
	req  http.Request
	body h2Body
}

// scheduleHandler starts the stream's handler, or queues it while as many handlers run as streams may be open
// (net/http's defence against rapid resets). mu held.
func (c *h2Conn) scheduleHandler(w *h2Writer) error {
	if c.curHandlers < c.cfg.maxStreams {
		c.curHandlers++
		c.starting = append(c.starting, w)
		return nil
	}
	if len(c.unstarted) > int(4*c.cfg.maxStreams) {
		return http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
	}
	c.unstarted = append(c.unstarted, w)
	return nil
}

// startHandlers starts the handlers of the streams whose headers the reader took since it last waited: they
// start once the frames read together are handled, so that a request whose body came with its headers finds it
// whole (h2Body.whole). A stream closed meanwhile starts none. mu held.
func (c *h2Conn) startHandlers() {
	for i, w := range c.starting {
		c.starting[i] = nil
		if c.streams[w.st.id] != w.st {
			c.curHandlers--
			continue
		}
		c.s.handlers.run(w)
	}
	c.starting = c.starting[:0]
}

// handlerDone frees the handler's slot and starts the queued handlers whose streams are still open.
func (c *h2Conn) handlerDone() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.curHandlers--
	i := 0
	for ; i < len(c.unstarted); i++ {
		w := c.unstarted[i]
		if c.streams[w.st.id] == nil {
			continue
		}
		if c.curHandlers >= c.cfg.maxStreams {
			break
		}
		c.curHandlers++
		c.s.handlers.run(w)
		c.unstarted[i] = nil
	}
	c.unstarted = c.unstarted[i:]
	if len(c.unstarted) == 0 {
		c.unstarted = nil
	}
}

func (c *h2Conn) runHandler(w *h2Writer) {
	defer c.handlerDone()
	didPanic := true
	defer func() {
		w.st.cancel()
		if didPanic {
			e := recover()
			c.mu.Lock()
			if st, ok := c.streams[w.st.id]; ok && st == w.st {
				c.queueLocked()
				c.writeRSTStream(w.st.id, http2.ErrCodeInternal)
				c.closeStream(w.st, errH2HandlerPanicked)
				c.flushLocked()
			}
			c.mu.Unlock()
			if e != nil && e != http.ErrAbortHandler {
				const size = 64 << 10
				buf := make([]byte, size)
				buf = buf[:runtime.Stack(buf, false)]
				c.logf("http2: panic serving %v: %v\n%s", c.remote, e, buf)
			}
			return
		}
		w.handlerDone()
	}()
	w.handler.ServeHTTP(w, w.req)
	didPanic = false
}

// closeStream is net/http's: the stream leaves the connection; its body and its writer learn err. mu held.
func (c *h2Conn) closeStream(st *h2Stream, err error) {
	if st.state == h2Closed {
		return
	}
	st.state = h2Closed
	if st.readDeadline != nil {
		st.readDeadline.Stop()
	}
	if st.writeDeadline != nil {
		st.writeDeadline.Stop()
	}
	delete(c.streams, st.id)
	if len(c.streams) == 0 {
		if c.cfg.encoderTable < 32 {
			// An encoder whose table holds no entry (each takes 32 bytes and more) has no state to keep: an idle
			// connection holds none, nor its buffer.
			c.henc, c.hbuf = nil, bytes.Buffer{}
		}
		c.streams = nil // an idle connection holds no map (a map keeps its largest size)
		c.s.state(c.nc, http.StateIdle)
		if c.idleTimer != nil && !c.closed {
			c.idleTimer.Reset(c.cfg.idleTimeout)
		}
		if c.inGoAway && c.goAwayCode == http2.ErrCodeNo && c.goAwaySent {
			c.shutDownIn(h2GoAwayTimeout)
		}
	}
	if p := st.body; p != nil {
		c.windowUpdateLocked(nil, p.len()) // what the handler did not read, given back to the connection
		p.closeWithError(err, nil)
	}
	if e, ok := err.(http2.StreamError); ok {
		if e.Cause != nil {
			err = e.Cause
		} else {
			err = errH2StreamClosed
		}
	}
	st.closeErr = err
	st.cancel()
	if st.closedCh != nil {
		close(st.closedCh)
	}
	c.wcond.Broadcast()
}

// resetStream writes RST_STREAM for se and closes the stream.
func (c *h2Conn) resetStream(se http2.StreamError) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.resetLocked(se)
}

func (c *h2Conn) resetLocked(se http2.StreamError) {
	if c.inGoAway && c.goAwayCode != http2.ErrCodeNo {
		return // after an error GOAWAY, no stream frame is written (net/http's scheduler)
	}
	c.queueLocked()
	c.writeRSTStream(se.StreamID, se.Code)
	if st, ok := c.streams[se.StreamID]; ok {
		c.closeStream(st, se)
	}
}

// windowUpdateLocked gives n bytes back to the peer's window of st (nil: the connection's), writing a
// WINDOW_UPDATE when net/http would. mu held.
func (c *h2Conn) windowUpdateLocked(st *h2Stream, n int) {
	if n <= 0 {
		return
	}
	var id uint32
	var send int32
	if st == nil {
		send = c.inflow.add(n)
	} else {
		id = st.id
		send = st.inflow.add(n)
	}
	if send == 0 || c.closed {
		return
	}
	if st != nil && st.state == h2Closed {
		return
	}
	c.queueLocked()
	c.writeWindowUpdate(id, uint32(send))
}

// queueLocked is called before a control frame is queued: it counts the ones queued while a write is under
// way (the peer reads nothing: net/http's maxQueuedControlFrames), and takes an out buffer. mu held.
func (c *h2Conn) queueLocked() {
	if c.flushing {
		c.queuedControl++
	}
	if c.out == nil {
		c.out = h2OutPool.Get().([]byte)[:0]
	}
}

// flushLocked writes the queued frames, unless another goroutine is writing (it writes what was queued meanwhile
// before it stops). mu held; released while writing.
func (c *h2Conn) flushLocked() {
	if c.flushing {
		return
	}
	if c.werr != nil {
		c.releaseOut()
		return
	}
	c.flushing = true
	if len(c.streams) > 1 {
		// Other streams' handlers may be about to write: let the goroutines that can run go first, so that what
		// they queue meanwhile goes out in this write (flushing is set: they leave it to this one). A response a
		// write instead of one each: writes per h2c request 2.0 -> 1.1 at saturation, gRPC 3.1 -> 1.2. (The
		// same yield in h2Client's flush cost gRPC CPU: not there.)
		c.mu.Unlock()
		runtime.Gosched()
		c.mu.Lock()
	}
	for len(c.out) > 0 && c.werr == nil {
		b := c.out
		c.out = nil
		c.queuedControl = 0
		c.mu.Unlock()
		err := c.write(b)
		c.mu.Lock()
		if c.out == nil {
			c.out = b[:0]
		} else {
			h2OutPool.Put(b[:0]) //nolint:staticcheck // a slice header, as h2OutPool holds
		}
		if err != nil && c.werr == nil {
			c.werr = err
			c.nc.Close()
		}
	}
	c.flushing = false
	c.releaseOut()
	c.wcond.Broadcast()
}

// releaseOut gives an empty out buffer back to the pool: an idle connection holds none.
func (c *h2Conn) releaseOut() {
	if c.out != nil && (len(c.out) == 0 || c.werr != nil) {
		h2OutPool.Put(c.out[:0]) //nolint:staticcheck
		c.out = nil
	}
}

// write writes b with net/http's WriteByteTimeout: each write may take that long, and bytes moving extend it.
func (c *h2Conn) write(b []byte) error {
	d := c.cfg.writeTimeout
	if d <= 0 {
		_, err := c.nc.Write(b)
		return err
	}
	for len(b) > 0 {
		c.nc.SetWriteDeadline(time.Now().Add(d))
		n, err := c.nc.Write(b)
		b = b[n:]
		if err != nil && (n == 0 || !errors.Is(err, os.ErrDeadlineExceeded)) {
			return err
		}
	}
	c.nc.SetWriteDeadline(time.Time{})
	return nil
}

// goAway is net/http's: GOAWAY with code, then the connection closes (an error code: after h2GoAwayTimeout; no
// error: once its streams have ended, and that timeout).
func (c *h2Conn) goAway(code http2.ErrCode) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.goAwayLocked(code)
}

func (c *h2Conn) goAwayLocked(code http2.ErrCode) {
	if c.inGoAway {
		if c.goAwayCode == http2.ErrCodeNo {
			c.goAwayCode = code
		}
		return
	}
	c.inGoAway = true
	c.goAwayCode = code
	c.queueLocked()
	c.writeGoAway(c.maxClientStreamID, code)
	c.goAwaySent = true
	if code != http2.ErrCodeNo || len(c.streams) == 0 {
		c.shutDownIn(h2GoAwayTimeout)
	}
	c.flushLocked()
}

func (c *h2Conn) shutDownIn(d time.Duration) {
	if c.shutdownTimer == nil {
		c.shutdownTimer = time.AfterFunc(d, func() { c.nc.Close() })
	}
}

// startGracefulShutdown is net/http's: GOAWAY without error; the streams under way end first.
func (c *h2Conn) startGracefulShutdown() { c.goAway(http2.ErrCodeNo) }

// closeIfIdle closes the connection if no stream is open (after the GOAWAY of a shutdown).
func (c *h2Conn) closeIfIdle() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.streams) == 0 && c.inGoAway && !c.flushing {
		c.nc.Close()
	}
}

func (c *h2Conn) onIdle() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.streams) == 0 && !c.closed {
		c.goAwayLocked(http2.ErrCodeNo)
	}
}

// closeConn ends the connection: its streams, its timers, its socket; e is what the reader recovered (logged).
func (c *h2Conn) closeConn(e any) {
	if e != nil {
		const size = 64 << 10
		buf := make([]byte, size)
		buf = buf[:runtime.Stack(buf, false)]
		c.logf("http2: panic serving %v: %v\n%s", c.remote, e, buf)
	}
	c.mu.Lock()
	c.closed = true
	for _, st := range c.streams {
		c.closeStream(st, errH2ClientDisconnected)
	}
	if c.werr == nil {
		c.werr = errH2ClientDisconnected
	}
	if c.idleTimer != nil {
		c.idleTimer.Stop()
	}
	if c.shutdownTimer != nil {
		c.shutdownTimer.Stop()
	}
	c.unstarted = nil
	if !c.flushing {
		c.releaseOut()
	}
	c.wcond.Broadcast()
	c.mu.Unlock()
	c.nc.Close()
	if c.br != nil {
		c.br.Reset(nil)
		h1Readers.Put(c.br)
		c.br = nil
	}
}

func (c *h2Conn) logf(format string, args ...any) {
	if l := c.s.srv.ErrorLog; l != nil {
		l.Printf(format, args...)
	}
}

// h2Pipe is a request body: what DATA frames brought, read by the handler (net/http's pipe). Its bytes are kept in
// chunks of 1 to 16 KiB from pools (net/http's dataBuffer): a body read as it comes holds one chunk, and one that
// waits holds what the window lets the client send, with no copy as it grows. Guarded by the connection's mu.
type h2Pipe struct {
	st       *h2Stream
	chunks   [][]byte // unread data: chunks[head][r:], then the others whole
	head     int
	r        int
	n        int    // unread bytes in chunks
	unread   int    // bytes dropped when the handler closed the body
	expected int64  // bytes still to come by the request's Content-Length (-1: unknown), to size chunks
	err      error  // after the data: io.EOF or why the body ended
	onErr    func() // runs before err is returned (the trailers' copy)
	breakErr error  // the handler closed the body: returned at once, data dropped
	wait     sync.Cond
}

// The chunk sizes and their pools (net/http's dataChunkSizes).
var (
	h2ChunkSizes = [...]int{1 << 10, 2 << 10, 4 << 10, 8 << 10, 16 << 10}
	h2ChunkPools [len(h2ChunkSizes)]sync.Pool
)

// h2Chunk returns an empty chunk for about want bytes: the smallest size that holds them, at most 16 KiB.
func h2Chunk(want int64) []byte {
	i := 0
	for i < len(h2ChunkSizes)-1 && int64(h2ChunkSizes[i]) < want {
		i++
	}
	if b, ok := h2ChunkPools[i].Get().(*[]byte); ok {
		return (*b)[:0]
	}
	return make([]byte, 0, h2ChunkSizes[i])
}

func putH2Chunk(b []byte) {
	for i, size := range h2ChunkSizes {
		if cap(b) == size {
			b = b[:0]
			h2ChunkPools[i].Put(&b)
			return
		}
	}
}

func (p *h2Pipe) len() int { return p.n + p.unread }

// write adds DATA; false: the body has ended or the handler closed it.
func (p *h2Pipe) write(d []byte) bool {
	if p.err != nil || p.breakErr != nil {
		return false
	}
	p.n += len(d)
	for len(d) > 0 {
		last := len(p.chunks) - 1
		if last < 0 || len(p.chunks[last]) == cap(p.chunks[last]) {
			want := int64(len(d))
			if p.expected > want {
				want = p.expected
			}
			p.chunks = append(p.chunks, h2Chunk(want))
			last++
		}
		b := p.chunks[last]
		k := min(len(d), cap(b)-len(b))
		p.chunks[last] = append(b, d[:k]...)
		d = d[k:]
		if p.expected > 0 {
			p.expected = max(p.expected-int64(k), 0)
		}
	}
	p.signal()
	return true
}

// read copies unread data into d; the chunks read whole go back to their pools.
func (p *h2Pipe) read(d []byte) int {
	n := 0
	for n < len(d) && p.head < len(p.chunks) {
		b := p.chunks[p.head]
		k := copy(d[n:], b[p.r:])
		n += k
		p.r += k
		if p.r == len(b) {
			putH2Chunk(b)
			p.chunks[p.head] = nil
			p.head++
			p.r = 0
		}
	}
	p.n -= n
	if p.head == len(p.chunks) {
		p.chunks, p.head = p.chunks[:0], 0
		if cap(p.chunks) > 16 {
			p.chunks = nil // a long wait's list is not kept
		}
	}
	return n
}

// drop gives every chunk back.
func (p *h2Pipe) drop() {
	for _, b := range p.chunks[p.head:] {
		putH2Chunk(b)
	}
	p.chunks, p.head, p.r, p.n = nil, 0, 0, 0
}

func (p *h2Pipe) signal() {
	if p.wait.L != nil {
		p.wait.Signal()
	}
}

// closeWithError ends the body after its data (the first error wins); fn runs before the reader gets err. mu held.
func (p *h2Pipe) closeWithError(err error, fn func()) {
	if err == nil {
		panic("err must be non-nil")
	}
	if p.err != nil {
		return
	}
	p.err, p.onErr = err, fn
	p.signal()
}

// breakWithError ends the body at once: its unread data is dropped. mu held.
func (p *h2Pipe) breakWithError(err error) {
	if p.breakErr != nil {
		return
	}
	p.unread += p.n
	p.drop()
	p.breakErr = err
	p.signal()
}

// h2Body is the request's Body.
type h2Body struct {
	st            *h2Stream
	pipe          *h2Pipe
	needsContinue bool
	sawEOF        bool
	closeOnce     sync.Once
}

// whole reports whether the body's END_STREAM has come, with at most h2cMaxWholeBody bytes unread: reading it to
// its end never waits for the client.
func (b *h2Body) whole() bool {
	if b.pipe == nil {
		return true
	}
	if b.needsContinue {
		return false
	}
	c := b.st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	p := b.pipe
	return p.err == io.EOF && p.breakErr == nil && p.n <= h2cMaxWholeBody
}

func (b *h2Body) Close() error {
	b.closeOnce.Do(func() {
		if b.pipe == nil {
			return
		}
		// The unread data is dropped; its window goes back to the connection when the stream closes.
		c := b.st.c
		c.mu.Lock()
		b.pipe.breakWithError(errH2ClosedBody)
		c.mu.Unlock()
	})
	return nil
}

func (b *h2Body) Read(d []byte) (int, error) {
	st := b.st
	c := st.c
	if b.needsContinue {
		b.needsContinue = false
		c.mu.Lock()
		if !st.wroteHeaders && st.state != h2Closed && !(c.inGoAway && c.goAwayCode != http2.ErrCodeNo) {
			c.queueLocked()
			enc := c.encoder()
			c.hbuf.Reset()
			enc.WriteField(hpack.HeaderField{Name: ":status", Value: "100"})
			c.writeHeaderFrame(http2.FrameHeaders, st.id, c.hbuf.Bytes(), false, true)
			c.flushLocked()
		}
		c.mu.Unlock()
	}
	if b.pipe == nil || b.sawEOF {
		return 0, io.EOF
	}
	p := b.pipe
	c.mu.Lock()
	for {
		if p.breakErr != nil {
			c.mu.Unlock()
			return 0, p.breakErr
		}
		if p.n > 0 {
			break
		}
		if p.err != nil {
			err := p.err
			if fn := p.onErr; fn != nil {
				p.onErr = nil
				fn()
			}
			c.mu.Unlock()
			if err == io.EOF {
				b.sawEOF = true
			}
			return 0, err
		}
		if p.wait.L == nil {
			p.wait.L = &c.mu
		}
		p.wait.Wait()
	}
	n := p.read(d)
	// net/http's noteBodyRead: the window given back (the stream's unless the client is done sending). Not the
	// connection's for a closed stream: closeStream gave back what its body held (net/http gives it twice).
	if st.state != h2Closed {
		c.windowUpdateLocked(nil, n)
	}
	if st.state != h2HalfClosedRemote && st.state != h2Closed {
		c.windowUpdateLocked(st, n)
	}
	if c.out != nil && len(c.out) > 0 {
		c.flushLocked()
	}
	// The last bytes of a body whose END_STREAM has come go with io.EOF (net/http's body returns it on the next
	// Read): the HTTP/2 transport then sends them with END_STREAM in one DATA frame, and one write, instead of
	// following them with an empty DATA frame of its own; the HTTP/1.1 transport ends a chunked body at once.
	var err error
	if p.n == 0 && p.err == io.EOF {
		if fn := p.onErr; fn != nil {
			p.onErr = nil
			fn()
		}
		b.sawEOF, err = true, io.EOF
	}
	c.mu.Unlock()
	return n, err
}

// h2Writer is the stream's http.ResponseWriter: net/http's responseWriter and responseWriterState.
type h2Writer struct {
	st      *h2Stream
	req     *http.Request
	handler http.Handler
	bw      *bufio.Writer // h2ChunkWriteSize, to chunkWriter; from h2Writers

	handlerHeader  http.Header
	snapHeader     http.Header
	trailers       []string
	status         int
	wroteHeader    bool
	sentHeader     bool
	handlerDoneNow bool
	sentContentLen int64
	wroteBytes     int64
}

var h2Writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, h2ChunkWriteSize) }}

type h2ChunkWriter struct{ w *h2Writer }

func (cw h2ChunkWriter) Write(p []byte) (int, error) {
	n, err := cw.w.writeChunk(p)
	if err == errH2StreamClosed {
		c := cw.w.st.c
		c.mu.Lock()
		err = cw.w.st.closeErr
		c.mu.Unlock()
	}
	return n, err
}

func (w *h2Writer) buffer() *bufio.Writer {
	if w.bw == nil {
		w.bw = h2Writers.Get().(*bufio.Writer)
		w.bw.Reset(h2ChunkWriter{w})
	}
	return w.bw
}

func (w *h2Writer) Header() http.Header {
	if w.handlerHeader == nil {
		w.handlerHeader = make(http.Header)
	}
	return w.handlerHeader
}

func (w *h2Writer) WriteHeader(code int) {
	if w.wroteHeader {
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if code >= 100 && code <= 199 {
		h := w.handlerHeader
		_, cl := h["Content-Length"]
		_, te := h["Transfer-Encoding"]
		if cl || te {
			h = h.Clone()
			h.Del("Content-Length")
			h.Del("Transfer-Encoding")
		}
		c := w.st.c
		c.mu.Lock()
		c.writeHeadersLocked(w.st, code, h, nil, w.handlerDoneNow && len(w.trailers) == 0, "", "", "")
		c.flushLocked()
		c.mu.Unlock()
		return
	}
	w.wroteHeader = true
	w.status = code
	if len(w.handlerHeader) > 0 {
		w.snapHeader = w.handlerHeader.Clone()
	}
}

func (w *h2Writer) Write(p []byte) (int, error) { return w.write(len(p), p, "") }

func (w *h2Writer) WriteString(s string) (int, error) { return w.write(len(s), nil, s) }

func (w *h2Writer) write(n int, b []byte, s string) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !bodyAllowed(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	w.wroteBytes += int64(n)
	if w.sentContentLen != 0 && w.wroteBytes > w.sentContentLen {
		return 0, errH2TooMuchWritten
	}
	if b != nil {
		return w.buffer().Write(b)
	}
	return w.buffer().WriteString(s)
}

func (w *h2Writer) Flush() { _ = w.FlushError() }

func (w *h2Writer) FlushError() error {
	var err error
	if w.bw != nil && w.bw.Buffered() > 0 {
		err = w.bw.Flush()
	} else {
		_, err = h2ChunkWriter{w}.Write(nil)
		if err == nil {
			c := w.st.c
			c.mu.Lock()
			if w.st.state == h2Closed {
				err = w.st.closeErr
			}
			c.mu.Unlock()
		}
	}
	return err
}

func (w *h2Writer) EnableFullDuplex() error { return nil }

func (w *h2Writer) SetReadDeadline(deadline time.Time) error {
	w.st.setDeadline(&w.st.readDeadline, deadline, w.st.onReadTimeout, w.st.onReadTimeoutLocked)
	return nil
}

func (w *h2Writer) SetWriteDeadline(deadline time.Time) error {
	w.st.setDeadline(&w.st.writeDeadline, deadline, w.st.onWriteTimeout, w.st.onWriteTimeoutLocked)
	return nil
}

// setDeadline is net/http's Set{Read,Write}Deadline of a stream: expire runs at deadline (at once, with the lock
// held, for one already past); a zero deadline clears it; a timer that fired already is left alone.
func (st *h2Stream) setDeadline(timer **time.Timer, deadline time.Time, expire, expireLocked func()) {
	c := st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if !deadline.IsZero() && deadline.Before(time.Now()) {
		expireLocked()
		return
	}
	if *timer != nil && !(*timer).Stop() {
		return
	}
	switch {
	case deadline.IsZero():
		*timer = nil
	case *timer == nil:
		*timer = time.AfterFunc(time.Until(deadline), expire)
	default:
		(*timer).Reset(time.Until(deadline))
	}
}

func (st *h2Stream) onReadTimeout() {
	st.c.mu.Lock()
	st.onReadTimeoutLocked()
	st.c.mu.Unlock()
}

func (st *h2Stream) onReadTimeoutLocked() {
	if st.body != nil {
		st.body.closeWithError(fmt.Errorf("%w", os.ErrDeadlineExceeded), nil)
	}
}

func (st *h2Stream) onWriteTimeout() {
	c := st.c
	c.mu.Lock()
	st.onWriteTimeoutLocked()
	c.flushLocked()
	c.mu.Unlock()
}

func (st *h2Stream) onWriteTimeoutLocked() {
	if st.state == h2Closed {
		return
	}
	st.c.resetLocked(http2.StreamError{StreamID: st.id, Code: http2.ErrCodeInternal, Cause: os.ErrDeadlineExceeded})
}

// CloseNotify is net/http's (deprecated; the request's context ends as well).
func (w *h2Writer) CloseNotify() <-chan bool {
	st := w.st
	c := st.c
	c.mu.Lock()
	if st.closedCh == nil {
		st.closedCh = make(chan struct{})
		if st.state == h2Closed {
			close(st.closedCh)
		}
	}
	closed := st.closedCh
	c.mu.Unlock()
	ch := make(chan bool, 1)
	go func() {
		<-closed
		ch <- true
	}()
	return ch
}

// handlerDone ends the response: net/http's responseWriter.handlerDone.
func (w *h2Writer) handlerDone() {
	w.handlerDoneNow = true
	w.Flush()
	if w.bw != nil {
		w.bw.Reset(nil)
		h2Writers.Put(w.bw)
		w.bw = nil
	}
}

func (w *h2Writer) declareTrailer(k string) {
	k = http.CanonicalHeaderKey(k)
	if !httpguts.ValidTrailerHeader(k) {
		w.st.c.logf("ignoring invalid trailer %q", k)
		return
	}
	if !slices.Contains(w.trailers, k) {
		w.trailers = append(w.trailers, k)
	}
}

func (w *h2Writer) promoteUndeclaredTrailers() {
	for k, vv := range w.handlerHeader {
		if !strings.HasPrefix(k, http.TrailerPrefix) {
			continue
		}
		trailerKey := strings.TrimPrefix(k, http.TrailerPrefix)
		w.declareTrailer(trailerKey)
		w.handlerHeader[http.CanonicalHeaderKey(trailerKey)] = vv
	}
	if len(w.trailers) > 1 {
		slices.Sort(w.trailers)
	}
}

func (w *h2Writer) hasNonemptyTrailers() bool {
	for _, t := range w.trailers {
		if _, ok := w.handlerHeader[t]; ok {
			return true
		}
	}
	return false
}

// writeChunk is net/http's responseWriterState.writeChunk; the frames of one chunk (the header, the data, the
// trailers) go out in one write.
func (w *h2Writer) writeChunk(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.handlerDoneNow {
		w.promoteUndeclaredTrailers()
	}
	st := w.st
	c := st.c
	isHeadResp := w.req.Method == http.MethodHead
	var (
		sendHeader                bool
		ctype, clen, date         string
		headerEndStream, graceful bool
	)
	if !w.sentHeader {
		w.sentHeader = true
		sendHeader = true
		if clen = w.snapHeader.Get("Content-Length"); clen != "" {
			w.snapHeader.Del("Content-Length")
			if cl, err := strconv.ParseUint(clen, 10, 63); err == nil {
				w.sentContentLen = int64(cl)
			} else {
				clen = ""
			}
		}
		_, hasContentLength := w.snapHeader["Content-Length"]
		if !hasContentLength && clen == "" && w.handlerDoneNow && bodyAllowed(w.status) && (len(p) > 0 || !isHeadResp) {
			clen = strconv.Itoa(len(p))
		}
		_, hasContentType := w.snapHeader["Content-Type"]
		hasCE := w.snapHeader.Get("Content-Encoding") != ""
		if !hasCE && !hasContentType && bodyAllowed(w.status) && len(p) > 0 {
			ctype = http.DetectContentType(p)
		}
		if _, ok := w.snapHeader["Date"]; !ok {
			date = currentDate().text
		}
		for _, v := range w.snapHeader["Trailer"] {
			foreachHeaderElement(v, w.declareTrailer)
		}
		if _, ok := w.snapHeader["Connection"]; ok {
			v := w.snapHeader.Get("Connection")
			delete(w.snapHeader, "Connection")
			graceful = v == "close"
		}
		headerEndStream = (w.handlerDoneNow && len(w.trailers) == 0 && len(p) == 0) || isHeadResp
	}
	if graceful {
		c.startGracefulShutdown()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if sendHeader {
		if err := c.writeHeadersLocked(st, w.status, w.snapHeader, nil, headerEndStream, ctype, clen, date); err != nil {
			return 0, err
		}
		if headerEndStream {
			c.flushLocked()
			return 0, nil
		}
	}
	if isHeadResp {
		c.flushLocked()
		return len(p), nil
	}
	if len(p) == 0 && !w.handlerDoneNow {
		c.flushLocked()
		return 0, nil
	}
	hasNonemptyTrailers := w.hasNonemptyTrailers()
	endStream := w.handlerDoneNow && !hasNonemptyTrailers
	if len(p) > 0 || endStream {
		if err := c.writeDataLocked(st, p, endStream); err != nil {
			return 0, err
		}
	}
	if w.handlerDoneNow && hasNonemptyTrailers {
		err := c.writeHeadersLocked(st, 0, w.handlerHeader, w.trailers, true, "", "", "")
		c.flushLocked()
		return len(p), err
	}
	c.flushLocked()
	return len(p), nil
}

func foreachHeaderElement(v string, fn func(string)) {
	v = textproto.TrimString(v)
	if v == "" {
		return
	}
	if !strings.Contains(v, ",") {
		fn(v)
		return
	}
	for _, f := range strings.Split(v, ",") {
		if f = textproto.TrimString(f); f != "" {
			fn(f)
		}
	}
}

// streamWritable reports whether frames may be written on st: nil, or the error its writer gets. mu held.
func (c *h2Conn) streamWritable(st *h2Stream) error {
	if c.werr != nil || c.closed {
		return errH2ClientDisconnected
	}
	if st.state == h2Closed {
		return errH2StreamClosed
	}
	if c.inGoAway && c.goAwayCode != http2.ErrCodeNo {
		return errH2ClientDisconnected // net/http writes no stream frame after an error GOAWAY
	}
	return nil
}

// writeHeadersLocked queues a HEADERS frame (and CONTINUATIONs) with the response header h (status 0: trailers,
// keys the trailers to send). mu held.
func (c *h2Conn) writeHeadersLocked(st *h2Stream, status int, h http.Header, keys []string, endStream bool, ctype, clen, date string) error {
	if err := c.streamWritable(st); err != nil {
		return err
	}
	st.wroteHeaders = true
	c.queueLocked()
	enc := c.encoder()
	c.hbuf.Reset()
	if status != 0 {
		enc.WriteField(hpack.HeaderField{Name: ":status", Value: statusString(status)})
	}
	encodeH2Header(enc, h, keys)
	if ctype != "" {
		enc.WriteField(hpack.HeaderField{Name: "content-type", Value: ctype})
	}
	if clen != "" {
		enc.WriteField(hpack.HeaderField{Name: "content-length", Value: clen})
	}
	if date != "" {
		enc.WriteField(hpack.HeaderField{Name: "date", Value: date})
	}
	block := c.hbuf.Bytes()
	if len(block) == 0 && keys == nil {
		panic("unexpected empty hpack")
	}
	const maxFrag = 16384 // net/http's splitHeaderBlock: the size every peer takes
	first := true
	for first || len(block) > 0 {
		frag := block
		if len(frag) > maxFrag {
			frag = frag[:maxFrag]
		}
		block = block[len(frag):]
		if first {
			c.writeHeaderFrame(http2.FrameHeaders, st.id, frag, endStream, len(block) == 0)
			first = false
		} else {
			c.writeHeaderFrame(http2.FrameContinuation, st.id, frag, false, len(block) == 0)
		}
	}
	if endStream {
		c.endedStream(st)
	}
	return nil
}

// endedStream is net/http's wroteFrame for a frame that ended the response: a stream whose request is not over
// is reset with NO_ERROR (the client may stop sending), then closed. mu held.
func (c *h2Conn) endedStream(st *h2Stream) {
	switch st.state {
	case h2Open:
		st.state = h2HalfClosedLocal
		c.resetLocked(http2.StreamError{StreamID: st.id, Code: http2.ErrCodeNo})
	case h2HalfClosedRemote:
		c.closeStream(st, errH2HandlerComplete)
	}
}

// writeDataLocked queues p as DATA frames within the send windows and the peer's frame size, waiting for the
// windows to open when they are shut. mu held (released while waiting).
func (c *h2Conn) writeDataLocked(st *h2Stream, p []byte, endStream bool) error {
	for {
		if err := c.streamWritable(st); err != nil {
			return err
		}
		if len(p) == 0 {
			c.queueLocked()
			c.writeData(st.id, endStream, nil)
			c.endedStream(st)
			return nil
		}
		n := min(int32(len(p)), c.peerMaxFrame, st.sendWindow, c.sendWindow)
		if n <= 0 || (len(c.out) >= h2MaxOut && c.flushing) {
			if len(c.out) > 0 && !c.flushing {
				c.flushLocked() // what is queued goes first (mu is released meanwhile: look again after)
				continue
			}
			c.wcond.Wait() // for a window update, or the write under way
			continue
		}
		c.queueLocked()
		st.sendWindow -= n
		c.sendWindow -= n
		last := int(n) == len(p)
		c.writeData(st.id, endStream && last, p[:n])
		p = p[n:]
		if last {
			if endStream {
				c.endedStream(st)
			}
			return nil
		}
		if len(c.out) >= h2MaxOut {
			c.flushLocked()
		}
	}
}

// encodeH2Header is net/http's encodeHeaders: h's fields, lowercased, in key order (or keys'), without names that
// are not valid, values that are not valid, and Transfer-Encoding other than "trailers".
func encodeH2Header(enc *hpack.Encoder, h http.Header, keys []string) {
	if keys == nil {
		var arr [16]string
		keys = arr[:0]
		for k := range h {
			keys = append(keys, k)
		}
		slices.Sort(keys)
	}
	for _, k := range keys {
		vv := h[k]
		k, ascii := lowerHeader(k)
		if !ascii || !httpguts.ValidHeaderFieldName(k) { // lower case by now: x/net's validWireHeaderFieldName
			continue
		}
		isTE := k == "transfer-encoding"
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				continue
			}
			if isTE && v != "trailers" {
				continue
			}
			enc.WriteField(hpack.HeaderField{Name: k, Value: v})
		}
	}
}

// lowerHeader lowercases an ASCII name; false if it is not ASCII.
func lowerHeader(v string) (string, bool) {
	upper := false
	for i := 0; i < len(v); i++ {
		b := v[i]
		if b >= 0x80 {
			return "", false
		}
		if 'A' <= b && b <= 'Z' {
			upper = true
		}
	}
	if !upper {
		return v, true
	}
	if l, ok := h2CommonLower[v]; ok {
		return l, true
	}
	return strings.ToLower(v), true
}

// h2CommonLower maps the canonical form of common field names to their lower case (x/net's commonLowerHeader,
// with gRPC's and meshlet's own): lowerHeader allocates for the others.
var h2CommonLower = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{"accept", "accept-charset", "accept-encoding", "accept-language", "accept-ranges",
		"age", "access-control-allow-credentials", "access-control-allow-headers", "access-control-allow-methods",
		"access-control-allow-origin", "access-control-expose-headers", "access-control-max-age",
		"access-control-request-headers", "access-control-request-method", "allow", "authorization",
		"cache-control", "content-disposition", "content-encoding", "content-language", "content-length",
		"content-location", "content-range", "content-type", "cookie", "date", "etag", "expect", "expires", "from",
		"host", "if-match", "if-modified-since", "if-none-match", "if-unmodified-since", "last-modified", "link",
		"location", "max-forwards", "origin", "proxy-authenticate", "proxy-authorization", "range", "referer",
		"refresh", "retry-after", "server", "set-cookie", "strict-transport-security", "trailer",
		"transfer-encoding", "user-agent", "vary", "via", "www-authenticate", "x-forwarded-for",
		"x-forwarded-proto", "x-forwarded-host", "x-forwarded-client-cert", "x-request-id",
		"te", "grpc-status", "grpc-message", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding",
		"grpc-status-details-bin", "traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid",
		"x-b3-parentspanid", "x-b3-sampled", "x-content-type-options"} {
		m[http.CanonicalHeaderKey(k)] = k
	}
	return m
}()

func statusString(code int) string {
	switch code {
	case 200:
		return "200"
	case 404:
		return "404"
	}
	return strconv.Itoa(code)
}

// h2ExtendedConnect is net/http's switch for extended CONNECT (RFC 8441): off unless GODEBUG has http2xconnect=1.
var h2ExtendedConnect = strings.Contains(os.Getenv("GODEBUG"), "http2xconnect=1")

// useH2Server: HTTP/2 connections are served by h2Conn rather than net/http's server.
var useH2Server = os.Getenv("MESHLET_H2_SERVER") != "go"
